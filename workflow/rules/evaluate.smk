rule evaluate:
    input:
        data=RESULTS + "/data/{dataset}/stats.json",
        trained=RUN_DIR + "/summary.json",
    output:
        rows=RUN_DIR + "/eval/" + SPLIT + "_rows.parquet",
        summary=RUN_DIR + "/eval/" + SPLIT + "_summary.json",
    params:
        data=lambda w, input: os.path.dirname(input.data),
        run_dir=lambda w, input: os.path.dirname(input.trained),
        spec=lambda w: digest(config["evaluate"]),
    threads: 2  # lowered to --cores when fewer; profiles may raise it
    log:
        RESULTS + "/logs/evaluate/{dataset}/{backbone}/{run}/seed{seed}.log",
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.evaluate --config {CONFIG} --dataset {wildcards.dataset} "
        "--backbone {wildcards.backbone} --run {wildcards.run} --seed {wildcards.seed} "
        "--data {params.data} --run-dir {params.run_dir} --rows {output.rows} --summary {output.summary} "
        "> {log} 2>&1"
