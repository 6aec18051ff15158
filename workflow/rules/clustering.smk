# Per-checkpoint clustering: every saved checkpoints/epNNN.pt of a run embedded and clustered with
# faiss k-means (K = classes per level), NMI/ARI vs epoch (sslstudy.eval.checkpoint_clustering).


rule clustering:
    input:
        ckpt=pattern(f"{names.RUN_DIR}/{names.FINAL}"),
        data=lambda w: [f for d in axes.eval_domains(run_of(w)) for f in dataset_files(d)],
    output:
        pattern(names.CLUSTERS_TABLE),
    params:
        size=SIZE,
        eval=q(C["eval"]),
        ids=lambda w: ids(run_of(w)),
        run=lambda w: run_of(w)["id"],
        run_dir=lambda w: names.model_dir(run_of(w)),
        datasets=lambda w: [dataset_dir(d) for d in axes.eval_domains(run_of(w))],
        cpus=eval_cpus,
        remote=remote("clustering"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        pattern(names.log("clustering")),
    benchmark:
        pattern(names.benchmark("clustering"))
    shell:
        "sslstudy cluster-checkpoints --run-dir {params.run_dir} --datasets {params.datasets} --eval {params.eval}"
        " --size {params.size} --run {params.run} --ids {params.ids} --threads {params.cpus} --out {output} {params.remote} 2> {log}"
