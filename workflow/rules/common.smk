# Configuration validation and the experiment grid, expanded in one place.
import os
import sys

from snakemake.utils import validate as snakemake_validate

from gemsbench.atomic import atomic_write_text
from gemsbench.data.prepared import PREPARED_FILES
from gemsbench.config import (
    ConfigError,
    NAME_PATTERN,
    RUN_NAME_PATTERN,
    SCHEMA_PATH,
    Run,
    digest,
    run_knowledge_space,
    run_spec,
    runs,
    sensitivity_runs,
    sweep_runs,
    validate,
)

snakemake_validate(config, str(SCHEMA_PATH), set_default=True)
try:
    validate(config)  # same schema, plus names of loaders, methods and backbones
except ConfigError as e:
    sys.exit(f"config error: {e}")

RESULTS = config["results_dir"]
RUNS = runs(config)  # the main grid: the main, significance, efficiency and conflict tables read these only
# sensitivity sweeps (config `sensitivity`): the extra runs, named {base}~{param}-{value}, and every run the
# sensitivity table reads (the base entry's main-grid runs for the sweep seeds, then SWEEP_RUNS)
SWEEP_RUNS = sweep_runs(config)
SENSITIVITY_RUNS = sensitivity_runs(config)
RUN_DIR = os.path.join(RESULTS, "runs/{dataset}/{backbone}/{run}/seed{seed}")
# the files of a prepared dataset (rule prepare_data writes them; every rule reading the dataset takes them all)
DATA_DIR = os.path.join(RESULTS, "data/{dataset}")
DATA_FILES = [os.path.join(DATA_DIR, name) for name in PREPARED_FILES]
# every prepared dataset's files, targets of `all`: Snakemake re-makes a file only when a job needs it, so without
# them a deleted data file would go unnoticed by the default target until some job reads it and fails
ALL_DATA_FILES = [path.format(dataset=ds) for ds in config["datasets"] for path in DATA_FILES]
SPLIT = config["evaluate"]["split"]


def resolved_config_path():
    """The validated config (defaults filled) that every step reads; rewritten only when it changes."""
    import os
    import yaml

    path = os.path.join(RESULTS, "config.yaml")
    text = yaml.safe_dump(config, sort_keys=True)
    if not os.path.exists(path) or open(path).read() != text:
        atomic_write_text(text, path)
    return path


CONFIG = resolved_config_path()


def run_digest(wildcards):
    return digest(run_spec(config, Run(wildcards.dataset, wildcards.backbone, wildcards.run, int(wildcards.seed))))


# names as the schema allows them (RUN_NAME_PATTERN); a run may be a sensitivity sweep run, {base}~{param}-{value}
wildcard_constraints:
    seed=r"\d+",
    dataset=NAME_PATTERN,
    backbone=NAME_PATTERN,
    run=RUN_NAME_PATTERN,


def knowledge_report(wildcards):
    """Input of the train rule: the knowledge-space report of this run's backbone, when its method needs it."""
    space = run_knowledge_space(config, wildcards.run)
    return [] if space is None else [os.path.join(RESULTS, "knowledge", wildcards.backbone, f"{space.stem}.json")]
