# Dense evaluation of a model on a domain with masks (sslstudy.eval.dense): a frozen 1x1-conv probe
# on the backbone's last feature map (mIoU, pixel accuracy per mask level) and the label-free
# correspondence score of DenseCL's matching. `random`: the run's epoch-0 checkpoint, as in evaluate.
# The masks are masks.npy in the domain's packed folder (written with the images; not a separate input).


rule dense:
    input:
        final=lambda w: names.final_checkpoint(run_of(w)),
        data=lambda w: dataset_files(w.on),
    output:
        pattern(names.DENSE_TABLE),
    params:
        ckpt=lambda w: names.final_checkpoint(run_of(w)) if w.weights == "pretrained" else names.random_weights(run_of(w)),
        size=SIZE,
        dense=q(C["dense"]),
        views=q(C["pretrain"]["views"]),
        ids=lambda w: ids(run_of(w)),
        run=lambda w: run_of(w)["id"],
        dataset=lambda w: dataset_dir(w.on),
        cpus=eval_cpus,
        remote=remote("dense"),
    threads: EVAL_THREADS
    localrule: EVAL_REMOTE
    conda:
        "../envs/sslstudy.yaml"
    log:
        pattern(names.log("dense")),
    benchmark:
        pattern(names.benchmark("dense"))
    shell:
        "sslstudy dense --checkpoint {params.ckpt} --dataset {params.dataset} --eval {params.dense} --views {params.views}"
        " --size {params.size} --run {params.run} --ids {params.ids} --weights {wildcards.weights} --threads {params.cpus}"
        " --out {output} {params.remote} 2> {log}"
