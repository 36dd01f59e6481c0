# Figures, drawn from the tables only (`python -m gemsbench.cli.figures`), so `snakemake figures` redraws them
# without retraining anything. Uses tables.smk (table_path, TABLE_INPUTS, FIGURES_DIR, groups) and common.smk:
# include this file after them. FIGURE_OUTPUTS (end of file) lists every figure made here.

MAIN_GROUPS = groups(RUNS)
# figure file stems, named as gemsbench.cli.figures names them
MAIN_FIGURES = [
    os.path.join(FIGURES_DIR, f"main_{ds}_{bb}_{protocol}")
    for ds, bb in MAIN_GROUPS
    for protocol in config["evaluate"]["protocols"]
]
EFFICIENCY_FIGURES = [os.path.join(FIGURES_DIR, f"efficiency_{ds}_{bb}") for ds, bb in MAIN_GROUPS]
CONFLICT_FIGURES = [os.path.join(FIGURES_DIR, f"conflict_{ds}_{bb}") for ds, bb in MAIN_GROUPS]
CONFLICT_LAYER_FIGURES = [os.path.join(FIGURES_DIR, f"conflict_layers_{ds}_{bb}") for ds, bb in MAIN_GROUPS]
CONVERGENCE_FIGURES = [os.path.join(FIGURES_DIR, f"convergence_{ds}_{bb}") for ds, bb in MAIN_GROUPS]
RETENTION_FIGURES = [os.path.join(FIGURES_DIR, f"retention_{ds}_{bb}") for ds, bb in RETENTION_GROUPS]
SENSITIVITY_FIGURES = [os.path.join(FIGURES_DIR, f"sensitivity_{ds}_{bb}") for ds, bb in groups(SENSITIVITY_RUNS)]


def figure_files(stems, caption):
    """PDF and PNG of every stem; the PNGs in the Snakemake report with ``caption``."""
    return dict(
        pdf=[f"{stem}.pdf" for stem in stems],
        png=report([f"{stem}.png" for stem in stems], caption=caption, category="Figures"),
    )


# seconds of work each: run them on the submitting machine rather than queueing cluster jobs
localrules:
    analysis_figures,
    convergence_figures,


rule analysis_figures:
    conda:
        "../envs/gemsbench.yaml"
    input:
        main=table_path("main", "main.csv"),
        efficiency=table_path("efficiency", "efficiency.csv"),
        conflict=table_path("conflict", "conflict.csv"),
        conflict_summary=table_path("conflict", "conflict_summary.csv"),
        conflict_layers=table_path("conflict", "conflict_layers.csv"),
        # the sensitivity table is read by the rule sensitivity_figures; this one must not need it
    output:
        main_pdf=figure_files(MAIN_FIGURES, "../report/figure_main.rst")["pdf"],
        main_png=figure_files(MAIN_FIGURES, "../report/figure_main.rst")["png"],
        efficiency_pdf=figure_files(EFFICIENCY_FIGURES, "../report/figure_efficiency.rst")["pdf"],
        efficiency_png=figure_files(EFFICIENCY_FIGURES, "../report/figure_efficiency.rst")["png"],
        conflict_pdf=figure_files(CONFLICT_FIGURES, "../report/figure_conflict.rst")["pdf"],
        conflict_png=figure_files(CONFLICT_FIGURES, "../report/figure_conflict.rst")["png"],
        conflict_layers_pdf=figure_files(CONFLICT_LAYER_FIGURES, "../report/figure_conflict_layers.rst")["pdf"],
        conflict_layers_png=figure_files(CONFLICT_LAYER_FIGURES, "../report/figure_conflict_layers.rst")["png"],
    params:
        out=FIGURES_DIR,
    log:
        os.path.join(RESULTS, "logs/figures/analysis_figures.log"),
    shell:
        "python -m gemsbench.cli.figures --out-dir {params.out:q} --main {input.main:q} "
        "--efficiency {input.efficiency:q} --conflict {input.conflict:q} "
        "--conflict-summary {input.conflict_summary:q} --conflict-layers {input.conflict_layers:q} > {log:q} 2>&1"


# learning curves need the training logs only: no evaluation, so `snakemake convergence` is training + this
rule convergence_figures:
    conda:
        "../envs/gemsbench.yaml"
    input:
        table_path("convergence", "convergence.csv"),
    output:
        **figure_files(CONVERGENCE_FIGURES, "../report/figure_convergence.rst"),
    params:
        out=FIGURES_DIR,
    log:
        os.path.join(RESULTS, "logs/figures/convergence_figures.log"),
    shell:
        "python -m gemsbench.cli.figures --out-dir {params.out:q} --convergence {input:q} > {log:q} 2>&1"


if "retention" in TABLE_INPUTS:

    localrules:
        retention_figures,

    rule retention_figures:
        conda:
            "../envs/gemsbench.yaml"
        input:
            table_path("retention", "retention.csv"),
        output:
            **figure_files(RETENTION_FIGURES, "../report/figure_retention.rst"),
        params:
            out=FIGURES_DIR,
        log:
            os.path.join(RESULTS, "logs/figures/retention_figures.log"),
        shell:
            "python -m gemsbench.cli.figures --out-dir {params.out:q} --retention {input:q} > {log:q} 2>&1"


if "sensitivity" in TABLE_INPUTS:

    localrules:
        sensitivity_figures,

    rule sensitivity_figures:
        conda:
            "../envs/gemsbench.yaml"
        input:
            csv=table_path("sensitivity", "sensitivity.csv"),
            # the base run's seed-to-seed band comes from the main grid's seeds
            main=table_path("main", "main.csv"),
        output:
            **figure_files(SENSITIVITY_FIGURES, "../report/figure_sensitivity.rst"),
        params:
            out=FIGURES_DIR,
        log:
            os.path.join(RESULTS, "logs/figures/sensitivity_figures.log"),
        shell:
            "python -m gemsbench.cli.figures --out-dir {params.out:q} --sensitivity {input.csv:q} "
            "--sensitivity-main {input.main:q} > {log:q} 2>&1"


#: every figure this config draws (PDF and PNG)
FIGURE_OUTPUTS = [
    f"{stem}.{ext}"
    for stems in (
        MAIN_FIGURES,
        EFFICIENCY_FIGURES,
        CONFLICT_FIGURES,
        CONFLICT_LAYER_FIGURES,
        CONVERGENCE_FIGURES,
        RETENTION_FIGURES if "retention" in TABLE_INPUTS else [],
        SENSITIVITY_FIGURES if "sensitivity" in TABLE_INPUTS else [],
    )
    for stem in stems
    for ext in ("pdf", "png")
]
