# Analysis: significance tests, efficiency and gradient-conflict tables, figures. Every input is a saved run
# output or table, so `snakemake figures` redraws the figures from the tables without retraining anything.
# Uses common.smk (RUNS, RESULTS, CONFIG, digest) and the rules train and evaluate: include this file after them.

ANALYSIS_TABLES = f"{RESULTS}/tables"
ANALYSIS_FIGURES = f"{RESULTS}/figures"
ANALYSIS_GROUPS = list(dict.fromkeys((r.dataset, r.backbone) for r in RUNS))
# the run grid as expand() keywords, to expand run-level output patterns of the rules train and evaluate
ANALYSIS_GRID = dict(
    dataset=[r.dataset for r in RUNS],
    backbone=[r.backbone for r in RUNS],
    run=[r.run for r in RUNS],
    seed=[r.seed for r in RUNS],
)
# figure file stems, named as gemsbench.cli.figures names them
ANALYSIS_MAIN_FIGURES = [
    f"{ANALYSIS_FIGURES}/main_{ds}_{bb}_{protocol}"
    for ds, bb in ANALYSIS_GROUPS
    for protocol in config["evaluate"]["protocols"]
]
ANALYSIS_EFFICIENCY_FIGURES = [f"{ANALYSIS_FIGURES}/efficiency_{ds}_{bb}" for ds, bb in ANALYSIS_GROUPS]
ANALYSIS_CONFLICT_FIGURES = [f"{ANALYSIS_FIGURES}/conflict_{ds}_{bb}" for ds, bb in ANALYSIS_GROUPS]
ANALYSIS_CONFLICT_LAYER_FIGURES = [f"{ANALYSIS_FIGURES}/conflict_layers_{ds}_{bb}" for ds, bb in ANALYSIS_GROUPS]
ANALYSIS_CONVERGENCE_FIGURES = [f"{ANALYSIS_FIGURES}/convergence_{ds}_{bb}" for ds, bb in ANALYSIS_GROUPS]


# seconds of work each: run them on the submitting machine rather than queueing cluster jobs
localrules:
    significance,
    efficiency_table,
    conflict_csv,
    convergence_table,
    convergence_figures,
    ablation_table,
    analysis_figures,


rule significance:
    conda:
        "../envs/gemsbench.yaml"
    input:
        rows=expand(rules.evaluate.output.rows, zip, **ANALYSIS_GRID),
        summaries=expand(rules.evaluate.output.summary, zip, **ANALYSIS_GRID),
    output:
        csv=report(
            f"{ANALYSIS_TABLES}/significance.csv",
            caption="../report/significance.rst",
            category="Tables",
        ),
    params:
        config=CONFIG,
        spec=lambda w: digest(config["tables"]),
    log:
        f"{RESULTS}/logs/analysis/significance.log",
    shell:
        "python -m gemsbench.cli.significance --config {params.config:q} --rows {input.rows:q} --out {output.csv:q} "
        "> {log:q} 2>&1"


rule efficiency_table:
    conda:
        "../envs/gemsbench.yaml"
    input:
        expand(rules.train.output.summary, zip, **ANALYSIS_GRID),
    output:
        csv=report(
            f"{ANALYSIS_TABLES}/efficiency.csv",
            caption="../report/efficiency_table.rst",
            category="Tables",
        ),
        md=f"{ANALYSIS_TABLES}/efficiency.md",
        tex=f"{ANALYSIS_TABLES}/efficiency.tex",
    params:
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output[0]),
        spec=lambda w: digest(config["methods"]),
    log:
        f"{RESULTS}/logs/analysis/efficiency_table.log",
    shell:
        "python -m gemsbench.cli.aggregate --config {params.config:q} --table efficiency --summaries {input:q} "
        "--out-dir {params.out:q} > {log:q} 2>&1"


rule conflict_csv:
    conda:
        "../envs/gemsbench.yaml"
    input:
        expand(rules.train.output.summary, zip, **ANALYSIS_GRID),
    output:
        steps=f"{ANALYSIS_TABLES}/conflict.csv",
        runs=report(
            f"{ANALYSIS_TABLES}/conflict_summary.csv",
            caption="../report/conflict_summary.rst",
            category="Tables",
        ),
        layers=f"{ANALYSIS_TABLES}/conflict_layers.csv",
        md=f"{ANALYSIS_TABLES}/conflict.md",
    params:
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output[0]),
        spec=lambda w: digest(config["methods"]),
    log:
        f"{RESULTS}/logs/analysis/conflict_csv.log",
    shell:
        "python -m gemsbench.cli.aggregate --config {params.config:q} --table conflict --summaries {input:q} "
        "--out-dir {params.out:q} > {log:q} 2>&1"


