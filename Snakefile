# GEMS reproduction suite: `snakemake --cores all` runs the embedded default end to end.
# Rules are thin: each calls a `python -m gemsbench.cli.<stage>` entry point that also runs on its own.
# Named targets (main_table, ablation, sensitivity, conflict, convergence, knowledge, efficiency, figures, report,
# all):
# workflow/rules/targets.smk.
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
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/retention.smk"
include: "workflow/rules/sensitivity.smk"
include: "workflow/rules/targets.smk"


localrules:
    all,


rule all:
    default_target: True
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
        rules.report.output,
        ALL_DATA_FILES,
