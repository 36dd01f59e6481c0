# Sensitivity sweeps (config `sensitivity`): the base entry (GEMS) with one hyper-parameter changed at a time —
# rank, update gap, scale, null-space threshold, gate. The sweep runs go through the rules train and evaluate
# (their patterns take any run name); each curve's base point is the main-grid run, never retrained.
# Uses common.smk (SENSITIVITY_RUNS, RESULTS, CONFIG, digest) and the rules train and evaluate: include it after
# them. SENSITIVITY_OUTPUTS (end of file) lists every table and figure made here; empty without a grid.

SENSITIVITY_TABLES = os.path.join(RESULTS, "tables")
SENSITIVITY_FIGURES = os.path.join(RESULTS, "figures")
SENSITIVITY_GROUPS = list(dict.fromkeys((r.dataset, r.backbone) for r in SENSITIVITY_RUNS))
# the runs the table reads as expand() keywords, to expand the evaluate rule's output pattern
SENSITIVITY_GRID = dict(
    dataset=[r.dataset for r in SENSITIVITY_RUNS],
    backbone=[r.backbone for r in SENSITIVITY_RUNS],
    run=[r.run for r in SENSITIVITY_RUNS],
    seed=[r.seed for r in SENSITIVITY_RUNS],
)
# figure file stems, named as gemsbench.cli.figures names them
SENSITIVITY_FIGURE_STEMS = [
    os.path.join(SENSITIVITY_FIGURES, f"sensitivity_{ds}_{bb}") for ds, bb in SENSITIVITY_GROUPS
]


if SENSITIVITY_RUNS:

    # seconds of work each: run them on the submitting machine rather than queueing cluster jobs
    localrules:
        sensitivity_table,
        sensitivity_figures,

    rule sensitivity_table:
        conda:
            "../envs/gemsbench.yaml"
        input:
            expand(rules.evaluate.output.summary, zip, **SENSITIVITY_GRID),
        output:
            csv=report(
                os.path.join(SENSITIVITY_TABLES, "sensitivity.csv"),
                caption="../report/sensitivity_table.rst",
                category="Tables",
            ),
            md=os.path.join(SENSITIVITY_TABLES, "sensitivity.md"),
            tex=os.path.join(SENSITIVITY_TABLES, "sensitivity.tex"),
        params:
            config=CONFIG,
            out=lambda w, output: os.path.dirname(output.csv),
            spec=lambda w: digest([config["sensitivity"], config["methods"][config["sensitivity"]["base"]]]),
        log:
            os.path.join(RESULTS, "logs/analysis/sensitivity_table.log"),
        shell:
            "python -m gemsbench.cli.aggregate --config {params.config:q} --table sensitivity --summaries {input:q} "
            "--out-dir {params.out:q} > {log:q} 2>&1"

    rule sensitivity_figures:
        conda:
            "../envs/gemsbench.yaml"
        input:
            csv=rules.sensitivity_table.output.csv,
        output:
            pdf=[f"{stem}.pdf" for stem in SENSITIVITY_FIGURE_STEMS],
            png=report(
                [f"{stem}.png" for stem in SENSITIVITY_FIGURE_STEMS],
                caption="../report/figure_sensitivity.rst",
                category="Figures",
            ),
        params:
            out=lambda w, output: os.path.dirname(output[0]),
        log:
            os.path.join(RESULTS, "logs/analysis/sensitivity_figures.log"),
        shell:
            "python -m gemsbench.cli.figures --out-dir {params.out:q} --sensitivity {input.csv:q} > {log:q} 2>&1"


SENSITIVITY_OUTPUTS = (
    [os.path.join(SENSITIVITY_TABLES, f"sensitivity.{ext}") for ext in ("csv", "md", "tex")]
    + [f"{stem}.{ext}" for stem in SENSITIVITY_FIGURE_STEMS for ext in ("pdf", "png")]
    if SENSITIVITY_RUNS
    else []
)
