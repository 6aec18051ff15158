# The study's axes beyond one frozen evaluation (what each job is: sslstudy.axes):
# few-label linear / fine-tuning of SSL runs and the supervised-from-scratch baseline on the same
# labelled images (quantity, granularity), feature fusion of two models, and faiss clustering of
# every saved checkpoint of a run (NMI/ARI vs epoch).


rule lowshot:
    input:
        ckpt=lambda w: checkpoint(run_of(w)),
        data=lambda w: dataset_files(w.domain),
    output:
        f"results/lowshot/{RUN}/{{mode}}_{{labels}}.csv",
    params:
        size=SIZE,
        eval=q(C["eval"]),
        finetune=lambda w: q(C["finetune"] if w.mode == "finetune" else {}),
        ids=lambda w: ids(run_of(w)),
        run=lambda w: run_of(w)["id"],
        dataset=lambda w: dataset_dir(w.domain),
        cpus=eval_cpus,
        remote=remote(f"logs/lowshot/{RUN}/{{mode}}_{{labels}}"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/lowshot/{RUN}/{{mode}}_{{labels}}.log",
    benchmark:
        f"results/benchmarks/lowshot/{RUN}/{{mode}}_{{labels}}.tsv"
    shell:
        "sslstudy lowshot --checkpoint {input.ckpt} --dataset {params.dataset} --mode {wildcards.mode}"
        " --labels {wildcards.labels} --eval {params.eval} --finetune {params.finetune} --size {params.size}"
        " --run {params.run} --ids {params.ids} --threads {params.cpus} --out {output} {params.remote} 2> {log}"
        " || {{ tail -n 12 {log} >&2; exit 1; }}"


rule supervised:
    input:
        lambda w: dataset_files(w.domain),
    output:
        scores="results/supervised/{domain}_{labels}/seed{seed}/scores.csv",
        ckpt="results/supervised/{domain}_{labels}/seed{seed}/final.pt",
    params:
        size=SIZE,
        finetune=q(C["finetune"]),
        backbone=q(C["pretrain"]["backbone"]),
        label_seed=C["eval"]["cluster_seed"],
        ids=lambda w: ids(supervised_of(w)),
        run=lambda w: supervised_of(w)["id"],
        dataset=lambda w: dataset_dir(w.domain),
        cpus=eval_cpus,
        remote=remote("logs/supervised/{domain}_{labels}/seed{seed}"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        "logs/supervised/{domain}_{labels}/seed{seed}.log",
    benchmark:
        "results/benchmarks/supervised/{domain}_{labels}/seed{seed}.tsv"
    shell:
        "sslstudy supervised --dataset {params.dataset} --labels {wildcards.labels} --seed {wildcards.seed}"
        " --label-seed {params.label_seed} --backbone {params.backbone} --finetune {params.finetune} --size {params.size}"
        " --run {params.run} --ids {params.ids}"
        " --threads {params.cpus} --checkpoint {output.ckpt} --out {output.scores} {params.remote} 2> {log}"
        " || {{ tail -n 12 {log} >&2; exit 1; }}"


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


rule cluster:
    input:
        ckpt=f"results/runs/{RUN}/final.pt",
        data=lambda w: [f for d in axes.eval_domains(run_of(w)) for f in dataset_files(d)],
    output:
        f"results/clusters/{RUN}.csv",
    params:
        size=SIZE,
        eval=q(C["eval"]),
        ids=lambda w: ids(run_of(w)),
        run=lambda w: run_of(w)["id"],
        run_dir=lambda w: f"results/runs/{run_of(w)['id']}",
        datasets=lambda w: [dataset_dir(d) for d in axes.eval_domains(run_of(w))],
        cpus=eval_cpus,
        remote=remote(f"logs/cluster/{RUN}"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        f"logs/cluster/{RUN}.log",
    benchmark:
        f"results/benchmarks/cluster/{RUN}.tsv"
    shell:
        "sslstudy cluster --run-dir {params.run_dir} --datasets {params.datasets} --eval {params.eval}"
        " --size {params.size} --run {params.run} --ids {params.ids} --threads {params.cpus} --out {output} {params.remote} 2> {log}"
        " || {{ tail -n 12 {log} >&2; exit 1; }}"
