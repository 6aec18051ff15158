# Tidy tables, seaborn figures (captions: workflow/report/*.rst) and one standalone HTML page.


rule report:
    input:
        frozen=eval_tables(),
        lowshot=lowshot_tables(),
        supervised=supervised_tables(),
        fusion=fusion_tables(),
        clusters=cluster_tables(),
        captions=sorted(glob.glob(f"{workflow.basedir}/workflow/report/*.rst")),
    output:
        html="results/report.html",
        table="results/metrics.csv",
        summary="results/metrics.json",
    params:
        config=q(C),
        captions=lambda w, input: os.path.dirname(input.captions[0]),
    conda:
        "../envs/sslstudy.yaml"
    log:
        "logs/report/report.log",
    shell:
        "sslstudy report --config {params.config} --out {output.html} --captions {params.captions}"
        " --frozen {input.frozen} --lowshot {input.lowshot} --supervised {input.supervised}"
        " --fusion {input.fusion} --clusters {input.clusters} 2> {log}"
