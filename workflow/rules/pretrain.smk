# One run = method x domain view (subset, quality, pool) x seed. A local rule: the compute goes
# through submitit (debug / local / slurm from launch.cluster), which resumes from the run's checkpoints.
# Only final.pt is declared: Snakemake deletes the declared outputs of a killed or incomplete job,
# so the checkpoints it resumes from (checkpoints/last.pt, epNNN.pt, ep000.pt = the random weights) are not.


rule pretrain:
    input:
        data=lambda w: dataset_files(w.domain, w.quality),
        subset=lambda w: studyconfig.subset_path(C, w.domain, w.subset),
    output:
        final=f"results/runs/{RUN}/final.pt",
    params:
        spec=lambda w: q(studyconfig.pretrain_spec(C, run_of(w))),
        launch=q(C["launch"]),
        run_dir=lambda w: f"results/runs/{run_of(w)['id']}",
    threads: 1 if C["launch"]["cluster"] == "slurm" else THREADS
    localrule: True
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/pretrain/{RUN}.log",
    benchmark:
        f"results/benchmarks/pretrain/{RUN}.tsv"
    shell:
        "sslstudy pretrain --run-dir {params.run_dir} --spec {params.spec} --launch {params.launch} 2> {log}"
        " || {{ tail -n 12 {log} >&2; exit 1; }}"
