# Real collections named under data.ingest, packed into data/<name> (re-run when their settings change;
# the command itself leaves an output alone that is up to date with the files on disk).
# Pretraining subsets: nested, class-balanced index lists (no image copies), fixed by config seed.


rule ingest:
    output:
        multiext(f"{studyconfig.INGEST_ROOT}/{{name}}/", "images.npy", "labels.csv", "meta.json"),
        report=f"{studyconfig.INGEST_ROOT}/{{name}}.ingest-report.csv",
    params:
        args=lambda w: " ".join(map(shlex.quote, studyconfig.ingest_args(C, w.name))),
    threads: workflow.cores
    conda:
        "../envs/sslstudy.yaml"
    log:
        "logs/ingest/{name}.log",
    shell:
        "sslstudy ingest {params.args} --workers {threads} > {log} 2>&1"


rule subset:
    input:
        lambda w: dataset_files(w.domain),
    output:
        "results/subsets/{domain}/seed{seed}/{subset}.npy",
    conda:
        "../envs/sslstudy.yaml"
    params:
        dataset=lambda w: dataset_dir(w.domain),
    log:
        "logs/subset/{domain}/seed{seed}/{subset}.log",
    shell:
        "sslstudy subset --dataset {params.dataset} --subset {wildcards.subset}"
        " --seed {wildcards.seed} --out {output} 2> {log}"
