# Pretraining subsets: nested, class-balanced index lists (no image copies), fixed by config seed.


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
