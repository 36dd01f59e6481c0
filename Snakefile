# GEMS reproduction suite: `snakemake --cores all` runs the embedded default end to end.
# Rules are thin: each calls a `python -m gemsbench.cli.<stage>` entry point that also runs on its own.
# Named targets (main_table, ablation, sensitivity, conflict, convergence, retention, efficiency, figures, report,
# all): workflow/rules/targets.smk. Tables: one rule per table of gemsbench/analysis/registry.py (tables.smk).
from snakemake.utils import min_version

min_version("9.0")


# The embedded default unless a --configfile is given (a given one replaces it rather than merging into it).
if not config:

    configfile: "config/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/knowledge.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/retention.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/targets.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        TABLE_OUTPUTS,
        PUBLISHED_FIGURES,
        rules.report.output,
        ALL_DATA_FILES,
