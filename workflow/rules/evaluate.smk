rule evaluate:
    conda:
        "../envs/gemsbench.yaml"
    input:
        data=DATA_FILES,
        trained=os.path.join(RUN_DIR, "summary.json"),
    output:
        rows=os.path.join(RUN_DIR, "eval", f"{SPLIT}_rows.parquet"),
        summary=os.path.join(RUN_DIR, "eval", f"{SPLIT}_summary.json"),
    params:
        config=CONFIG,
        data=lambda w, input: os.path.dirname(input.data[0]),
        run_dir=lambda w, input: os.path.dirname(input.trained),
        spec=lambda w: digest(config["evaluate"]),
    threads: 2  # lowered to --cores when fewer; profiles may raise it
    log:
        os.path.join(RESULTS, "logs/evaluate/{dataset}/{backbone}/{run}/seed{seed}.log"),
    benchmark:
        os.path.join(RESULTS, "benchmarks/evaluate/{dataset}/{backbone}/{run}/seed{seed}.tsv")
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.evaluate --config {params.config:q} "
        "--dataset {wildcards.dataset:q} --backbone {wildcards.backbone:q} --run {wildcards.run:q} "
        "--seed {wildcards.seed:q} "
        "--data {params.data:q} --run-dir {params.run_dir:q} --rows {output.rows:q} --summary {output.summary:q} "
        "> {log:q} 2>&1"
