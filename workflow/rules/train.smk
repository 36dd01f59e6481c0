rule train:
    conda:
        "../envs/gemsbench.yaml"
    input:
        data=DATA_FILES,
        backbone=os.path.join(RESULTS, "backbones/{backbone}.json"),
        knowledge=knowledge_report,
    output:
        summary=os.path.join(RUN_DIR, "summary.json"),
    params:
        config=CONFIG,
        spec=run_digest,
        data=lambda w, input: os.path.dirname(input.data[0]),
        run_dir=lambda w, output: os.path.dirname(output.summary),
    threads: 2  # lowered to --cores when fewer; profiles may raise it
    log:
        os.path.join(RESULTS, "logs/train/{dataset}/{backbone}/{run}/seed{seed}.log"),
    benchmark:
        os.path.join(RESULTS, "benchmarks/train/{dataset}/{backbone}/{run}/seed{seed}.tsv")
    resources:
        gpu=0,
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.train --config {params.config:q} "
        "--dataset {wildcards.dataset:q} --backbone {wildcards.backbone:q} --run {wildcards.run:q} "
        "--seed {wildcards.seed:q} --data {params.data:q} --run-dir {params.run_dir:q} > {log:q} 2>&1"
