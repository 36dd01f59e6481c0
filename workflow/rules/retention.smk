# Knowledge retention (the paper's Fig. 1b claim: does null-space projection keep general knowledge better?):
# perplexity on held-out Wikipedia articles and factual cloze accuracy of the pre-trained backbone (with item
# tokens, once per dataset and backbone) and of every trained LLM run of the main grid; the retention table
# (tables.smk) and figure (figures.smk) read them. Measurement rules: gemsbench/retention.py; settings: the config's
# `retention` section. Uses common.smk (RUNS, RUN_DIR, RESULTS, CONFIG, digest) and the rule train: include this
# file after them.
from gemsbench.methods.base import LLMMethod
from gemsbench.retention import measurement_section
from gemsbench.methods.registry import method_class

# main-grid runs whose method fine-tunes the language model (popularity and the encoders have no LM to measure)
# on the first `retention.seeds` seeds
RETENTION_SEEDS = config["seeds"][: config["retention"]["seeds"]]  # the schema fills the default
RETENTION_RUNS = [r for r in RUNS if r.seed in RETENTION_SEEDS
                  and issubclass(method_class(config["methods"][r.run]["method"]), LLMMethod)]
RETENTION_SPEC = measurement_section(config["retention"])
RETENTION_GROUPS = list(dict.fromkeys((r.dataset, r.backbone) for r in RETENTION_RUNS))
RETENTION_BASE = os.path.join(RESULTS, "retention/{dataset}/{backbone}/base.json")
RETENTION_BASES = [RETENTION_BASE.format(dataset=ds, backbone=bb) for ds, bb in RETENTION_GROUPS]


rule retention_base:
    conda:
        "../envs/gemsbench.yaml"
    input:
        data=DATA_FILES,
        backbone=os.path.join(RESULTS, "backbones/{backbone}.json"),
    output:
        RETENTION_BASE,
    params:
        config=CONFIG,
        data=lambda w, input: os.path.dirname(input.data[0]),
        # what the base's scores depend on: the settings, the backbone, and how (and in what precision) item
        # tokens are added
        spec=lambda w: digest([RETENTION_SPEC, config["backbones"][w.backbone], config["train"]["item_init"],
                               config["train"]["precision"], config["seeds"][0]]),
    threads: 2  # lowered to --cores when fewer; profiles may raise it
    log:
        os.path.join(RESULTS, "logs/retention/{dataset}/{backbone}/base.log"),
    benchmark:
        os.path.join(RESULTS, "benchmarks/retention/{dataset}/{backbone}/base.tsv")
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.retention --config {params.config:q} --base "
        "--dataset {wildcards.dataset:q} --backbone {wildcards.backbone:q} --data {params.data:q} --out {output:q} "
        "> {log:q} 2>&1"


rule retention_run:
    conda:
        "../envs/gemsbench.yaml"
    input:
        data=DATA_FILES,
        trained=os.path.join(RUN_DIR, "summary.json"),
    output:
        os.path.join(RUN_DIR, "retention.json"),
    params:
        config=CONFIG,
        data=lambda w, input: os.path.dirname(input.data[0]),
        run_dir=lambda w, input: os.path.dirname(input.trained),
        spec=lambda w: digest(RETENTION_SPEC),
    threads: 2  # lowered to --cores when fewer; profiles may raise it
    log:
        os.path.join(RESULTS, "logs/retention/{dataset}/{backbone}/{run}/seed{seed}.log"),
    benchmark:
        os.path.join(RESULTS, "benchmarks/retention/{dataset}/{backbone}/{run}/seed{seed}.tsv")
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.retention --config {params.config:q} "
        "--dataset {wildcards.dataset:q} --backbone {wildcards.backbone:q} --run {wildcards.run:q} "
        "--seed {wildcards.seed:q} --data {params.data:q} --run-dir {params.run_dir:q} --out {output:q} > {log:q} 2>&1"
