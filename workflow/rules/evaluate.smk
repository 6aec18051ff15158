# Frozen-feature evaluation of a model (SSL run or supervised network) on a clean domain: kNN,
# linear probe (finest labels, mapped up) and k-means NMI/ARI at every label level. `random` is the
# run's epoch-0 checkpoint (the same backbone at its random initialisation).
# ep000.pt is written by pretraining but not declared (see pretrain.smk): both wait for final.pt.
# The job embeds train/val/test once into `embeddings` (sslstudy.eval.features); fusion and the
# few-label linear probe read it instead of embedding the checkpoint again.

rule evaluate:
    input:
        final=lambda w: names.final_checkpoint(run_of(w)),
        data=lambda w: dataset_files(w.on),
    output:
        table=pattern(names.EVAL_TABLE),
        embeddings=pattern(names.EMBEDDINGS),
    params:
        ckpt=lambda w: names.final_checkpoint(run_of(w)) if w.weights == "pretrained" else names.random_weights(run_of(w)),
        size=SIZE,
        eval=q(C["eval"]),
        ids=lambda w: ids(run_of(w)),
        run=lambda w: run_of(w)["id"],
        dataset=lambda w: dataset_dir(w.on),
        cpus=eval_cpus,
        remote=remote("evaluate"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        pattern(names.log("evaluate")),
    benchmark:
        pattern(names.benchmark("evaluate"))
    shell:
        "sslstudy evaluate --checkpoint {params.ckpt} --dataset {params.dataset} --eval {params.eval} --size {params.size}"
        " --run {params.run} --ids {params.ids} --weights {wildcards.weights} --threads {params.cpus}"
        " --embeddings {output.embeddings} --out {output.table} {params.remote} 2> {log}"
