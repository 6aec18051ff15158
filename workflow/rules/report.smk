# Tidy tables, seaborn figures and one standalone HTML page.


rule report:
    input:
        eval_tables(),
    output:
        html="results/report.html",
        table="results/metrics.csv",
        summary="results/metrics.json",
    params:
        config=q(C),
    conda:
        "../envs/sslstudy.yaml"
    log:
        "logs/report/report.log",
    shell:
        "sslstudy report --config {params.config} --out {output.html} {input} 2> {log}"
