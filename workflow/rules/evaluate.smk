# One job per evaluated model (SSL run or supervised network; sslstudy.axes.evaluation_plan): each
# checkpoint loaded once, every evaluation of it into the model's folder (names.EVAL_DIR):
# * frozen.csv: kNN, linear probe (finest labels, mapped up) and k-means NMI/ARI at every label level,
#   per weights x clean domain;
# * dense.csv (dense axis): a frozen 1x1-conv probe on the backbone's last feature map (mIoU, pixel
#   accuracy per mask level) and the label-free correspondence score of DenseCL's matching
#   (sslstudy.eval.dense; the masks are masks.npy in the domain's packed folder);
# * clusters.csv (clustering axis): every saved checkpoints/epNNN.pt of the run embedded and clustered
#   with faiss k-means (K = classes per level), NMI/ARI vs epoch (sslstudy.eval.checkpoint_clustering),
#   the final and epoch-0 ones from the embeddings this job made already;
# * embeddings/<weights>_on_<domain>.npz: train/val/test embedded once (sslstudy.eval.features), read
#   by fusion and the few-label linear probe instead of embedding the checkpoint again.
# `random` is the run's epoch-0 checkpoint (the same backbone at its random initialisation), evaluated
# by the first run of each seed and domain only (axes.random_twins; the report shares its rows);
# ep000.pt is written by pretraining but not declared (see pretrain.smk): both wait for final.pt.


rule evaluate:
    input:
        final=lambda w: names.final_checkpoint(run_of(w)),
        data=lambda w: [f for on in eval_domains_of(w) for f in dataset_files(on)],
    output:
        directory(pattern(names.EVAL_DIR)),
    log:
        pattern(names.log("evaluate")),
    benchmark:
        pattern(names.benchmark("evaluate"))
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    threads: EVAL_THREADS
    params:
        checkpoints=eval_checkpoints,
        datasets=lambda w: named((on, dataset_dir(on)) for on in eval_domains_of(w)),
        evaluations=eval_evaluations,
        size=SIZE,
        eval=shell_json(STUDY["eval"]),
        # only for the models with dense evaluations: a dense setting reruns only their jobs
        dense=lambda w: (
            f"--dense-eval {shell_json(STUDY['dense'])} --views {shell_json(STUDY['pretrain']['views'])}"
            if plan_of(w)["dense"]
            else ""
        ),
        ids=lambda w: id_columns_json(run_of(w)),
        run=lambda w: run_of(w)["id"],
        model_config=model_config,  # not on the command line: the rows carry the checkpoint's
        cpus=eval_cpus,
        remote=remote("evaluate"),
    shell:
        "sslstudy evaluate --checkpoint {params.checkpoints} --dataset {params.datasets} {params.evaluations}"
        " --eval {params.eval} {params.dense} --size {params.size} --run {params.run} --ids {params.ids}"
        " --threads {params.cpus} --out {output} {params.remote} 2> {log}"
