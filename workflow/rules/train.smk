from gemsbench.config import method_entry
from gemsbench.methods.base import LLMMethod
from gemsbench.methods.registry import method_class


def train_processes(wildcards, resources):
    """(processes per node, nodes) of one training run: the config's (or a profile's) `processes` and `nodes`
    for LLM methods, which train data-parallel; (1, 1) for methods that train outside the shared loop."""
    if not issubclass(method_class(method_entry(config, wildcards.run)["method"]), LLMMethod):
        return 1, 1
    return int(resources.processes), int(resources.nodes)


def trainer(wildcards, resources):
    """The command that starts the trainer, up to its arguments: plain ``python`` for one process; ``torchrun``
    for several on one node; across nodes (SLURM) ``srun`` starting one ``torchrun`` per node, which meet at the
    first node of the allocation. torchrun reads ``--run`` as an abbreviation of its own ``--run-path`` unless
    ``--`` ends its options."""
    processes, nodes = train_processes(wildcards, resources)
    entry = "-m gemsbench.cli.train"
    if nodes > 1:
        return (f"srun --nodes {nodes} --ntasks-per-node 1 torchrun --nnodes {nodes} --nproc_per_node {processes} "
                "--rdzv_backend c10d --rdzv_id $SLURM_JOB_ID "
                f"--rdzv_endpoint $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1):29500 {entry} --")
    if processes > 1:
        return f"torchrun --standalone --nproc_per_node {processes} {entry} --"
    return f"python {entry}"


def threads_per_process(wildcards, threads, resources):
    """The rule's threads shared by the training processes of one node."""
    return max(1, threads // train_processes(wildcards, resources)[0])


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
        trainer=trainer,
        threads=threads_per_process,
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
        "OMP_NUM_THREADS={params.threads} {params.trainer} --config {params.config:q} "
        "--dataset {wildcards.dataset:q} --backbone {wildcards.backbone:q} --run {wildcards.run:q} "
        "--seed {wildcards.seed:q} --data {params.data:q} --run-dir {params.run_dir:q} > {log:q} 2>&1"
