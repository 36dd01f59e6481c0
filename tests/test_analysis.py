"""The table registry (gemsbench.analysis.registry): every registered module defines the table it is registered
as, tables read only tables made before them, no two tables write the same file, every report caption exists, and
the aggregate entry point makes a table from hand-written inputs through the registry alone."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gemsbench.analysis.registry import MODULES, RUN_INPUTS, TABLES
from gemsbench.analysis.table import Table
from gemsbench.analysis.render import seeds_phrase
from gemsbench.cli.aggregate import build_parser, input_arguments, run

ROOT = Path(__file__).resolve().parent.parent


def test_every_registered_module_defines_its_table():
    assert list(TABLES) == list(MODULES)
    for name, table in TABLES.items():
        assert isinstance(table, Table) and table.name == name
        assert MODULES[name] == f"gemsbench.analysis.{name}"  # one module per table, named after it


def test_tables_read_only_earlier_tables_and_write_distinct_files():
    seen, written = [], {}
    for name, table in TABLES.items():
        for arg, kind in table.inputs.items():
            if kind not in RUN_INPUTS:
                source, file = kind.split("/", 1)
                assert source in seen, f"{name} reads {kind}: register {source} before it"
                assert file in TABLES[source].outputs
        for file in table.outputs:
            assert file not in written, f"{name} and {written.get(file)} both write {file}"
            written[file] = name
        seen.append(name)


def test_report_captions_exist_for_every_reported_table():
    for name, table in TABLES.items():
        if table.report:
            assert (ROOT / "workflow" / "report" / f"table_{name}.rst").exists(), name


def test_aggregate_offers_every_table_and_every_input():
    p = build_parser()
    table_action = next(a for a in p._actions if a.dest == "table")
    assert list(table_action.choices) == list(TABLES)
    assert set(input_arguments()) == {arg for t in TABLES.values() for arg in t.inputs}


def test_a_missing_or_foreign_input_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--table ablation needs --main"):
        TABLES["ablation"].check_inputs({})
    with pytest.raises(ValueError, match=r"--table ablation takes \['main'\], not \['rows'\]"):
        TABLES["ablation"].check_inputs({"main": ["m.csv"], "rows": ["r.parquet"]})


def test_bad_table_declarations_are_refused():
    with pytest.raises(ValueError, match="kind 'summary'"):
        Table("x", {"s": "summary"}, ("x.csv",), lambda c, i, o: "")
    with pytest.raises(ValueError, match="report file 'y.csv'"):
        Table("x", {"s": "training"}, ("x.csv",), lambda c, i, o: "", report="y.csv")


def test_seeds_phrase():
    assert seeds_phrase(3) == "mean ± std over 3 seeds"
    assert seeds_phrase(1) == "mean, 1 seed" and seeds_phrase(1, single="1 seed") == "1 seed"


def test_ablation_table_through_the_registry_from_a_hand_written_main_table(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"dataset": "d", "backbone": "b", "protocol": "sampled", "run": run, "label": label, "method": run,
             "task": task, "metric": "ndcg@10", "mean": mean, "std": 0.0, "seeds": 1, "marker": ""}
            for run, label, mean in (("galore", "GaLore", 0.2), ("gems", "GEMS", 0.3), ("lora", "LoRA", 0.1))
            for task in ("search", "rec")]
    pd.DataFrame(rows).to_csv(tmp_path / "main.csv", index=False)
    out = tmp_path / "tables"
    args = build_parser().parse_args(["--config", str(tmp_path / "c.yaml"), "--table", "ablation",
                                      "--main", str(tmp_path / "main.csv"), "--out-dir", str(out)])
    assert "ablation table" in run(args)
    table = pd.read_csv(out / "ablation.csv")
    assert list(dict.fromkeys(table["run"])) == ["gems", "galore"]  # full GEMS first; LoRA is no ablation
    assert "GEMS (MSD yes, NSP yes)" in (out / "ablation.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(TABLES["ablation"].outputs)
