"""Runs as a table for notebooks: ``iclwl.load_runs(path)`` reads every run directory at or below ``path``.

    import iclwl
    df = iclwl.load_runs("multirun/chan2024_n_cpu")
    df[df.probe == "icl_flip"].groupby(["N", "step"]).acc.mean()

One row per row of each ``metrics.jsonl`` (step, member, probe, acc, loss, ...; ``train`` rows too), with the
member's coordinates (seed, data seed, swept fields), ``run`` (the run directory) and the run's config flattened
into columns (``task.L``, ``optim.lr``, ``model.d_model``, ...). A config column that a member sweeps holds that
member's own value, not the base value of the config file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_gen import DYNAMIC_FIELDS
from iclwl.analysis import ReportError, flatten
from iclwl.records import read_metrics

OPTIM_COORDS = ("lr", "weight_decay")


def load_runs(path: str | Path):
    """A pandas DataFrame of every metrics row of the runs at or below ``path`` (a run, a sweep, a tree)."""
    import pandas as pd

    root = Path(path)
    if not root.exists():
        raise ReportError(f"{root}: no such file or directory; expected a run directory or a directory of runs")
    records: list[dict[str, Any]] = []
    for metrics in sorted(root.rglob("metrics.jsonl")):
        config_path = metrics.parent / "config.json"
        config = flatten(json.loads(config_path.read_text())) if config_path.exists() else {}
        for row in read_metrics(metrics):
            records.append({"run": str(metrics.parent), **config, **_effective(row), **row})
    if not records:
        raise ReportError(f"{root}: holds no run directory (no metrics.jsonl at or below it)")
    return pd.DataFrame.from_records(records)


def _effective(row: dict[str, Any]) -> dict[str, Any]:
    """The config columns a member's coordinates override: its swept task and optimizer values, its data seed."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "data_seed":
            out["task.seed"] = value
        elif key in OPTIM_COORDS:
            out[f"optim.{key}"] = value
        elif key in DYNAMIC_FIELDS:
            out[f"task.{key}"] = value
    return out
