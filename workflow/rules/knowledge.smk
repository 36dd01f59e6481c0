# Knowledge space per backbone (method.md §4): second moments of every targeted layer's output and input
# features over the general-domain corpus, cached in cache_dir for every run that fine-tunes the backbone, and
# a report of the null spaces they imply. Which (corpus, articles, max_tokens) a run needs comes from its
# method's hyper-parameters through gemsbench.config.run_knowledge_space (knowledge_report in
# common.smk), the same function the train rule uses, so they cannot disagree.
rule knowledge_space:
    conda:
        "../envs/gemsbench.yaml"
    input:
        backbone=os.path.join(RESULTS, "backbones/{backbone}.json"),
    output:
        report=os.path.join(RESULTS, "knowledge/{backbone}/{corpus}_{articles}_{max_tokens}.json"),
        layers=os.path.join(RESULTS, "knowledge/{backbone}/{corpus}_{articles}_{max_tokens}_layers.csv"),
        by_type=os.path.join(RESULTS, "knowledge/{backbone}/{corpus}_{articles}_{max_tokens}_by_type.csv"),
    params:
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output.report),
        spec=lambda w: digest([config["backbones"][w.backbone], config["knowledge"]]),
    wildcard_constraints:
        corpus=r"[A-Za-z][A-Za-z0-9_]*",
        articles=r"\d+",
        max_tokens=r"\d+",
    threads: 2  # lowered to --cores when fewer; profiles may raise it
    log:
        os.path.join(RESULTS, "logs/knowledge/{backbone}/{corpus}_{articles}_{max_tokens}.log"),
    shell:
        "OMP_NUM_THREADS={threads} python -m gemsbench.cli.knowledge --config {params.config:q} "
        "--backbone {wildcards.backbone:q} --corpus {wildcards.corpus:q} --articles {wildcards.articles:q} "
        "--max-tokens {wildcards.max_tokens:q} "
        "--out-dir {params.out:q} > {log:q} 2>&1"
