# Fusion axis: a linear probe on the concatenated frozen features of two models, beside each member
# (sslstudy.axes.fusion_pairs), read from the members' embedding caches (in their evaluate folders).


rule fusion:
    input:
        a=lambda w: eval_dir_of(member_of(w, "a")),
        b=lambda w: eval_dir_of(member_of(w, "b")),
        data=lambda w: dataset_files(w.on),
    output:
        names.FUSION_TABLE,
    log:
        names.log("fusion"),
    benchmark:
        names.benchmark("fusion")
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    threads: EVAL_THREADS
    params:
        a=lambda w: embeddings_of(member_of(w, "a"), w.on),
        b=lambda w: embeddings_of(member_of(w, "b"), w.on),
        size=SIZE,
        eval=shell_json(STUDY["eval"]),
        dataset=lambda w: dataset_dir(w.on),
        # not on the command line: the rows carry the caches'
        model_config=lambda w: "+".join(MODEL_CONFIG[member_of(w, k)["id"]] for k in ("a", "b")),
        cpus=eval_cpus,
        remote=remote("fusion"),
    shell:
        "sslstudy fusion --embeddings-a {params.a} --embeddings-b {params.b}"
        " --name-a {wildcards.a} --name-b {wildcards.b} --seed {wildcards.seed}"
        " --dataset {params.dataset} --eval {params.eval} --size {params.size}"
        " --threads {params.cpus} --out {output} {params.remote} 2> {log}"
