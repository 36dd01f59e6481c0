"""Configuration: load a YAML file, validate it against the schema, fill defaults, expand the run grid.

The same schema (workflow/schemas/config.schema.yaml) is used by the Snakefile (``snakemake.utils.validate``)
and by every ``python -m gemsbench.cli.*`` entry point, so each step checks its configuration the same way
whether or not Snakemake runs it.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from .digest import digest  # noqa: F401 - part of this module's interface (rules and entry points use it)

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
    _check_finite(config, "")
    _check_references(config)
    return config


def _check_finite(value, where: str) -> None:
    """No value of a config is NaN or infinite (YAML's .nan / .inf pass the schema's number bounds)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {where!r}: {value} is not a finite number. Fix it in the config file.")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        _check_finite(sub, f"{where}/{key}" if where else str(key))


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
        _check_hparams(spec["method"], spec.get("hparams", {}), f"methods/{run}/hparams")
    sweep_points(config)  # the sensitivity grid names hyper-parameters of its base entry, and no run twice
    sensitivity = config.get("sensitivity") or {}
    if sensitivity.get("grid"):
        ks = config["evaluate"]["ks"]
        for metric in sensitivity["metrics"]:
            if int(metric.split("@")[1]) not in ks:
                raise ConfigError(f"config key 'sensitivity/metrics': {metric!r} needs k = {metric.split('@')[1]} "
                                  f"in evaluate.ks ({ks})")


def _check_hparams(method: str, hparams: dict, where: str) -> None:
    """Every hyper-parameter value against the type and range its method declares, naming the config key."""
    from .methods.hparams import HParamError
    from .methods.registry import method_class
    try:
        method_class(method).checked_hparams(hparams)
    except HParamError as e:
        raise ConfigError(f"config key '{where}/{e.key}': {e}. Fix it in the config file.") from None


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
    return {**config["train"], **method_entry(config, run).get("train", {})}


def run_spec(config: dict, r: Run) -> dict:
    """Everything that determines a run's result (used to name and invalidate it): the hyper-parameters are
    the method's defaults overlaid with the config's, so changing a default in the code reruns the run."""
    from .methods.registry import method_class
    entry = method_entry(config, r.run)
    method = entry["method"]
    hparams = {**method_class(method).defaults, **entry.get("hparams", {})}
    return {"dataset": config["datasets"][r.dataset], "backbone": config["backbones"][r.backbone],
            "method": method, "hparams": hparams,
            "train": run_train_settings(config, r.run), "seed": r.seed}


# --- sensitivity sweeps ------------------------------------------------------------------------------------
#: separates the base entry from the point in a sweep run's name: ``gems~rank-64``, ``gems~gate-fixed0.25``
SWEEP_SEPARATOR = "~"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
#: a dataset, backbone or methods entry name (the schema's; without anchors, for Snakemake's wildcards)
NAME_PATTERN = schema()["$defs"]["name"]["pattern"].removeprefix("^").removesuffix("$")
#: a run name: a methods entry, or a sweep run ``{base}~{param}-{value}`` whose point is made safe by _UNSAFE
RUN_NAME_PATTERN = rf"{NAME_PATTERN}(?:{SWEEP_SEPARATOR}[A-Za-z0-9._+-]+)?"


@dataclass(frozen=True)
class SweepPoint:
    """One point of the sensitivity grid: the base entry with ``overlay`` laid over its hyper-parameters.

    ``param`` is the grid key (a hyper-parameter of the base entry's method), ``value`` the point's readable
    label (table rows, figure axis, run name), ``run`` the run that measures it: the main-grid run of the base
    entry for the base point (``base`` True, empty overlay), else ``{base}~{param}-{value}``."""
    param: str
    value: str
    overlay: dict
    run: str
    base: bool


def value_label(value) -> str:
    """A hyper-parameter value as a short readable label: 64, 0.005, 2, fixed, true, 0.4,0.4,0.2."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(value_label(v) for v in value)
    return str(value)


def _joined_label(values) -> str:
    """Labels of several values: run together where a word meets a number (fixed0.25), else joined by '_'."""
    out = ""
    for part in map(value_label, values):
        glue = "" if not out or (out[-1].isalpha() and part[:1].isdigit()) else "_"
        out += glue + part
    return out


def _plain(value):
    """Tuples as lists, so hyper-parameters from code and from YAML compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_number(label: str) -> bool:
    if "_" in label:  # float() reads 64_32 as 6432
        return False
    try:
        float(label)
    except ValueError:
        return False
    return True


def sensitivity_seeds(config: dict) -> list[int]:
    """Seeds of the sweep runs: ``sensitivity.seeds``, by default the first of ``seeds``."""
    return list(config.get("sensitivity", {}).get("seeds") or config["seeds"][:1])


