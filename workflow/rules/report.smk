# Tidy tables, seaborn figures (captions: workflow/report/*.rst) and one standalone HTML page.
from sslstudy.report.dag import benchmarks, named

REPORT_TABLES = dict(frozen=eval_tables(), lowshot=lowshot_tables(), supervised=supervised_tables(),
                     fusion=fusion_tables(), clusters=cluster_tables())
BENCHMARKS = benchmarks(workflow, [f for files in REPORT_TABLES.values() for f in files])


rule report:
    input:
        **REPORT_TABLES,
        captions=sorted(glob.glob(f"{workflow.basedir}/workflow/report/*.rst")),
        benchmarks=list(BENCHMARKS),
    output:
        html="results/report.html",
        table="results/metrics.csv",
        summary="results/metrics.json",
    params:
        config=q(C),
        captions=lambda w, input: os.path.dirname(input.captions[0]),
        benchmarks=named((r, f) for f, r in BENCHMARKS.items()),
    conda:
        "../envs/sslstudy.yaml"
    log:
        "logs/report/report.log",
    shell:
        "sslstudy report --config {params.config} --out {output.html} --captions {params.captions}"
        " --frozen {input.frozen} --lowshot {input.lowshot} --supervised {input.supervised}"
        " --fusion {input.fusion} --clusters {input.clusters} --benchmarks {params.benchmarks} 2> {log}"
