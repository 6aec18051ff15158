# Frozen-feature evaluation of a run's final weights and of its epoch-0 (random) weights:
# kNN, linear probe (finest labels, mapped up) and k-means NMI/ARI at every label level.
# launch.evaluate=cluster sends each one to launch.cluster through submitit (the rule then waits).
# ep000.pt is written by pretraining but not declared (see pretrain.smk): both wait for final.pt.
EVAL_REMOTE = C["launch"]["evaluate"] == "cluster"


rule evaluate:
    input:
        final=lambda w: f"results/runs/{run_of(w)['id']}/final.pt",
        data=lambda w: dataset_files(w.domain),
    output:
        f"results/eval/{RUN}/{{weights}}.csv",
    params:
        ckpt=lambda w: "results/runs/{}/{}".format(
            run_of(w)["id"], "final.pt" if w.weights == "pretrained" else "checkpoints/ep000.pt"
        ),
        eval=q(C["eval"]),
        ids=lambda w: q({k: run_of(w)[k] for k in ("method", "domain", "subset", "quality", "seed")}),
        run=lambda w: run_of(w)["id"],
        dataset=lambda w: dataset_dir(w.domain),
        cpus=C["launch"]["slurm"]["cpus_per_task"] if EVAL_REMOTE and C["launch"]["cluster"] == "slurm" else C["pretrain"]["threads"],
        remote=(
            lambda w: f"--launch {q(C['launch'])} --job-dir logs/evaluate/{run_of(w)['id']}/{w.weights}"
            if EVAL_REMOTE
            else ""
        ),
    threads: 1 if EVAL_REMOTE else C["pretrain"]["threads"]
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/evaluate/{RUN}/{{weights}}.log",
    shell:
        "sslstudy evaluate --checkpoint {params.ckpt} --dataset {params.dataset} --eval {params.eval}"
        " --run {params.run} --ids {params.ids} --weights {wildcards.weights} --threads {params.cpus}"
        " --out {output} {params.remote} 2> {log} || {{ tail -n 12 {log} >&2; exit 1; }}"
