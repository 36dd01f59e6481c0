rule evaluate:
    conda:
        "../envs/gemsbench.yaml"
    input:
        data=os.path.join(RESULTS, "data/{dataset}/stats.json"),
        trained=os.path.join(RUN_DIR, "summary.json"),
    output:
        rows=os.path.join(RUN_DIR, "eval", f"{SPLIT}_rows.parquet"),
        summary=os.path.join(RUN_DIR, "eval", f"{SPLIT}_summary.json"),
    params:
        config=CONFIG,
        data=lambda w, input: os.path.dirname(input.data),
        run_dir=lambda w, input: os.path.dirname(input.trained),
        spec=lambda w: digest(config["evaluate"]),
    threads: 2  # lowered to --cores when fewer; profiles may raise it
    log:
        os.path.join(RESULTS, "logs/evaluate/{dataset}/{backbone}/{run}/seed{seed}.log"),
    benchmark:
        os.path.join(RESULTS, "benchmarks/evaluate/{dataset}/{backbone}/{run}/seed{seed}.tsv")
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.evaluate --config {params.config} --dataset {wildcards.dataset} "
        "--backbone {wildcards.backbone} --run {wildcards.run} --seed {wildcards.seed} "
        "--data {params.data} --run-dir {params.run_dir} --rows {output.rows} --summary {output.summary} "
        "> {log} 2>&1"
