# Results tables: one rule per table of the registry (gemsbench/analysis/registry.py, TABLES), named
# <table>_table, each a call of `python -m gemsbench.cli.aggregate --table <table>`. What a table reads is an input
# kind (registry docstring) listed here once; a table whose run inputs are empty (no sensitivity grid, no LLM run
# to measure) gets no rule. Adding a table needs no change here.
# Uses common.smk (RUNS, SENSITIVITY_RUNS, RESULTS, CONFIG, digest), the rules train and evaluate, and retention.smk
# (RETENTION_RUNS, RETENTION_BASES): include this file after them.
import shlex

from gemsbench.analysis.registry import RUN_INPUTS, TABLES

TABLES_DIR = os.path.join(RESULTS, "tables")
FIGURES_DIR = os.path.join(RESULTS, "figures")


def run_grid(runs):
    """The runs as expand() keywords, to expand run-level output patterns of the rules train and evaluate."""
    return dict(dataset=[r.dataset for r in runs], backbone=[r.backbone for r in runs], run=[r.run for r in runs],
                seed=[r.seed for r in runs])


def groups(runs):
    """(dataset, backbone) pairs of the runs, in order: one figure each."""
    return list(dict.fromkeys((r.dataset, r.backbone) for r in runs))


#: input kind -> its files (the kinds of gemsbench.analysis.registry.RUN_INPUTS)
TABLE_RUN_INPUTS = {
    "evaluation": expand(rules.evaluate.output.summary, zip, **run_grid(RUNS)),
    "rows": expand(rules.evaluate.output.rows, zip, **run_grid(RUNS)),
    "training": expand(rules.train.output.summary, zip, **run_grid(RUNS)),
    "retention": (
        [os.path.join(RESULTS, "runs", r.path, "retention.json") for r in RETENTION_RUNS] + RETENTION_BASES
        if RETENTION_RUNS else []
    ),
    "sensitivity": expand(rules.evaluate.output.summary, zip, **run_grid(SENSITIVITY_RUNS)),
}
assert set(TABLE_RUN_INPUTS) == set(RUN_INPUTS), "list the files of every input kind of the registry"


def table_path(name, file):
    """A file of table ``name``: every table writes into TABLES_DIR."""
    assert file in TABLES[name].outputs, f"table {name} writes no {file}"
    return os.path.join(TABLES_DIR, file)


def table_input_files(table):
    """argument -> files of ``table``'s inputs; None when a run input is empty or a table it reads is not made."""
    files = {}
    for arg, kind in table.inputs.items():
        if kind in TABLE_RUN_INPUTS:
            files[arg] = TABLE_RUN_INPUTS[kind]
            if not files[arg]:
                return None
        else:
            name, file = kind.split("/", 1)
            if name not in TABLE_INPUTS:
                return None
            files[arg] = [table_path(name, file)]
    return files


# table name -> argument -> files, for the tables this config makes (registry order: a table read by another
# comes first)
TABLE_INPUTS = {}
for _name, _table in TABLES.items():
    _files = table_input_files(_table)
    if _files is not None:
        TABLE_INPUTS[_name] = _files

#: every file of every table this config makes
TABLE_OUTPUTS = [table_path(name, file) for name in TABLE_INPUTS for file in TABLES[name].outputs]


def table_outputs(name):
    """The outputs of table ``name``; its report file in the Snakemake report, captioned by
    workflow/report/table_<name>.rst."""
    table = TABLES[name]
    caption = os.path.join(workflow.basedir, "report", f"table_{name}.rst")
    files = []
    for f in table.outputs:
        if f == table.report and os.path.exists(caption):
            files.append(report(table_path(name, f), caption=f"../report/table_{name}.rst", category="Tables"))
        else:
            files.append(table_path(name, f))
    return files


for _name, _files in TABLE_INPUTS.items():

    rule:
        name:
            f"{_name}_table"
        localrule: True  # seconds of work: run on the submitting machine rather than queueing a cluster job
        conda:
            "../envs/gemsbench.yaml"
        input:
            **_files,
        output:
            table_outputs(_name),
        params:
            config=CONFIG,
            table=_name,
            out=TABLES_DIR,
            args=" ".join(f"--{arg} " + " ".join(shlex.quote(p) for p in paths) for arg, paths in _files.items()),
            spec=digest([config[key] for key in TABLES[_name].config_keys]),
        log:
            os.path.join(RESULTS, "logs", "tables", f"{_name}.log"),
        shell:
            "python -m gemsbench.cli.aggregate --config {params.config:q} --table {params.table} {params.args} "
            "--out-dir {params.out:q} > {log:q} 2>&1 && cat {log:q}"
