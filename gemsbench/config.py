"""Configuration: load a YAML file, validate it against the schema, fill defaults, expand the run grid.

The same schema (workflow/schemas/config.schema.yaml) is used by the Snakefile (``snakemake.utils.validate``)
and by every ``python -m gemsbench.cli.*`` entry point, so each step checks its configuration the same way
whether or not Snakemake runs it.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration breaks the schema or names something unknown."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def validate(config: dict) -> dict:
    """Validate in place, filling defaults; raise ConfigError naming the offending key."""
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ConfigError(f"config key {where!r}: {e.message}. Fix it in the config file "
                          f"(schema: {SCHEMA_PATH.relative_to(SCHEMA_PATH.parents[2])}).")
    _check_references(config)
    return config


def _check_references(config: dict) -> None:
    for name, ds in config["datasets"].items():
        for bb in ds.get("backbones", []):
            if bb not in config["backbones"]:
                raise ConfigError(f"config key 'datasets/{name}/backbones': unknown backbone {bb!r}; "
                                  f"known: {sorted(config['backbones'])}")
    from .data.registry import known_loaders
    from .methods.registry import known_methods
    loaders, methods = known_loaders(), known_methods()
    for name, ds in config["datasets"].items():
        if ds["loader"] not in loaders:
            raise ConfigError(f"config key 'datasets/{name}/loader': unknown dataset loader {ds['loader']!r}; "
                              f"known: {loaders}")
    for run, spec in config["methods"].items():
        if spec["method"] not in methods:
            raise ConfigError(f"config key 'methods/{run}/method': unknown method {spec['method']!r}; "
                              f"known: {methods}")


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        try:
            config = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    return validate(config)


@dataclass(frozen=True)
class Run:
    dataset: str
    backbone: str
    run: str
    seed: int

    @property
    def path(self) -> str:
        return f"{self.dataset}/{self.backbone}/{self.run}/seed{self.seed}"


def dataset_backbones(config: dict, dataset: str) -> list[str]:
    return config["datasets"][dataset].get("backbones") or list(config["backbones"])


def runs(config: dict) -> list[Run]:
    """The main grid: every dataset x its backbones x every method entry x every seed."""
    return [Run(ds, bb, run, seed) for ds in config["datasets"] for bb in dataset_backbones(config, ds)
            for run in config["methods"] for seed in config["seeds"]]


def run_train_settings(config: dict, run: str) -> dict:
    return {**config["train"], **config["methods"][run].get("train", {})}


def run_spec(config: dict, r: Run) -> dict:
    """Everything that determines a run's result (used to name and invalidate it): the hyper-parameters are
    the method's defaults overlaid with the config's, so changing a default in the code reruns the run."""
    from .methods.registry import method_class
    method = config["methods"][r.run]["method"]
    hparams = {**method_class(method).defaults, **config["methods"][r.run].get("hparams", {})}
    return {"dataset": config["datasets"][r.dataset], "backbone": config["backbones"][r.backbone],
            "method": method, "hparams": hparams,
            "train": run_train_settings(config, r.run), "seed": r.seed}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
