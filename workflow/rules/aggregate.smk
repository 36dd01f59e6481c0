rule main_table:
    input:
        [RESULTS + f"/runs/{r.path}/eval/{SPLIT}_summary.json" for r in RUNS],
    output:
        md=RESULTS + "/tables/main.md",
        csv=RESULTS + "/tables/main.csv",
    params:
        out=RESULTS + "/tables",
        spec=lambda w: digest([config["methods"], config["tables"]]),
    log:
        RESULTS + "/logs/aggregate/main_table.log",
    shell:
        "python -m gemsbench.cli.aggregate --config {CONFIG} --summaries {input} --out-dir {params.out} "
        "> {log} 2>&1 && cat {log}"