def sweep_points(config: dict) -> list[SweepPoint]:
    """Every point of the sensitivity grid, grid key by grid key: the base entry's own setting (the main-grid
    run) and each listed value, numeric values in ascending order, others in the config's order after the base.
    (Snakemake's steps read the resolved config, whose grid keys are sorted: the table lists them so.)

    A listed value is either a scalar for the grid key's hyper-parameter or a mapping of several
    hyper-parameters (optionally with a ``label``). A point whose hyper-parameters equal the base entry's is the
    base point (no new run), repeated points count once. Raises ConfigError for a grid key or mapping key that
    is not a hyper-parameter of the base entry's method, and for two points that would share a run name.
    """
    section = config.get("sensitivity") or {}
    grid = section.get("grid") or {}
    if not grid:
        return []
    base = section.get("base", "gems")
    if base not in config["methods"]:
        raise ConfigError(f"config key 'sensitivity/base': {base!r} is not an entry of `methods`; "
                          f"known: {sorted(config['methods'])}")
    from .methods.registry import method_class
    entry = config["methods"][base]
    defaults = method_class(entry["method"]).defaults
    base_hparams = _plain({**defaults, **entry.get("hparams", {})})
    known = sorted(defaults)

    def check(key: str, where: str) -> None:
        if key not in defaults:
            raise ConfigError(f"config key {where!r}: {key!r} is not a hyper-parameter of method "
                              f"{entry['method']!r} (sensitivity base {base!r}); known: {known}")

    points: list[SweepPoint] = []
    names: dict[str, dict] = {}
    for param, values in grid.items():
        check(param, f"sensitivity/grid/{param}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"config key 'sensitivity/grid/{param}': a non-empty list of values")
        own = [SweepPoint(param, value_label(base_hparams[param]), {}, base, True)]
        for i, value in enumerate(values):
            if isinstance(value, dict):
                overlay = {k: v for k, v in value.items() if k != "label"}
                if not overlay:
                    raise ConfigError(f"config key 'sensitivity/grid/{param}/{i}': names no hyper-parameter")
                for key in overlay:
                    check(key, f"sensitivity/grid/{param}/{i}/{key}")
                # the grid key's own value first, then the others by name: the resolved config the steps read
                # has its mappings' keys sorted, and the label names the run
                keys = sorted(overlay, key=lambda k: (k != param, k))
                label = str(value.get("label") or _joined_label(overlay[k] for k in keys))
            else:
                overlay, label = {param: value}, value_label(value)
            overlay = _plain(overlay)
            _check_hparams(entry["method"], {**entry.get("hparams", {}), **overlay},
                           f"sensitivity/grid/{param}/{i}")
            if all(base_hparams[k] == v for k, v in overlay.items()) or any(p.overlay == overlay for p in own):
                continue  # the base entry's own setting (its main-grid run), or a repeated point
            run = f"{base}{SWEEP_SEPARATOR}{param}-{_UNSAFE.sub('_', label)}"
            if run in names or run in config["methods"]:
                raise ConfigError(f"config key 'sensitivity/grid/{param}/{i}': run name {run!r} is taken (by "
                                  f"{'a methods entry' if run in config['methods'] else names[run]}); give the "
                                  "point a distinct `label`")
            names[run] = overlay
            own.append(SweepPoint(param, label, overlay, run, False))
        if all(_is_number(p.value) for p in own):
            own.sort(key=lambda p: float(p.value))
        points += own
    return points


def sweep_entries(config: dict) -> dict[str, dict]:
    """Sweep run name -> its method entry: the base entry with the point's hyper-parameters overlaid."""
    points = sweep_points(config)
    if not points:
        return {}
    base = next(p.run for p in points if p.base)
    entry = config["methods"][base]
    out = {}
    for point in points:
        if point.base:
            continue
        out[point.run] = {**entry, "hparams": {**entry.get("hparams", {}), **point.overlay},
                          "label": f"{entry.get('label', base)} ({point.param} {point.value})"}
    return out


def method_entry(config: dict, run: str) -> dict:
    """The method entry of a run name: a ``methods`` entry (the main grid), or a sensitivity sweep run's
    (``{base}~{param}-{value}``: the base entry with the point's hyper-parameters). The one place a run name
    is resolved; a main-grid run gets its entry itself, unchanged."""
    if run in config["methods"]:
        return config["methods"][run]
    sweeps = sweep_entries(config)
    if run not in sweeps:
        raise ConfigError(f"run {run!r} is neither an entry of the config's `methods` ({sorted(config['methods'])}) "
                          f"nor a sensitivity sweep run ({sorted(sweeps)})")
    return sweeps[run]


def run_knowledge_space(config: Mapping, run: str) -> "KnowledgeSpace | None":
    """The knowledge space a config's run needs before training, or None when its method uses no null space
    (methods say so with a ``needs_knowledge_space`` class attribute; gemsbench.knowledge.KnowledgeSpace). The
    DAG's train rule uses it."""
    from .methods.registry import build_method

    entry = method_entry(config, run)
    method = build_method(entry["method"], entry.get("hparams", {}))
    return method.knowledge_space() if getattr(method, "needs_knowledge_space", False) else None


def sweep_runs(config: dict) -> list[Run]:
    """The sensitivity sweep's extra runs (not in :func:`runs`): every dataset x its backbones x every
    non-base point x ``sensitivity_seeds``."""
    extra = [p.run for p in sweep_points(config) if not p.base]
    return [Run(ds, bb, run, seed) for ds in config["datasets"] for bb in dataset_backbones(config, ds)
            for run in extra for seed in sensitivity_seeds(config)]


def sensitivity_runs(config: dict) -> list[Run]:
    """Every run the sensitivity table reads: the base entry's main-grid runs for the sweep seeds, then the
    sweep runs; empty without a grid."""
    points = sweep_points(config)
    if not points:
        return []
    base = next(p.run for p in points if p.base)
    return [Run(ds, bb, base, seed) for ds in config["datasets"] for bb in dataset_backbones(config, ds)
            for seed in sensitivity_seeds(config)] + sweep_runs(config)
