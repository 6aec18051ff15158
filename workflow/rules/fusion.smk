# Fusion axis: a linear probe on the concatenated frozen features of two models, beside each member
# (sslstudy.axes.fusion_pairs).


rule fusion:
    input:
        a=lambda w: checkpoint(member_of(w, "a")),
        b=lambda w: checkpoint(member_of(w, "b")),
        data=lambda w: dataset_files(w.on),
    output:
        "results/fusion/seed{seed}/{a}/{b}/on_{on}.csv",
    wildcard_constraints:
        a="[a-z0-9]+@[^/@_]+",
        b="[a-z0-9]+@[^/@_]+",
    params:
        size=SIZE,
        eval=q(C["eval"]),
        dataset=lambda w: dataset_dir(w.on),
        cpus=eval_cpus,
        remote=remote("logs/fusion/seed{seed}/{a}/{b}/on_{on}"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        "logs/fusion/seed{seed}/{a}/{b}/on_{on}.log",
    benchmark:
        "results/benchmarks/fusion/seed{seed}/{a}/{b}/on_{on}.tsv"
    shell:
        "sslstudy fusion --a {input.a} --b {input.b} --name-a {wildcards.a} --name-b {wildcards.b} --seed {wildcards.seed}"
        " --dataset {params.dataset} --eval {params.eval} --size {params.size} --threads {params.cpus} --out {output} {params.remote} 2> {log}"
        " || {{ tail -n 12 {log} >&2; exit 1; }}"
