# Tidy tables, seaborn figures (captions: workflow/report/*.rst) and one standalone HTML page.
# Every file the report reads is named on its command line.
from sslstudy.report.dag import benchmarks

# the frozen, dense and clustering tables are files in the evaluate folders (the inputs)
REPORT_TABLES = dict(lowshot=lowshot_tables(), supervised=supervised_tables(), fusion=fusion_tables())
EVALUATED = eval_dirs()
BENCHMARKS = benchmarks(workflow, EVALUATED + [f for files in REPORT_TABLES.values() for f in files])
# each pretraining run's loss curve (a log of rule pretrain)
CURVES = {m["id"]: f"{names.model_dir(m)}/{names.METRICS}" for m in MODELS.values() if m["kind"] == "ssl"}
REPORT_DOMAINS = list(dict.fromkeys(on for _, _, on in axes.evaluations(STUDY)))
FINALS = [names.final_checkpoint(m) for m in MODELS.values()]  # every model's weights


rule report:
    input:
        **REPORT_TABLES,
        evaluated=EVALUATED,
        captions=sorted(glob.glob(f"{workflow.basedir}/workflow/report/*.rst")),
        benchmarks=list(BENCHMARKS),
        curves=list(CURVES.values()),
        # the report checks each exists and every row was made from the model the config now gives (--verify-models)
        finals=FINALS,
        datasets=[f for d in REPORT_DOMAINS for f in dataset_files(d)],
        # ancient: `dvc add` rewrites it even when the data did not change (changed data reruns every job)
        dvc=[ancient("data.dvc")] if os.path.isfile("data.dvc") else [],
    output:
        html="results/report.html",
        table="results/metrics.csv",
        summary="results/metrics.json",
        # what dvc.yaml's metrics: and plots: read
        headline=f"results/{names.HEADLINE}",
        plots=[f"results/{names.PLOT_FILE.format(name=p)}" for p in names.PLOTS],
    log:
        "logs/report/report.log",
    conda:
        "../envs/sslstudy.yaml"
    params:
        config=shell_json(STUDY),
        frozen=eval_tables(),
        dense=dense_tables(),
        clusters=cluster_tables(),
        captions=lambda w, input: os.path.dirname(input.captions[0]),
        curves=named(CURVES.items()),
        benchmarks=named((r, f) for f, r in BENCHMARKS.items()),
        datasets=named((d, dataset_dir(d)) for d in REPORT_DOMAINS),
        dvc=lambda w, input: f"--data-dvc {input.dvc}" if input.dvc else "",
        # written before the first job by the preflight (common.smk, onstart): not an input, shown where it exists
        preflight=names.PREFLIGHT,
    shell:
        "sslstudy report --config {params.config} --out {output.html} --captions {params.captions}"
        " --frozen {params.frozen} --lowshot {input.lowshot} --supervised {input.supervised}"
        " --fusion {input.fusion} --clusters {params.clusters} --dense {params.dense} --curves {params.curves}"
        " --benchmarks {params.benchmarks} --datasets {params.datasets} {params.dvc} --verify-models"
        " --preflight {params.preflight} 2> {log}"
