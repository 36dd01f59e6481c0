# Named targets: `snakemake <name>` makes one part of the paper's experimental section; `all` makes everything.
# Every figure is drawn under {results_dir}/figures and copied to config["paper_figures_dir"] by `figures`.
# Uses the rules and lists of the other rule files: include this file last. `rule all` (everything) stays in
# the Snakefile: snakemake ignores default_target in an included file.

PAPER_FIGURES = config["paper_figures_dir"]


# the PDF and PNG figures among the outputs of the figure rules
ALL_FIGURES = [
    str(p)
    for p in [*rules.analysis_figures.output, *rules.convergence_figures.output, *RETENTION_OUTPUTS,
              *SENSITIVITY_OUTPUTS]
    if str(p).endswith((".pdf", ".png"))
]
PUBLISHED_FIGURES = [os.path.join(PAPER_FIGURES, os.path.basename(f)) for f in ALL_FIGURES]


localrules:
    publish_figure,
    ablation,
    efficiency,
    conflict,
    convergence,
    knowledge,
    sensitivity,
    figures,
    report,


rule publish_figure:
    conda:
        "../envs/gemsbench.yaml"
    input:
        os.path.join(ANALYSIS_FIGURES, "{name}"),
    output:
        os.path.join(PAPER_FIGURES, "{name}"),
    wildcard_constraints:
        name=r"[^/]+\.(pdf|png)",
    log:
        os.path.join(RESULTS, "logs/analysis/publish_{name}.log"),
    shell:
        "cp -v {input:q} {output:q} > {log:q} 2>&1"


rule ablation:
    input:
        rules.ablation_table.output,


rule efficiency:
    input:
        rules.efficiency_table.output,
        rules.analysis_figures.output.efficiency_pdf,
        rules.analysis_figures.output.efficiency_png,


rule conflict:
    input:
        rules.conflict_csv.output,
        rules.analysis_figures.output.conflict_pdf,
        rules.analysis_figures.output.conflict_png,
        rules.analysis_figures.output.conflict_layers_pdf,
        rules.analysis_figures.output.conflict_layers_png,


rule convergence:
    input:
        rules.convergence_table.output,
        rules.convergence_figures.output,


rule knowledge:
    input:
        RETENTION_OUTPUTS,


rule sensitivity:
    input:
        SENSITIVITY_OUTPUTS,


rule figures:
    input:
        PUBLISHED_FIGURES,


rule report:
    conda:
        "../envs/gemsbench.yaml"
    input:
        rules.main_table.output,
        rules.significance.output,
        rules.ablation_table.output,
        rules.efficiency_table.output,
        rules.conflict_csv.output,
        rules.convergence_table.output,
        RETENTION_OUTPUTS,
        SENSITIVITY_OUTPUTS,
        PUBLISHED_FIGURES,
    output:
        os.path.join(RESULTS, "report.html"),
    params:
        config=CONFIG,
        snakefile=workflow.main_snakefile,
        python=sys.executable,
    log:
        os.path.join(RESULTS, "logs/analysis/report.log"),
    shell:
        # the report of this very workflow and config: every table and figure marked report() in the rules
        "{params.python:q} -m snakemake -s {params.snakefile:q} --report {output:q} --configfile {params.config:q} "
        "--nolock > {log:q} 2>&1"
