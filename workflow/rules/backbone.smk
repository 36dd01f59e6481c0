rule backbone_cache:
    output:
        manifest=RESULTS + "/backbones/{backbone}.json",
    params:
        spec=lambda w: digest(config["backbones"][w.backbone]),
    log:
        RESULTS + "/logs/backbone/{backbone}.log",
    shell:
        "python -m gemsbench.cli.backbone --config {CONFIG} --backbone {wildcards.backbone} "
        "--out {output.manifest} > {log} 2>&1"
