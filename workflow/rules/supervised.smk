# Quantity and granularity axes: the same backbone trained from scratch on the same labelled images
# (the supervised baseline; sslstudy.axes.supervised_models).


rule supervised:
    input:
        lambda w: dataset_files(w.domain),
    output:
        scores=names.SUPERVISED_TABLE,
        ckpt=f"{names.SUPERVISED_DIR}/{names.FINAL}",
    log:
        names.log("supervised"),
    benchmark:
        names.benchmark("supervised")
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    threads: EVAL_THREADS
    params:
        size=SIZE,
        finetune=shell_json(STUDY["finetune"]),
        backbone=shell_json(STUDY["pretrain"]["backbone"]),
        eval=shell_json(STUDY["eval"]),
        ids=lambda w: id_columns_json(supervised_of(w)),
        run=lambda w: supervised_of(w)["id"],
        model_config=lambda w: MODEL_CONFIG[supervised_of(w)["id"]],
        dataset=lambda w: dataset_dir(w.domain),
        cpus=eval_cpus,
        remote=remote("supervised"),
    shell:
        "sslstudy supervised --dataset {params.dataset} --labels {wildcards.labels} --seed {wildcards.seed}"
        " --eval {params.eval} --backbone {params.backbone} --finetune {params.finetune} --size {params.size}"
        " --run {params.run} --ids {params.ids} --model-config {params.model_config}"
        " --threads {params.cpus} --checkpoint {output.ckpt} --out {output.scores} {params.remote} 2> {log}"
