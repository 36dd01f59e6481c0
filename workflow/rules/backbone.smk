rule backbone_cache:
    conda:
        "../envs/gemsbench.yaml"
    output:
        manifest=os.path.join(RESULTS, "backbones/{backbone}.json"),
    params:
        config=CONFIG,
        spec=lambda w: digest(config["backbones"][w.backbone]),
    log:
        os.path.join(RESULTS, "logs/backbone/{backbone}.log"),
    shell:
        "python -m gemsbench.cli.backbone --config {params.config:q} --backbone {wildcards.backbone:q} "
        "--out {output.manifest:q} > {log:q} 2>&1"
