"""Paper figures, drawn only from the saved CSV tables so that `snakemake figures` redraws them without retraining.

Every figure is 3.3 in wide (one paper column) with 8–9 pt text, and is written as PDF (TrueType fonts,
no creation date, so an unchanged figure gives an unchanged file) and 300-dpi PNG. Each method has one colour in
every figure (:data:`METHOD_COLOURS`, the one place to change it).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .atomic import atomic_write

COLUMN_WIDTH_IN = 3.3
PNG_DPI = 300
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "axes.linewidth": 0.6, "lines.linewidth": 1.0, "xtick.major.width": 0.6,
    "ytick.major.width": 0.6, "axes.spines.top": False, "axes.spines.right": False, "pdf.fonttype": 42,
    "ps.fonttype": 42,
}

#: colour per method, keyed by the run name used in the configs (config/*.yaml `methods`; for a plain run it is the
#: registered method's name, variants such as dora/pissa or the GEMS ablations have their own). Okabe–Ito based;
#: GEMS in vermillion and its ablations in the same hue, popularity in grey as the non-learned floor.
METHOD_COLOURS = {
    "gems": "#D55E00",
    "gems_no_msd": "#F4A582",
    "gems_no_nsp": "#B2182B",
    "full_ft": "#0072B2",
    "lora": "#56B4E9",
    "dora": "#6A51A3",
    "pissa": "#9E9AC8",
    "galore": "#E69F00",
    "moe_lora": "#009E73",
    "hydra_lora": "#7FC97F",
    "pcgrad_full": "#CC79A7",
    "pcgrad_lora": "#E7A6CF",
    "sasrec": "#8C564B",
    "search_encoder": "#C49C94",
    "joint_encoder": "#4D2D18",
    "popularity": "#999999",
}
#: for runs not listed above: chosen by a hash of the name, so the same run gets the same colour everywhere
FALLBACK_COLOURS = ["#332288", "#44AA99", "#882255", "#AA4499", "#117733", "#6699CC", "#661100", "#DDCC77"]
TASK_COLOURS = {"search": "#332288", "rec": "#117733"}
TASK_LABEL = {"search": "Search", "rec": "Recommendation"}
TASK_ORDER = ("search", "rec")
#: conflict curves with at least this many logged steps are drawn with a moving average over the raw values
SMOOTH_FROM = 40


def method_colour(name: str) -> str:
    """The colour of the method (run name) ``name`` in every figure; stable across processes (no salted hash)."""
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    index = int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(FALLBACK_COLOURS)
    return FALLBACK_COLOURS[index]


def metric_label(metric: str) -> str:
    return metric.upper()


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.pdf and ``stem``.png atomically (temporary sibling, then rename)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, extra in (("pdf", {"metadata": {"CreationDate": None}}), ("png", {"dpi": PNG_DPI})):
        final = stem.with_name(f"{stem.name}.{ext}")
        atomic_write(final, lambda tmp: fig.savefig(tmp, format=ext, **extra))
        paths.append(final)
    return paths


def _figure(height_in: float) -> Figure:
    return Figure(figsize=(COLUMN_WIDTH_IN, height_in), layout="constrained")


def _runs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(run, label) in order of first appearance."""
    return list(dict.fromkeys(zip(df["run"], df["label"])))


def _legend(fig: Figure, runs, kind: str = "patch") -> None:
    """A legend above the axes with as many columns (at most 4) as fit in the figure's width (method labels come
    from the config and can be long; a clipped legend is unreadable); the figure grows by the legend's height so
    the axes keep theirs."""
    handles = [Patch(color=method_colour(run)) if kind == "patch" else Line2D([], [], color=method_colour(run))
               for run, _ in runs]
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ncol in range(min(4, len(runs)), 0, -1):
        legend = fig.legend(handles, [label for _, label in runs], loc="outside upper center", ncol=ncol,
                            frameon=False, handlelength=1.2, columnspacing=1.0)
        box = legend.get_window_extent(renderer)
        if ncol == 1 or box.width <= fig.bbox.width:
            fig.set_figheight(fig.get_figheight() + box.height / fig.dpi)
            return
        legend.remove()


