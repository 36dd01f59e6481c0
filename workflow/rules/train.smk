# Data parallelism: the config's `processes` and `nodes` are resources of the rule (a profile may override them),
# passed to the trainer, which starts torchrun (and srun across nodes) for LLM methods itself
# (gemsbench.cli.train.relaunch). Resources and threads are no rerun trigger: changing them, or --cores, never
# re-plans a finished run.
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
        processes=config["processes"],
        nodes=config["nodes"],
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.train --processes {resources.processes} "
        "--nodes {resources.nodes} --config {params.config:q} "
        "--dataset {wildcards.dataset:q} --backbone {wildcards.backbone:q} --run {wildcards.run:q} "
        "--seed {wildcards.seed:q} --data {params.data:q} --run-dir {params.run_dir:q} > {log:q} 2>&1"
