# Quantity axis: few-label linear probe (frozen) and fine-tuning of an SSL run, n labelled images
# per finest class (sslstudy.axes.lowshot_jobs).


rule lowshot:
    input:
        ckpt=lambda w: checkpoint(run_of(w)),
        data=lambda w: dataset_files(w.domain),
    output:
        f"results/lowshot/{RUN}/{{mode}}_{{labels}}.csv",
    params:
        size=SIZE,
        eval=q(C["eval"]),
        finetune=lambda w: q(C["finetune"] if w.mode == "finetune" else {}),
        ids=lambda w: ids(run_of(w)),
        run=lambda w: run_of(w)["id"],
        dataset=lambda w: dataset_dir(w.domain),
        cpus=eval_cpus,
        remote=remote(f"logs/lowshot/{RUN}/{{mode}}_{{labels}}"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/lowshot/{RUN}/{{mode}}_{{labels}}.log",
    benchmark:
        f"results/benchmarks/lowshot/{RUN}/{{mode}}_{{labels}}.tsv"
    shell:
        "sslstudy lowshot --checkpoint {input.ckpt} --dataset {params.dataset} --mode {wildcards.mode}"
        " --labels {wildcards.labels} --eval {params.eval} --finetune {params.finetune} --size {params.size}"
        " --run {params.run} --ids {params.ids} --threads {params.cpus} --out {output} {params.remote} 2> {log}"
        " || {{ tail -n 12 {log} >&2; exit 1; }}"
