# Frozen-feature evaluation of a run's final weights and of its epoch-0 (random) weights:
# kNN, linear probe (finest labels, mapped up) and k-means NMI/ARI at every label level.


rule evaluate:
    input:
        ckpt=lambda w: "results/runs/{run}/{ck}".format(
            run=run_of(w)["id"], ck="final.pt" if w.weights == "pretrained" else "checkpoints/ep000.pt"
        ),
        data=lambda w: dataset_files(w.domain),
    output:
        f"results/eval/{RUN}/{{weights}}.csv",
    params:
        eval=q(C["eval"]),
        ids=lambda w: q({k: run_of(w)[k] for k in ("method", "domain", "subset", "quality", "seed")}),
        run=lambda w: run_of(w)["id"],
        dataset=lambda w: dataset_dir(w.domain),
    threads: C["pretrain"]["threads"]
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/evaluate/{RUN}/{{weights}}.log",
    shell:
        "sslstudy evaluate --checkpoint {input.ckpt} --dataset {params.dataset} --eval {params.eval}"
        " --run {params.run} --ids {params.ids} --weights {wildcards.weights} --threads {threads}"
        " --out {output} 2> {log}"
