# GEMS reproduction suite: `snakemake --cores all` runs the embedded default end to end.
# Rules are thin: each calls a `python -m gemsbench.cli.<stage>` entry point that also runs on its own.
from snakemake.utils import min_version

min_version("9.0")

configfile: "config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        rules.main_table.output,
