# Real collections named under data.ingest, packed into data/<name> (re-run when their settings change).
# Derived data: pretraining subsets (index lists, no image copies), corrupted copies of a domain
# (quality axis) and equal-size pools of domains (domain axis), all fixed by the config's seed.
from sslstudy.cli import ingest_args
from sslstudy.names import dataset_name, packed_files, pool_members

CORRUPTED = dataset_name("{domain}", "{quality}")  # the corrupted copy's name, as wildcards


rule ingest:
    output:
        packed_files(names.INGEST_DIR),
        report=names.ingest_report(names.INGEST_DIR),
    log:
        names.log("ingest"),
    conda:
        "../envs/sslstudy.yaml"
    threads: workflow.cores
    params:
        args=lambda w: " ".join(map(shlex.quote, ingest_args(STUDY, w.name))),
    shell:
        "sslstudy ingest {params.args} --workers {threads} > {log} 2>&1"


rule subset:
    input:
        lambda w: dataset_files(w.domain),
    output:
        names.SUBSET_FILE,
    log:
        names.log("subset"),
    benchmark:
        names.benchmark("subset")
    conda:
        "../envs/sslstudy.yaml"
    params:
        dataset=lambda w: dataset_dir(w.domain),
    shell:
        "sslstudy subset --dataset {params.dataset} --subset {wildcards.subset}"
        " --seed {wildcards.seed} --out {output} 2> {log}"


rule corrupt:
    input:
        lambda w: dataset_files(w.domain),
    output:
        packed_files(pattern(names.DERIVED_DIR, dataset=CORRUPTED)),
    log:
        pattern(names.log("corrupt"), dataset=CORRUPTED),
    benchmark:
        pattern(names.benchmark("corrupt"), dataset=CORRUPTED)
    conda:
        "../envs/sslstudy.yaml"
    params:
        dataset=lambda w: dataset_dir(w.domain),
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        "sslstudy corrupt --dataset {params.dataset} --quality {wildcards.quality} --seed {wildcards.seed}"
        " --out {params.out} 2> {log}"


rule pool:
    input:
        lambda w: [f for d in pool_members(w.pool) for f in dataset_files(d)],
    output:
        packed_files(pattern(names.DERIVED_DIR, dataset="{pool}")),
    log:
        pattern(names.log("pool"), dataset="{pool}"),
    benchmark:
        pattern(names.benchmark("pool"), dataset="{pool}")
    conda:
        "../envs/sslstudy.yaml"
    params:
        datasets=lambda w: [dataset_dir(d) for d in pool_members(w.pool)],
        out=lambda w, output: os.path.dirname(output[0]),
    shell:
        "sslstudy pool --seed {wildcards.seed} --out {params.out} {params.datasets} 2> {log}"