rule convergence_table:
    conda:
        "../envs/gemsbench.yaml"
    input:
        expand(rules.train.output.summary, zip, **ANALYSIS_GRID),
    output:
        curves=f"{ANALYSIS_TABLES}/convergence.csv",
        runs=report(
            f"{ANALYSIS_TABLES}/convergence_summary.csv",
            caption="../report/convergence_table.rst",
            category="Tables",
        ),
        md=f"{ANALYSIS_TABLES}/convergence.md",
    params:
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output[0]),
        spec=lambda w: digest(config["methods"]),
    log:
        f"{RESULTS}/logs/analysis/convergence_table.log",
    shell:
        "python -m gemsbench.cli.aggregate --config {params.config} --table convergence --summaries {input} "
        "--out-dir {params.out} > {log} 2>&1"


# learning curves need the training logs only: no evaluation, so `snakemake convergence` is training + this
rule convergence_figures:
    conda:
        "../envs/gemsbench.yaml"
    input:
        rules.convergence_table.output.curves,
    output:
        pdf=[f"{stem}.pdf" for stem in ANALYSIS_CONVERGENCE_FIGURES],
        png=report(
            [f"{stem}.png" for stem in ANALYSIS_CONVERGENCE_FIGURES],
            caption="../report/figure_convergence.rst",
            category="Figures",
        ),
    params:
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/analysis/convergence_figures.log",
    shell:
        "python -m gemsbench.cli.figures --out-dir {params.out} --convergence {input} > {log} 2>&1"


rule ablation_table:
    conda:
        "../envs/gemsbench.yaml"
    input:
        main=f"{ANALYSIS_TABLES}/main.csv",
    output:
        csv=report(f"{ANALYSIS_TABLES}/ablation.csv", caption="../report/ablation_table.rst", category="Tables"),
        md=f"{ANALYSIS_TABLES}/ablation.md",
        tex=f"{ANALYSIS_TABLES}/ablation.tex",
    params:
        config=CONFIG,
        out=lambda w, output: os.path.dirname(output.csv),
    log:
        f"{RESULTS}/logs/analysis/ablation_table.log",
    shell:
        "python -m gemsbench.cli.aggregate --config {params.config:q} --table ablation --main {input.main:q} "
        "--out-dir {params.out:q} > {log:q} 2>&1"


rule analysis_figures:
    conda:
        "../envs/gemsbench.yaml"
    input:
        main=f"{ANALYSIS_TABLES}/main.csv",
        efficiency=rules.efficiency_table.output.csv,
        conflict=rules.conflict_csv.output.steps,
        conflict_summary=rules.conflict_csv.output.runs,
        conflict_layers=rules.conflict_csv.output.layers,
    output:
        main_pdf=[f"{stem}.pdf" for stem in ANALYSIS_MAIN_FIGURES],
        main_png=report(
            [f"{stem}.png" for stem in ANALYSIS_MAIN_FIGURES],
            caption="../report/figure_main.rst",
            category="Figures",
        ),
        efficiency_pdf=[f"{stem}.pdf" for stem in ANALYSIS_EFFICIENCY_FIGURES],
        efficiency_png=report(
            [f"{stem}.png" for stem in ANALYSIS_EFFICIENCY_FIGURES],
            caption="../report/figure_efficiency.rst",
            category="Figures",
        ),
        conflict_pdf=[f"{stem}.pdf" for stem in ANALYSIS_CONFLICT_FIGURES],
        conflict_png=report(
            [f"{stem}.png" for stem in ANALYSIS_CONFLICT_FIGURES],
            caption="../report/figure_conflict.rst",
            category="Figures",
        ),
        conflict_layers_pdf=[f"{stem}.pdf" for stem in ANALYSIS_CONFLICT_LAYER_FIGURES],
        conflict_layers_png=report(
            [f"{stem}.png" for stem in ANALYSIS_CONFLICT_LAYER_FIGURES],
            caption="../report/figure_conflict_layers.rst",
            category="Figures",
        ),
    params:
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/analysis/analysis_figures.log",
    shell:
        "python -m gemsbench.cli.figures --out-dir {params.out:q} --main {input.main:q} "
        "--efficiency {input.efficiency:q} --conflict {input.conflict:q} "
        "--conflict-summary {input.conflict_summary:q} --conflict-layers {input.conflict_layers:q} > {log:q} 2>&1"
