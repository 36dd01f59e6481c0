# Every file of the prepared dataset is an output, and every rule that reads the dataset lists them all as input
# (DATA_FILES): a deleted or replaced file makes Snakemake prepare the dataset again and redo what read it.
rule prepare_data:
    conda:
        "../envs/gemsbench.yaml"
    output:
        DATA_FILES,
    params:
        config=CONFIG,
        spec=lambda w: digest(config["datasets"][w.dataset]),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        os.path.join(RESULTS, "logs/prepare/{dataset}.log"),
    shell:
        "python -m gemsbench.cli.prepare --config {params.config:q} --dataset {wildcards.dataset:q} "
        "--out {params.out:q} > {log:q} 2>&1"
