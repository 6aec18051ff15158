# One run = method x domain view (subset, quality, pool) x seed. A local rule: the compute goes
# through submitit (debug / local / slurm from launch.cluster), which resumes from the run's checkpoints.


rule pretrain:
    input:
        data=lambda w: dataset_files(w.domain, w.quality),
        subset=lambda w: studyconfig.subset_path(C, w.domain, w.subset),
    output:
        final=f"results/runs/{RUN}/final.pt",
        random=f"results/runs/{RUN}/checkpoints/ep000.pt",
    params:
        spec=lambda w: q(studyconfig.pretrain_spec(C, run_of(w))),
        launch=q(C["launch"]),
        run_dir=lambda w: f"results/runs/{run_of(w)['id']}",
    threads: THREADS
    localrule: True
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/pretrain/{RUN}.log",
    benchmark:
        f"results/benchmarks/pretrain/{RUN}.tsv"
    shell:
        "sslstudy pretrain --run-dir {params.run_dir} --spec {params.spec} --launch {params.launch} 2> {log}"
