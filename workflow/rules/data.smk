# Real collections named under data.ingest, packed into data/<name> (re-run when their settings change).
# Derived data: pretraining subsets (index lists, no image copies), corrupted copies of a domain
# (quality axis) and equal-size pools of domains (domain axis), all fixed by the config's seed.
from sslstudy.names import pool_members

PACKED = ("images.npy", "labels.csv", "meta.json")


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
    benchmark:
        "results/benchmarks/subset/{domain}/seed{seed}/{subset}.tsv"
    shell:
        "sslstudy subset --dataset {params.dataset} --subset {wildcards.subset}"
        " --seed {wildcards.seed} --out {output} 2> {log}"


rule corrupt:
    input:
        lambda w: dataset_files(w.domain),
    output:
        [f"results/data/seed{{seed}}/{{domain}}_{{quality}}/{f}" for f in PACKED],
    conda:
        "../envs/sslstudy.yaml"
    params:
        dataset=lambda w: dataset_dir(w.domain),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        "logs/corrupt/seed{seed}/{domain}_{quality}.log",
    benchmark:
        "results/benchmarks/corrupt/seed{seed}/{domain}_{quality}.tsv"
    shell:
        "sslstudy corrupt --dataset {params.dataset} --quality {wildcards.quality} --seed {wildcards.seed}"
        " --out {params.out} 2> {log}"


rule pool:
    input:
        lambda w: [f for d in pool_members(w.pool) for f in dataset_files(d)],
    output:
        [f"results/data/seed{{seed}}/{{pool}}/{f}" for f in PACKED],
    wildcard_constraints:
        pool=r"[^/_+]+(\+[^/_+]+)+",
    conda:
        "../envs/sslstudy.yaml"
    params:
        datasets=lambda w: [dataset_dir(d) for d in pool_members(w.pool)],
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        "logs/pool/seed{seed}/{pool}.log",
    benchmark:
        "results/benchmarks/pool/seed{seed}/{pool}.tsv"
    shell:
        "sslstudy pool --seed {wildcards.seed} --out {params.out} {params.datasets} 2> {log}"
