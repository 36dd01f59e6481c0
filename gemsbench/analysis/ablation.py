"""The ablation table: the main table's rows of GEMS and its ablations, labelled with the components each keeps
(multi-subspace decomposition, null-space projection), in the order full GEMS -> neither component
(``ablation.{csv,md,tex}``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .table import Table
from .render import metric_tables, write_csv

#: method -> (multi-subspace decomposition, null-space projection): GEMS and the ablations the paper reports
ABLATION_COMPONENTS = {"gems": (True, True), "gems_no_nsp": (True, False), "gems_no_msd": (False, True),
                       "galore": (False, False)}

ABLATION_NOTE = ("MSD: multi-subspace decomposition (shared + search + recommendation subspaces with gated "
                 "fusion); NSP: null-space projection. GEMS without both is GaLore (one subspace).")


def ablation_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of a main-table summary (main.seed_summary, with or without markers) that belong to GEMS and its
    ablations, labelled with the components each keeps, in the order full GEMS → neither component."""
    sub = summary[summary["method"].isin(ABLATION_COMPONENTS)].copy()
    if sub.empty:
        raise ValueError(f"no run of {sorted(ABLATION_COMPONENTS)} in the main table: the ablation table needs "
                         "GEMS and its ablations in the config's methods")

    def label(row):
        msd, nsp = ABLATION_COMPONENTS[row["method"]]
        return f"{row['label']} (MSD {'yes' if msd else 'no'}, NSP {'yes' if nsp else 'no'})"

    sub["label"] = sub.apply(label, axis=1)
    order = {m: i for i, m in enumerate(ABLATION_COMPONENTS)}
    sub["_order"] = sub["method"].map(order)
    return sub.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def make(config: dict, inputs: dict[str, list[Path]], out: Path) -> str:
    main = pd.read_csv(inputs["main"][0])
    if "marker" in main:
        main["marker"] = main["marker"].fillna("")
    summary = ablation_summary(main)
    write_csv(summary, out / "ablation.csv")
    metric_tables(config, summary, out / "ablation", "Ablation · ", ABLATION_NOTE)
    return f"ablation table: {out / 'ablation.md'}"


TABLE = Table(name="ablation", inputs={"main": "main/main.csv"}, outputs=("ablation.csv", "ablation.md",
              "ablation.tex"), make=make, config_keys=("evaluate", "tables"), report="ablation.csv")