def main_results_figure(summary: pd.DataFrame, stem: Path, metric: str = "ndcg@10", title: str = "") -> list[Path]:
    """Bars of ``metric`` per method, grouped by task, error bars ±1 std over seeds (rows of main.csv for one
    dataset, backbone and protocol)."""
    sub = summary[summary["metric"] == metric]
    if sub.empty:
        raise ValueError(f"metric {metric!r} is not in the table; available: {sorted(set(summary['metric']))}")
    runs = _runs(sub)
    tasks = [t for t in TASK_ORDER if t in set(sub["task"])]
    width = 0.8 / len(runs)
    with matplotlib.rc_context(STYLE):
        fig = _figure(1.5)
        ax = fig.add_subplot()
        for i, (run, _) in enumerate(runs):
            r = sub[sub["run"] == run].set_index("task").reindex(tasks)
            err = r["std"].where(r["seeds"] > 1).fillna(0.0).to_numpy()
            ax.bar(np.arange(len(tasks)) + (i - (len(runs) - 1) / 2) * width, r["mean"].to_numpy(), width,
                   yerr=err, color=method_colour(run), error_kw={"elinewidth": 0.6, "capsize": 1.5})
        ax.set_xticks(np.arange(len(tasks)), [TASK_LABEL[t] for t in tasks])
        ax.set_ylabel(metric_label(metric))
        if title:
            ax.set_title(title, fontsize=8)
        _legend(fig, runs)
        return save(fig, stem)


