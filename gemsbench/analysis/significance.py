"""The significance table: paired tests of the reference run (config ``tables.reference``, default gems) against
every other run, one CSV row per (dataset, backbone, protocol, task, metric, baseline run) with the mean
difference, the relative improvement, the paired t-test and Wilcoxon signed-rank p-values, raw and Holm-adjusted
(``significance.csv``; the main table's † / ‡ markers).

What is tested, and why this way:

* **Unit of observation**: one test example, identified by ``(example_id, task)``. Every method ranks the same
  examples against the same stored candidates, so per-example metric values are paired across methods.
* **Seeds**: a run's per-example values are first averaged over its seeds, example by example; the test then
  compares these seed-averaged values. This keeps the examples as the (only) source of sampling variation and
  still uses every seed; each run must have been evaluated on the same examples under every seed.
* **Tests**: the two-sided paired t-test (``scipy.stats.ttest_rel``, reference − baseline) and the Wilcoxon
  signed-rank test (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: zero differences — both methods equally
  good on an example, very common for HR/NDCG — are dropped before ranking, scipy's default and what IR toolkits
  use; scipy picks the exact or the tie-corrected normal distribution). When every difference is zero both
  tests report p = 1 (no evidence of a difference) instead of scipy's undefined statistic.
* **Family for the Holm correction**: all (baseline, metric) pairs of one (dataset, backbone, protocol, task)
  block — exactly the cells of one task's half of one main table. Each test's p-values are corrected separately.
* **Effect**: mean difference (reference − baseline) and relative improvement (mean difference / baseline mean,
  as a fraction; NaN when the baseline mean is 0).

Markers in the tables come from the Holm-adjusted t-test: ``†`` the reference is significantly better than this
baseline, ``‡`` significantly worse (p < alpha). The Wilcoxon p-values are in the CSV for readers who prefer a
test without the normality assumption.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .table import Table
from .render import write_csv

log = logging.getLogger(__name__)

#: columns that locate one block of the main table; the Holm family is one block and one task
BLOCK = ["dataset", "backbone", "protocol"]
FAMILY = BLOCK + ["task"]
PAIR = ["example_id", "task"]
BETTER, WORSE = "†", "‡"

COLUMNS = [*FAMILY, "metric", "reference", "run", "n_pairs", "seeds_reference", "seeds_run", "mean_reference",
           "mean_run", "mean_diff", "rel_improvement", "t_stat", "t_p", "t_p_holm", "wilcoxon_stat", "wilcoxon_p",
           "wilcoxon_p_holm", "family_size", "alpha", "marker"]


class PairingError(ValueError):
    """Two runs (or two seeds of one run) were not evaluated on the same examples."""


def load_rows(rows_paths: list[Path]) -> pd.DataFrame:
    """Per-example rows of many runs, tagged with dataset, backbone, run and seed.

    The tags come from the evaluation summary written beside each rows file (``{split}_rows.parquet`` ->
    ``{split}_summary.json``) rather than from the directory layout, so the files can live anywhere.
    """
    frames = []
    for path in map(Path, rows_paths):
        if not path.name.endswith("_rows.parquet"):
            raise ValueError(f"{path} is not a per-example rows file ({{split}}_rows.parquet from evaluate)")
        summary_path = path.with_name(path.name.removesuffix("_rows.parquet") + "_summary.json")
        if not summary_path.exists():
            raise FileNotFoundError(f"{summary_path} is missing: it names the run of {path}; re-run evaluate")
        s = json.loads(summary_path.read_text())
        df = pd.read_parquet(path)
        frames.append(df.assign(dataset=s["dataset"], backbone=s["backbone"], run=s["run"], seed=s["seed"]))
    if not frames:
        raise ValueError("no per-example rows given")
    return pd.concat(frames, ignore_index=True)


def seed_means(rows: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per-example metric values averaged over each run's seeds, with the number of seeds averaged.

    Raises PairingError when an example is duplicated within a seed or missing from some seeds of a run: averaging
    over unequal example sets would silently mix different test sets.
    """
    missing = [m for m in metrics if m not in rows.columns]
    if missing:
        raise KeyError(f"metric(s) {missing} are not in the per-example rows; available: "
                       f"{[c for c in rows.columns if '@' in c]}")
    rows = rows.astype({m: "float64" for m in metrics})
    run_keys = [*BLOCK, "run"]
    dup = rows.duplicated([*run_keys, "seed", *PAIR])
    if dup.any():
        first = rows[dup].iloc[0]
        raise PairingError(f"run {first['run']!r} seed {first['seed']} has example {first['example_id']} "
                           f"({first['task']}, {first['protocol']}) more than once; its rows file is corrupt")
    seeds_per_run = rows.groupby(run_keys)["seed"].nunique().rename("seeds")
    grouped = rows.groupby([*run_keys, *PAIR], sort=True)
    out = grouped[metrics].mean().join(grouped["seed"].nunique().rename("n_seeds"))
    out = out.join(seeds_per_run, on=run_keys)
    partial = out[out["n_seeds"] != out["seeds"]]
    if len(partial):
        key = partial.index[0]
        raise PairingError(f"run {key[3]!r} ({'/'.join(map(str, key[:3]))}): {len(partial)} examples are missing "
                           f"from some of its {int(partial['seeds'].iloc[0])} seeds (e.g. example {key[4]}, {key[5]}); "
                           "every seed must be evaluated on the same split of the same prepared data")
    return out.drop(columns="n_seeds").reset_index()


