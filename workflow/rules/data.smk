rule prepare_data:
    output:
        stats=RESULTS + "/data/{dataset}/stats.json",
    params:
        spec=lambda w: digest(config["datasets"][w.dataset]),
        out=lambda w, output: os.path.dirname(output.stats),
    log:
        RESULTS + "/logs/prepare/{dataset}.log",
    shell:
        "python -m gemsbench.cli.prepare --config {CONFIG} --dataset {wildcards.dataset} "
        "--out {params.out} > {log} 2>&1"
