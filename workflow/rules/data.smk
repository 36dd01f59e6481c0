rule prepare_data:
    conda:
        "../envs/gemsbench.yaml"
    output:
        stats=os.path.join(RESULTS, "data/{dataset}/stats.json"),
    params:
        config=CONFIG,
        spec=lambda w: digest(config["datasets"][w.dataset]),
        out=lambda w, output: os.path.dirname(output.stats),
    log:
        os.path.join(RESULTS, "logs/prepare/{dataset}.log"),
    shell:
        "python -m gemsbench.cli.prepare --config {params.config} --dataset {wildcards.dataset} "
        "--out {params.out} > {log} 2>&1"