def efficiency_figure(summary: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Seconds per step and peak memory per method, ±1 std over seeds (rows of efficiency.csv for one dataset
    and backbone); methods without a training loop (no such quantities) are left out."""
    panels = [("seconds_per_step", "Time per step (s)", 1.0), ("peak_memory_bytes", "Peak memory (GiB)", 2.0 ** -30)]
    sub = summary[summary["quantity"].isin([q for q, _, _ in panels])]
    if sub.empty:
        raise ValueError("no seconds_per_step or peak_memory_bytes in the efficiency table: no run was trained")
    runs = _runs(sub)
    y = np.arange(len(runs))[::-1]
    with matplotlib.rc_context(STYLE):
        fig = _figure(0.7 + 0.2 * len(runs))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (quantity, xlabel, factor) in zip(axes, panels):
            for yi, (run, _) in zip(y, runs):
                r = sub[(sub["run"] == run) & (sub["quantity"] == quantity)]
                if r.empty:
                    continue
                err = float(r["std"].iloc[0]) * factor if int(r["seeds"].iloc[0]) > 1 else 0.0
                ax.barh(yi, float(r["mean"].iloc[0]) * factor, 0.7, xerr=err, color=method_colour(run),
                        error_kw={"elinewidth": 0.6, "capsize": 1.5})
            ax.set_xlabel(xlabel)
        axes[0].set_yticks(y, [label for _, label in runs])
        if title:
            fig.suptitle(title, fontsize=8)
        return save(fig, stem)


def conflict_figure(per_step: pd.DataFrame, per_run: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Cosine of the search and recommendation gradients over training (mean over seeds at each logged step)
    and the share of logged steps with a negative cosine (conflict), ±1 std over seeds."""
    logged = per_run[per_run["steps_logged"] > 0]
    with matplotlib.rc_context(STYLE):
        if logged.empty:
            fig = _figure(1.0)
            ax = fig.add_subplot()
            ax.axis("off")
            ax.text(0.5, 0.5, "no gradient cosines logged\n(set train.conflict_every > 0)", ha="center",
                    va="center", transform=ax.transAxes)
            return save(fig, stem)
        runs = _runs(logged)
        fig = _figure(1.6)
        curve_ax, bar_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
        curve_ax.axhline(0.0, color="0.5", lw=0.6, ls="--")
        for i, (run, _) in enumerate(runs):
            curve = per_step[per_step["run"] == run].groupby("step")["cos_rec_search"].mean()
            colour = method_colour(run)
            if len(curve) < SMOOTH_FROM:
                curve_ax.plot(curve.index, curve.to_numpy(), color=colour, marker="o", markersize=2)
            else:  # per-step cosines are noisy: faint raw curve under a moving average over 5 % of the steps
                curve_ax.plot(curve.index, curve.to_numpy(), color=colour, lw=0.4, alpha=0.3)
                smooth = curve.rolling(max(2, len(curve) // 20), center=True, min_periods=1).mean()
                curve_ax.plot(smooth.index, smooth.to_numpy(), color=colour)
            r = logged[logged["run"] == run].iloc[0]
            bar_ax.bar(i, 100 * r["negative_fraction"], 0.7, yerr=100 * r["negative_fraction_std"],
                       color=method_colour(run), error_kw={"elinewidth": 0.6, "capsize": 1.5})
        curve_ax.set_xlabel("Training step")
        curve_ax.set_ylabel("cos(∇search, ∇rec)")
        bar_ax.set_xticks([])
        bar_ax.set_ylabel("Steps with cos < 0 (%)")
        bar_ax.set_ylim(0, 100)
        if title:
            curve_ax.set_title(title, fontsize=8, loc="left")
        _legend(fig, runs, kind="line")
        return save(fig, stem)


#: which targeted layer types form the attention and the MLP panel of the per-layer conflict figure
ATTENTION_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "q", "k", "v", "o")


def conflict_layers_figure(layers: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Search/rec gradient cosine per block, averaged over the logged steps, the seeds and the targeted matrices
    of the block (attention panel: q/k/v/o; MLP panel: the rest), one line per method. ``layers`` is
    conflict_layers.csv (analysis.conflict.collect_layer_conflict)."""
    with matplotlib.rc_context(STYLE):
        if layers.empty or layers["depth"].isna().all():
            fig = _figure(1.0)
            ax = fig.add_subplot()
            ax.axis("off")
            ax.text(0.5, 0.5, "no per-layer gradient cosines logged\n(set train.conflict_every > 0)",
                    ha="center", va="center", transform=ax.transAxes)
            return save(fig, stem)
        layers = layers.assign(part=layers["layer_type"].map(lambda t: "Attention" if t in ATTENTION_TYPES
                                                             else "MLP"))
        runs = _runs(layers)
        fig = _figure(1.7)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, part in zip(axes, ("Attention", "MLP")):
            ax.axhline(0.0, color="0.5", lw=0.6, ls="--")
            sub = layers[layers["part"] == part]
            for run, _ in runs:
                curve = sub[sub["run"] == run].groupby("depth")["mean_cosine"].mean()
                if not curve.empty:
                    ax.plot(curve.index, curve.to_numpy(), color=method_colour(run), marker="o", markersize=1.5)
            ax.set_xlabel("Block (depth)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            # the dataset line above the first panel only; the panel names share the second line
            first = ax is axes[0]
            ax.set_title(f"{title if first else ''}\n{part}" if title else part, fontsize=7, loc="left")
        axes[0].set_ylabel("Mean cos(∇search, ∇rec)")
        _legend(fig, runs, kind="line")
        return save(fig, stem)


#: hyper-parameters drawn on a logarithmic (base-2) axis whatever their span: sizes and intervals that a sweep
#: doubles and halves
LOG2_PARAMS = ("rank", "task_rank", "update_gap")


def sensitivity_figure(df: pd.DataFrame, stem: Path, title: str = "", base_band: pd.DataFrame | None = None
                       ) -> list[Path]:
    """Metric against a hyper-parameter's value, one line per task with a ±1 std band over the sweep seeds.

    ``df`` has columns param, value, task, metric, mean, std (and ``base``, True on the base entry's own point);
    one panel per (param, metric). The base point is drawn as an open marker on a dotted vertical line, so a
    reader sees where each curve leaves the published setting. ``base_band`` (task, metric, mean, std, seeds:
    the base run's rows of the main table) adds its seed-to-seed spread over the main grid's seeds as a
    horizontal band (mean ± std, with two seeds or more): a move within it is no more than seed noise.

    Rank, task rank and update gap are drawn on a base-2 logarithmic axis; other numeric values on a numeric
    axis (logarithmic when positive and spanning two decades or more); other values (e.g. "input" / "output")
    as evenly spaced categories in table order. Panels of one metric share their y-range.
    """
    missing = {"param", "value", "task", "metric", "mean", "std"} - set(df.columns)
    if missing:
        raise ValueError(f"sensitivity table lacks columns {sorted(missing)}")
    panels = list(dict.fromkeys(zip(df["param"], df["metric"])))
    tasks = [t for t in TASK_ORDER if t in set(df["task"])] + sorted(set(df["task"]) - set(TASK_ORDER))
    band = _band_rows(base_band, tasks)
    ylims = _shared_ylims(df, band)
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    with matplotlib.rc_context(STYLE):
        fig = _figure(0.4 + 1.5 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (param, metric) in zip(axes, panels):
            sub = df[(df["param"] == param) & (df["metric"] == metric)]
            values = pd.to_numeric(sub["value"], errors="coerce")
            categorical = values.isna().any()
            if categorical:
                order = list(dict.fromkeys(sub["value"].astype(str)))
                x_of = {v: i for i, v in enumerate(order)}
                ax.set_xticks(range(len(order)), order, rotation=30, ha="right")  # labels such as fixed0.25
            for task in tasks:
                t = sub[sub["task"] == task].copy()
                if t.empty:
                    continue
                t["x"] = t["value"].astype(str).map(x_of) if categorical else pd.to_numeric(t["value"])
                t = t.sort_values("x")
                colour = TASK_COLOURS.get(task, method_colour(task))
                if (task, metric) in band:
                    mean, std = band[(task, metric)]
                    ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12, lw=0)
                ax.plot(t["x"], t["mean"], color=colour, marker="o", markersize=2.5, label=TASK_LABEL.get(task, task))
                ax.fill_between(t["x"], t["mean"] - t["std"], t["mean"] + t["std"], color=colour, alpha=0.2, lw=0)
                if "base" in t:
                    at_base = t[t["base"].astype(str) == "True"]
                    ax.plot(at_base["x"], at_base["mean"], ls="none", marker="o", markersize=5, mfc="white",
                            mec=colour, mew=0.8, zorder=3)
            if "base" in sub:
                for x in dict.fromkeys(sub.loc[sub["base"].astype(str) == "True", "value"].astype(str)):
                    ax.axvline(x_of[x] if categorical else float(x), color="0.5", lw=0.6, ls=":")
            if not categorical and (values > 0).all():
                if str(param) in LOG2_PARAMS:
                    ax.set_xscale("log", base=2)
                    ax.set_xticks(sorted(set(values)), [f"{v:g}" for v in sorted(set(values))])
                    ax.minorticks_off()
                elif values.max() / values.min() >= 100:
                    ax.set_xscale("log")
            ax.set_ylim(*ylims[metric])
            ax.set_xlabel(str(param))
            ax.set_ylabel(metric_label(str(metric)))
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        handles.append(Line2D([], [], ls=":", color="0.5", marker="o", markersize=5, mfc="white", mec="0.5"))
        labels.append("base value")
        if band:
            handles.append(Patch(color="0.5", alpha=0.25, lw=0))
            labels.append(f"base ±1 std, {_band_seeds(base_band)} seeds")
        # the title heads the legend: a suptitle and an outside legend would share the top edge
        fig.legend(handles, labels, loc="outside upper center", ncol=2, frameon=False, title=title or None,
                   title_fontsize=8, handlelength=1.6, columnspacing=1.0)
        return save(fig, stem)


def _band_rows(base_band: pd.DataFrame | None, tasks: list[str]) -> dict[tuple[str, str], tuple[float, float]]:
    """(task, metric) -> (mean, std) of the base run over the main grid's seeds; only with two seeds or more."""
    if base_band is None or base_band.empty:
        return {}
    out = {}
    for _, r in base_band.iterrows():
        if r["task"] in tasks and int(r["seeds"]) > 1:
            out[(r["task"], r["metric"])] = (float(r["mean"]), float(r["std"]))
    return out


def _band_seeds(base_band: pd.DataFrame) -> int:
    return int(base_band["seeds"].max())


def _shared_ylims(df: pd.DataFrame, band: dict) -> dict[str, tuple[float, float]]:
    """One y-range per metric covering every panel's curves, std bands and the base band, with a 5 % margin."""
    out = {}
    for metric, sub in df.groupby("metric", sort=False):
        low = (sub["mean"] - sub["std"]).min()
        high = (sub["mean"] + sub["std"]).max()
        for (_, m), (mean, std) in band.items():
            if m == metric:
                low, high = min(low, mean - std), max(high, mean + std)
        pad = 0.05 * (high - low) if high > low else max(abs(high), 1e-3) * 0.05
        out[metric] = (float(low - pad), float(high + pad))
    return out


def retention_figure(summary: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Retention of general knowledge per method (rows of retention.csv for one dataset and backbone): the
    perplexity on held-out Wikipedia articles after fine-tuning relative to the pre-trained backbone's (a ratio
    on a logarithmic axis: the changes span from a few percent to a thousandfold, and a linear axis would
    flatten every small one to an invisible bar), and the change of the factual cloze accuracy, ±1 std over
    seeds; the line at 1× / 0 is the backbone itself."""
    missing = {"run", "label", "seeds", "ppl_rel_change_mean", "ppl_rel_change_std", "cloze_change_mean",
               "cloze_change_std"} - set(summary.columns)
    if missing:
        raise ValueError(f"retention table lacks columns {sorted(missing)}; make it with aggregate --table retention")
    runs = _runs(summary)
    y = np.arange(len(runs))[::-1]
    with matplotlib.rc_context(STYLE):
        fig = _figure(1.0 + 0.2 * len(runs))  # two-line axis labels
        ppl_ax, cloze_ax = fig.subplots(1, 2, sharey=True)
        ppl_ax.axvline(1.0, color="0.5", lw=0.6, ls="--")
        cloze_ax.axvline(0.0, color="0.5", lw=0.6, ls="--")
        ratios = []
        for yi, (run, _) in zip(y, runs):
            r = summary[summary["run"] == run].iloc[0]
            several = int(r["seeds"]) > 1
            ratio = 1.0 + float(r["ppl_rel_change_mean"])  # after / before
            ratios.append(ratio)
            err = float(r["ppl_rel_change_std"]) if several else 0.0
            # a bar from the backbone's 1x to the run's ratio; its error bar clipped to positive ratios
            ppl_ax.barh(yi, ratio - 1.0, 0.7, left=1.0, color=method_colour(run))
            if err:
                ppl_ax.errorbar(ratio, yi, xerr=[[min(err, ratio * 0.99)], [err]], color="0.2", elinewidth=0.6,
                                capsize=1.5)
            cerr = 100 * float(r["cloze_change_std"]) if several else 0.0
            cloze_ax.barh(yi, 100 * float(r["cloze_change_mean"]), 0.7, xerr=cerr, color=method_colour(run),
                          error_kw={"elinewidth": 0.6, "capsize": 1.5})
        ppl_ax.set_xscale("log")
        low, high = min(ratios + [1.0]), max(ratios + [1.0])
        lo, hi = low / 1.25, high * 1.25
        ppl_ax.set_xlim(lo, hi)
        decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
        ticks = [10.0 ** d for d in decades if lo <= 10.0 ** d <= hi]
        if len(ticks) < 2:  # all within one decade: the ends and the backbone's 1
            ticks = sorted({round(lo, 2), 1.0, round(hi, 2)})
        ppl_ax.set_xticks(ticks, [_times(t) for t in ticks])
        ppl_ax.minorticks_off()
        ppl_ax.set_xlabel("Perplexity after / before\non held-out text (×, log)")
        cloze_ax.set_xlabel("Cloze accuracy\nchange (pp)")
        ppl_ax.set_yticks(y, [label for _, label in runs])
        if title:
            fig.suptitle(title, fontsize=8)
        return save(fig, stem)


def _times(value: float) -> str:
    """A ratio tick, short enough for a narrow panel: 0.9, 1, 1.1, 10, 10², 10³ (the axis label says ×)."""
    exponent = np.log10(value)
    if value >= 100 and np.isclose(exponent, round(exponent)):
        return f"10$^{{{round(exponent)}}}$"
    return f"{value:.3g}"


def convergence_figure(curves: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Validation metric against training targets, one line per LLM run (mean over seeds at each validation),
    a panel per task (rows of convergence.csv for one dataset and backbone)."""
    if curves.empty:
        raise ValueError("no validations in the convergence table: no LLM run was trained")
    runs = _runs(curves)
    panels = [(f"value_{t}", TASK_LABEL[t]) for t in TASK_ORDER if curves[f"value_{t}"].notna().any()]
    metric = curves["metric"].iloc[0].removeprefix("val_")
    with matplotlib.rc_context(STYLE):
        fig = _figure(1.9)
        axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
        for ax, (column, task) in zip(axes, panels):
            for run, _ in runs:
                mean = curves[curves["run"] == run].groupby("targets", sort=True)[column].mean()
                ax.plot(mean.index / 1000, mean.to_numpy(), color=method_colour(run), marker="o", markersize=1.5)
            ax.set_title(task)
            ax.set_xlabel("Training targets (k)")
        axes[0].set_ylabel(f"Validation {metric_label(metric)}")
        _legend(fig, runs, kind="line")
        if title:
            fig.suptitle(title, fontsize=8)
        return save(fig, stem)
