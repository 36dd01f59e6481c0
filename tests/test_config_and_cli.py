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


def test_every_config_writes_results_of_its_own_name():
    """A config config/<name>.yaml writes results/<name>/ (overlays, which set no results_dir, excepted) and its
    paper figures inside it; committed runs live under results/published/<name>/ only."""
    for path in sorted((ROOT / "config").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if "results_dir" not in cfg:
            assert "methods" not in cfg, f"{path.name} is a full config without results_dir"
            continue
        assert cfg["results_dir"] == f"results/{path.stem}", path.name
        assert cfg.get("paper_figures_dir", f"results/{path.stem}/").startswith(f"results/{path.stem}/"), path.name
    published = sorted(p.name for p in (ROOT / "results" / "published").iterdir())
    assert published and all((ROOT / "config" / f"{name}.yaml").exists() for name in published)


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
    from gemsbench.data.prepared import PreparedDataError, validate_examples
    bad = synthetic_dataset.splits["test"].copy()
    bad.at[bad.index[2], "targets"] = [10_000]
    with pytest.raises(PreparedDataError, match="test example 2: item id out of range"):
        validate_examples(bad, synthetic_dataset.n_items, "test")


def test_schema_train_defaults_are_the_train_settings_defaults():
    """The schema fills the config's train section; TrainSettings serves code that builds one without a config.
    Both must describe the same settings with the same defaults, every field (new ones included)."""
    import dataclasses

    from gemsbench.config import schema
    from gemsbench.train import TrainSettings

    declared = schema()["properties"]["train"]["properties"]
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    assert fields and set(fields) == set(declared)
    for name, field in fields.items():
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert "default" in declared[name], name
        assert default == declared[name]["default"], name
        assert isinstance(default, bool) == isinstance(declared[name]["default"], bool), name


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["methods"]["full_ft"]["hparams"].update(lr=float("nan")), "methods/full_ft/hparams/lr': "),
    (lambda c: c["methods"]["full_ft"]["hparams"].update(lr=-1e-3), "methods/full_ft/hparams/lr': .*> 0"),
    (lambda c: c["methods"]["full_ft"]["hparams"].update(lr="1e-3"), "YAML reads 1e-3 as text"),
    (lambda c: c["methods"]["lora"]["hparams"].update(rank=0), "methods/lora/hparams/rank': .*>= 1"),
    (lambda c: c["methods"]["lora"]["hparams"].update(rank=4.0), "methods/lora/hparams/rank': .*integer"),
    (lambda c: c["methods"]["lora"]["hparams"].update(dropout=1.5), r"methods/lora/hparams/dropout': .*\[0, 1\)"),
    (lambda c: c["methods"]["gems"]["hparams"].update(update_gap=0), "methods/gems/hparams/update_gap'"),
    (lambda c: c["methods"]["gems"]["hparams"].update(gate_rec_weight=2.0), "methods/gems/hparams/gate_rec_weight'"),
    (lambda c: c["methods"]["gems"]["hparams"].update(rnak=8), "methods/gems/hparams/rnak': .*unknown"),
    (lambda c: c["sensitivity"]["grid"].update(rank=[0]), "sensitivity/grid/rank/0/rank': .*>= 1"),
    (lambda c: c["train"].update(max_grad_norm=float("inf")), "train/max_grad_norm': inf is not a finite"),
    (lambda c: c["methods"].update({"lora; rm -rf ~": {"method": "lora"}}), "config key 'methods': .*does not match"),
    (lambda c: c["datasets"].update({"../ml": c["datasets"]["ml100k"]}), "config key 'datasets': .*does not match"),
])
def test_bad_values_are_refused_at_start_up_naming_the_key(mutate, needle):
    cfg = copy.deepcopy(base_config())
    mutate(cfg)
    with pytest.raises(ConfigError, match=needle):
        validate(cfg)


def test_every_method_declares_the_type_of_each_hyper_parameter():
    from gemsbench.methods.registry import known_methods, method_class

    for name in known_methods():
        cls = method_class(name)
        assert set(cls.hparam_types) == set(cls.defaults), name
        assert cls.checked_hparams({}) == cls.defaults  # the defaults satisfy their own types
