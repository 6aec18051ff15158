# Frozen-feature evaluation of a model (SSL run or supervised network) on a clean domain: kNN,
# linear probe (finest labels, mapped up) and k-means NMI/ARI at every label level. `random` is the
# run's epoch-0 checkpoint (the same backbone at its random initialisation).


rule evaluate:
    input:
        ckpt=lambda w: checkpoint(run_of(w)) if w.weights == "pretrained" else f"results/runs/{run_of(w)['id']}/checkpoints/ep000.pt",
        data=lambda w: dataset_files(w.on),
    output:
        f"results/eval/{RUN}/{{weights}}_on_{{on}}.csv",
    params:
        size=SIZE,
        eval=q(C["eval"]),
        ids=lambda w: ids(run_of(w)),
        run=lambda w: run_of(w)["id"],
        dataset=lambda w: dataset_dir(w.on),
    threads: THREADS
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/evaluate/{RUN}/{{weights}}_on_{{on}}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN}/{{weights}}_on_{{on}}.tsv"
    shell:
        "sslstudy evaluate --checkpoint {input.ckpt} --dataset {params.dataset} --eval {params.eval} --size {params.size}"
        " --run {params.run} --ids {params.ids} --weights {wildcards.weights} --threads {threads}"
        " --out {output} 2> {log}"