def paired_tests(reference: np.ndarray, other: np.ndarray) -> dict:
    """Two-sided paired t-test and Wilcoxon signed-rank test of ``reference`` against ``other``."""
    reference, other = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    if len(reference) < 2:
        raise ValueError(f"a paired test needs at least 2 paired examples, got {len(reference)}")
    if np.all(reference == other):
        return {"t_stat": 0.0, "t_p": 1.0, "wilcoxon_stat": 0.0, "wilcoxon_p": 1.0}
    t = stats.ttest_rel(reference, other)
    w = stats.wilcoxon(reference, other, zero_method="wilcox")
    return {"t_stat": float(t.statistic), "t_p": float(t.pvalue),
            "wilcoxon_stat": float(w.statistic), "wilcoxon_p": float(w.pvalue)}


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values: sort ascending, multiply the i-th smallest (0-based) by m − i, take the
    running maximum so the order is kept, cap at 1."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def marker(mean_diff: float, p_adjusted: float, alpha: float) -> str:
    """``†`` reference significantly better, ``‡`` significantly worse, ``""`` otherwise."""
    if not p_adjusted < alpha:
        return ""
    return BETTER if mean_diff > 0 else WORSE if mean_diff < 0 else ""


def significance_table(rows: pd.DataFrame, reference: str, metrics: list[str], alpha: float = 0.05) -> pd.DataFrame:
    """One row per (dataset, backbone, protocol, task, metric, baseline run): effects, raw and Holm p-values."""
    if reference not in set(rows["run"]):
        raise ValueError(f"reference run {reference!r} has no per-example rows; runs present: "
                         f"{sorted(set(rows['run']))}")
    means = seed_means(rows, metrics)
    records = []
    for key, block in means.groupby(FAMILY, sort=False):
        ref = block[block["run"] == reference].set_index("example_id")
        if ref.empty:
            raise PairingError(f"reference run {reference!r} has no rows in {'/'.join(map(str, key))}")
        family = []
        for run, other in block[block["run"] != reference].groupby("run", sort=False):
            other = other.set_index("example_id")
            _check_same_examples(ref.index, other.index, reference, run, key)
            other = other.loc[ref.index]
            for m in metrics:
                a, b = ref[m].to_numpy(), other[m].to_numpy()
                mean_a, mean_b = float(a.mean()), float(b.mean())
                family.append({**dict(zip(FAMILY, key)), "metric": m, "reference": reference, "run": run,
                               "n_pairs": len(a), "seeds_reference": int(ref["seeds"].iloc[0]),
                               "seeds_run": int(other["seeds"].iloc[0]), "mean_reference": mean_a,
                               "mean_run": mean_b, "mean_diff": mean_a - mean_b,
                               "rel_improvement": (mean_a - mean_b) / mean_b if mean_b != 0 else float("nan"),
                               **paired_tests(a, b)})
        if not family:
            continue
        for test in ("t", "wilcoxon"):
            for rec, p in zip(family, holm([r[f"{test}_p"] for r in family])):
                rec[f"{test}_p_holm"] = float(p)
        for rec in family:
            rec.update(family_size=len(family), alpha=alpha, marker=marker(rec["mean_diff"], rec["t_p_holm"], alpha))
        records.extend(family)
    return pd.DataFrame(records, columns=COLUMNS)


def _check_same_examples(ref_ids: pd.Index, other_ids: pd.Index, reference: str, run: str, key: tuple) -> None:
    only_ref, only_other = ref_ids.difference(other_ids), other_ids.difference(ref_ids)
    if len(only_ref) or len(only_other):
        where = "/".join(map(str, key))
        raise PairingError(
            f"cannot pair {run!r} with {reference!r} on {where}: {len(only_ref)} examples only in {reference!r} "
            f"(e.g. {list(only_ref[:3])}), {len(only_other)} only in {run!r} (e.g. {list(only_other[:3])}). "
            "Both runs must be evaluated on the same split of the same prepared data.")


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    """``significance.csv`` of ``tables.reference`` against every other run; an empty table (no markers) when
    the config has no such run (a baseline-only sweep is legitimate)."""
    settings = config["tables"]
    reference = settings["reference"]
    if reference not in config["methods"]:
        log.warning("reference run %r is not in this config's methods %s: no significance tests; set "
                    "tables.reference to one of them to get markers", reference, sorted(config["methods"]))
        table = pd.DataFrame(columns=COLUMNS)
    else:
        table = significance_table(load_rows(inputs["rows"]), reference, settings["metrics"], settings["alpha"])
        marked = table[table["marker"] != ""]
        log.info("%d comparisons of %r, %d significant after Holm (t-test, alpha %g)", len(table), reference,
                 len(marked), settings["alpha"])
    write_csv(table, out / "significance.csv")
    return f"significance: {out / 'significance.csv'}"


TABLE = Table(name="significance", inputs={"rows": "rows"}, outputs=("significance.csv",), make=make,
              config_keys=("tables",), optional=frozenset({"rows"}), report="significance.csv")
