"""Configuration errors and command-line failures: a clear message, a non-zero exit, nothing half-written."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gemsbench.config import ConfigError, load_config, runs, validate

ROOT = Path(__file__).resolve().parent.parent


def base_config():
    return yaml.safe_load((ROOT / "config" / "test.yaml").read_text())


def test_shipped_configs_validate():
    for name in ("default.yaml", "reference.yaml", "test.yaml"):
        cfg = load_config(ROOT / "config" / name)
        assert runs(cfg)


def test_defaults_are_filled():
    cfg = validate(base_config())
    assert cfg["evaluate"]["ks"] == [1, 5, 10, 20, 50]
    assert cfg["train"]["selection"] == "ndcg@5"


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["train"].update(batch_size=0), "train/batch_size"),
    (lambda c: c["train"].update(fromat="prompt"), "Additional properties"),
    (lambda c: c["methods"]["lora"].update(method="loraa"), "unknown method 'loraa'"),
    (lambda c: c["datasets"]["ml100k"].update(loader="imdb"), "unknown dataset loader 'imdb'"),
    (lambda c: c["backbones"]["tiny_llama"].update(source="gguf"), "backbones/tiny_llama/source"),
])
def test_bad_config_names_the_key(mutate, needle):
    cfg = copy.deepcopy(base_config())
    mutate(cfg)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        validate(cfg)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd)


def test_unknown_dataset_exits_nonzero_and_writes_nothing(tmp_path):
    out = tmp_path / "data"
    r = cli("gemsbench.cli.prepare", "--config", str(ROOT / "config/test.yaml"), "--dataset", "imdb",
            "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2
    assert "dataset 'imdb' is not in the config" in r.stderr
    assert not out.exists()


def test_failed_preparation_leaves_no_partial_output(tmp_path):
    cfg = base_config()
    cfg["datasets"]["ml100k"]["params"] = {"num_negatives": 5000}  # more than the catalogue holds
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "data"
    r = cli("gemsbench.cli.prepare", "--config", str(path), "--dataset", "ml100k", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "lower num_negatives" in r.stderr
    assert not out.exists() and not any(tmp_path.glob(".data*"))


def test_schema_error_from_the_cli(tmp_path):
    cfg = base_config()
    cfg["seeds"] = []
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = cli("gemsbench.cli.prepare", "--config", str(path), "--dataset", "ml100k", "--out", str(tmp_path / "d"),
            cwd=tmp_path)
    assert r.returncode == 2 and "config key 'seeds'" in r.stderr


def test_evaluating_an_untrained_run_is_a_clear_error(tmp_path, synthetic_dataset):
    r = cli("gemsbench.cli.evaluate", "--config", str(ROOT / "config/test.yaml"), "--dataset", "ml100k",
            "--backbone", "tiny_llama", "--run", "lora", "--seed", "1", "--data", str(synthetic_dataset.root),
            "--run-dir", str(tmp_path / "run"), "--rows", str(tmp_path / "r.parquet"),
            "--summary", str(tmp_path / "s.json"), cwd=tmp_path)
    assert r.returncode == 2 and "run the train step" in r.stderr
    assert not (tmp_path / "s.json").exists()


def test_malformed_examples_are_reported_with_their_row(synthetic_dataset):
    from gemsbench.data.format import DataFormatError, validate_examples
    bad = synthetic_dataset.splits["test"].copy()
    bad.at[bad.index[2], "targets"] = [10_000]
    with pytest.raises(DataFormatError, match="test example 2: item id out of range"):
        validate_examples(bad, synthetic_dataset.n_items, "test")
