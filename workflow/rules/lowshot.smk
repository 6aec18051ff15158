# Quantity axis: few-label linear probe (frozen) and fine-tuning of an SSL run, n labelled images
# per finest class: one job per run and mode over every n (sslstudy.axes.lowshot_jobs), one table.
# The linear mode reads the run's embedding cache of its domain (in its evaluate folder);
# fine-tuning loads the backbone once and fine-tunes a copy per n.


rule lowshot:
    input:
        ckpt=lambda w: names.final_checkpoint(run_of(w)),
        evaluated=lambda w: [eval_dir_of(run_of(w))] if w.mode == "linear" else [],
        data=lambda w: dataset_files(w.domain),
    output:
        pattern(names.LOWSHOT_TABLE),
    log:
        pattern(names.log("lowshot")),
    benchmark:
        pattern(names.benchmark("lowshot"))
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    threads: EVAL_THREADS
    params:
        labels=" ".join(axes.lowshot_labels(STUDY)),
        size=SIZE,
        eval=shell_json(STUDY["eval"]),
        finetune=lambda w: shell_json(STUDY["finetune"] if w.mode == "finetune" else {}),
        embeddings=lambda w: f"--embeddings {embeddings_of(run_of(w), w.domain)}" if w.mode == "linear" else "",
        ids=lambda w: id_columns_json(run_of(w)),
        run=lambda w: run_of(w)["id"],
        model_config=model_config,  # not on the command line: the rows carry the checkpoint's or cache's
        dataset=lambda w: dataset_dir(w.domain),
        cpus=eval_cpus,
        remote=remote("lowshot"),
    shell:
        "sslstudy lowshot --checkpoint {input.ckpt} --dataset {params.dataset} --mode {wildcards.mode}"
        " --labels {params.labels} {params.embeddings} --eval {params.eval} --finetune {params.finetune}"
        " --size {params.size}"
        " --run {params.run} --ids {params.ids} --threads {params.cpus} --out {output} {params.remote} 2> {log}"
