# One run = method x domain view (subset, quality, pool) x seed. A local rule: the compute goes
# in the job (launch.executor inline) or through submitit (debug / local / slurm); a rerun resumes
# from checkpoints/last.pt.
# Only final.pt is declared: Snakemake deletes the declared outputs of a killed or incomplete job, so
# last.pt and the kept epNNN.pt (ep000.pt = the random weights) are not.
# metrics.jsonl is a log: Snakemake keeps it when a job fails but deletes it before a job starts; last.pt
# holds the record too, and a resumed run rewrites the file from it (sslstudy.run_record).


rule pretrain:
    input:
        data=lambda w: dataset_files(w.domain, w.quality),
        subset=lambda w: names.subset_path(STUDY, w.domain, w.subset),
    output:
        final=pattern(f"{names.RUN_DIR}/{names.FINAL}"),
    log:
        pattern(names.log("pretrain")),
        # a log, not an output (see above): the report reads it
        metrics=pattern(f"{names.RUN_DIR}/{names.METRICS}"),
    benchmark:
        pattern(names.benchmark("pretrain"))
    localrule: True
    conda:
        "../envs/sslstudy.yaml"
    threads: 1 if STUDY["launch"]["executor"] == "slurm" else THREADS
    params:
        spec=lambda w: shell_json(axes.pretrain_spec(STUDY, run_of(w))),
        launch=shell_json(studyconfig.job_launch(STUDY["launch"])),
        run_dir=lambda w: names.model_dir(run_of(w)),
    shell:
        "sslstudy pretrain --run-dir {params.run_dir} --spec {params.spec} --launch {params.launch} 2> {log[0]}"
