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

from pathlib import Path
from typing import Any

from data_gen import DYNAMIC_FIELDS
from iclwl.record.measures import OPTIM_COORDS
from iclwl.report.analysis import find_runs


def load_runs(path: str | Path):
    """A pandas DataFrame of every metrics row of the runs at or below ``path`` (a run, a sweep, a tree).

    The runs are read as the report reads them (``analysis.find_runs``), with the same checks and errors."""
    import pandas as pd

    records = [
        {"run": str(run.path), **run.config, **_effective(row), **row}
        for run in find_runs(Path(path))
        for row in run.rows
    ]
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
