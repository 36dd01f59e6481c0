rule main_table:
    conda:
        "../envs/gemsbench.yaml"
    input:
        summaries=[f"{RESULTS}/runs/{r.path}/eval/{SPLIT}_summary.json" for r in RUNS],
        significance=f"{RESULTS}/tables/significance.csv",
    output:
        md=f"{RESULTS}/tables/main.md",
        csv=report(f"{RESULTS}/tables/main.csv", caption="../report/main_table.rst", category="Tables"),
        tex=f"{RESULTS}/tables/main.tex",
    params:
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output.csv),
        spec=lambda w: digest([config["methods"], config["tables"]]),
    log:
        f"{RESULTS}/logs/aggregate/main_table.log",
    shell:
        "python -m gemsbench.cli.aggregate --config {params.config:q} --summaries {input.summaries:q} "
        "--significance {input.significance:q} --out-dir {params.out:q} > {log:q} 2>&1 && cat {log:q}"
