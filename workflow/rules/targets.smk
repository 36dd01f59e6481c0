# Named targets: `snakemake <name>` makes one part of the paper's experimental section; `all` makes everything.
# Every figure is drawn under {results_dir}/figures and copied to config["paper_figures_dir"] by `figures`.
# Uses the rules and lists of the other rule files: include this file last. `rule all` (everything) stays in
# the Snakefile: snakemake ignores default_target in an included file.

PAPER_FIGURES = config["paper_figures_dir"]
PUBLISHED_FIGURES = [os.path.join(PAPER_FIGURES, os.path.basename(f)) for f in FIGURE_OUTPUTS]


def table_files(name):
    """The files of table ``name`` (none when this config does not make it)."""
    return [table_path(name, f) for f in TABLES[name].outputs] if name in TABLE_INPUTS else []


localrules:
    publish_figure,
    ablation,
    efficiency,
    conflict,
    convergence,
    retention,
    sensitivity,
    figures,
    report,


rule publish_figure:
    conda:
        "../envs/gemsbench.yaml"
    input:
        os.path.join(FIGURES_DIR, "{name}"),
    output:
        os.path.join(PAPER_FIGURES, "{name}"),
    wildcard_constraints:
        name=r"[^/]+\.(pdf|png)",
    log:
        os.path.join(RESULTS, "logs/figures/publish_{name}.log"),
    shell:
        "cp -v {input:q} {output:q} > {log:q} 2>&1"


rule ablation:
    input:
        table_files("ablation"),


rule efficiency:
    input:
        table_files("efficiency"),
        rules.analysis_figures.output.efficiency_pdf,
        rules.analysis_figures.output.efficiency_png,


rule conflict:
    input:
        table_files("conflict"),
        rules.analysis_figures.output.conflict_pdf,
        rules.analysis_figures.output.conflict_png,
        rules.analysis_figures.output.conflict_layers_pdf,
        rules.analysis_figures.output.conflict_layers_png,


rule convergence:
    input:
        table_files("convergence"),
        rules.convergence_figures.output,


rule retention:
    input:
        table_files("retention"),
        [f for f in FIGURE_OUTPUTS if os.path.basename(f).startswith("retention_")],


rule sensitivity:
    input:
        table_files("sensitivity"),
        [f for f in FIGURE_OUTPUTS if os.path.basename(f).startswith("sensitivity_")],


rule figures:
    input:
        PUBLISHED_FIGURES,


rule report:
    conda:
        "../envs/gemsbench.yaml"
    input:
        TABLE_OUTPUTS,
        PUBLISHED_FIGURES,
    output:
        os.path.join(RESULTS, "report.html"),
    params:
        config=CONFIG,
        snakefile=workflow.main_snakefile,
        python=sys.executable,
    log:
        os.path.join(RESULTS, "logs/figures/report.log"),
    shell:
        # the report of this very workflow and config: every table and figure marked report() in the rules
        "{params.python:q} -m snakemake -s {params.snakefile:q} --report {output:q} --configfile {params.config:q} "
        "--nolock > {log:q} 2>&1"
