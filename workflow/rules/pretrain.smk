# One run = method x domain view (subset, quality, pool) x seed. A local rule: the compute goes
# in the job (launch.executor inline) or through submitit (debug / local / slurm); a rerun resumes
# from checkpoints/last.pt.
# Only final.pt is declared: Snakemake deletes the declared outputs of a killed or incomplete job, so
# last.pt and the kept epNNN.pt (ep000.pt = the random weights) are not.


rule pretrain:
    input:
        data=lambda w: dataset_files(w.domain, w.quality),
        subset=lambda w: names.subset_path(C, w.domain, w.subset),
    output:
        final=pattern(f"{names.RUN_DIR}/{names.FINAL}"),
    log:
        pattern(names.log("pretrain")),
        # a log, not an output: Snakemake keeps it when a job fails, so a rerun resumes and appends
        metrics=pattern(f"{names.RUN_DIR}/{names.METRICS}"),
    benchmark:
        pattern(names.benchmark("pretrain"))
    localrule: True
    conda:
        "../envs/sslstudy.yaml"
    threads: 1 if C["launch"]["executor"] == "slurm" else THREADS
    params:
        spec=lambda w: q(axes.pretrain_spec(C, run_of(w))),
        launch=q(studyconfig.job_launch(C["launch"])),
        run_dir=lambda w: names.model_dir(run_of(w)),
    shell:
        "sslstudy pretrain --run-dir {params.run_dir} --spec {params.spec} --launch {params.launch} 2> {log[0]}"
