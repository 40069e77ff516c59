"""The numbers of a report: runs found under a directory, their coordinates, seed-mean curves and what they say.

A run directory is any directory with a ``metrics.jsonl`` (and the ``config.json`` beside it). Each row carries
its member's coordinates (``seed`` and the swept fields); a Hydra multirun also varies compiled-in fields between
runs (``task.L``), which only the runs' config.json files tell apart. Those fields become coordinates too, under
their dotted names. A *setting* is all coordinates but the seed: the seeds of a setting are averaged.

Definitions (per setting and series; a series is a probe, or a probe's rare/common group):

- seed-mean curve: at each evaluated step, the mean over the seeds evaluated there;
- final: the seeds' values at the last step (mean and population std);
- peak: the maximum of the seed-mean curve, and the first step where it is reached;
- drop: peak minus the final seed mean; *transient* when the drop exceeds a threshold;
- onset: the first step where the seed-mean curve reaches a level (default: halfway from chance to 1); for a
  mechanistic measure (``icl_novel:induction``) the first step it reaches its own level (``iclwl.cli.report``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iclwl.config import INTERVENE_FIELDS, flatten
from iclwl.record.files import read_metrics
from iclwl.record.measures import MECHANISM_SCALARS, ROW_KEY, SEED_COORDS, describe, is_measurement

# Config fields that never make two runs different settings: bookkeeping, or already a row coordinate
# (the sweep lists and seeds reappear per row as each member's own value).
NOT_COORDINATES = (
    "sweep.",
    "train.seeds",
    "train.data_seeds",
    "train.resume",
    "train.chunk_steps",
    "logging.",
    "checkpoint.",
)
GROUPS = ("common", "rare")
FAMILIES = ("shots_", "distance_")  # probe families drawn against k or d (iclwl.report.families), not against step
DEFAULT_PROBES = ("icl_novel", "iwl_no_support")  # the one probe only ICL solves, the one only IWL solves

Setting = tuple[tuple[str, Any], ...]


class ReportError(Exception):
    """Something the report cannot read or was asked for and is absent; the message is one line for the user."""


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]  # flattened: {"task.L": 8, ...}
    rows: list[dict[str, Any]]  # every row of metrics.jsonl, in order

    @property
    def probe_rows(self) -> list[dict[str, Any]]:
        """The rows of the probes ("train" rows carry the training loss, not a probe)."""
        return [r for r in self.rows if r.get("probe") != "train"]


@dataclass(frozen=True)
class Sweep:
    """Every probe row of every run, each with all coordinates; ``coords`` are the coordinates but the seed."""

    rows: list[dict[str, Any]]
    coords: list[str]
    chance: dict[Setting, float]  # 1 / task.n_labels of each setting's runs


@dataclass(frozen=True)
class Curve:
    steps: np.ndarray  # (S,) evaluated steps, increasing
    values: list[np.ndarray]  # S arrays: the seeds' values at each step

    @property
    def mean(self) -> np.ndarray:  # (S,)
        return np.array([v.mean() for v in self.values])


def find_runs(root: Path) -> list[Run]:
    """Every run directory at or below ``root``, in path order."""
    if not root.exists():
        raise ReportError(f"{root}: no such file or directory; expected a run directory or a directory of runs")
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory; expected a run directory or a directory of runs")
    paths = sorted(p.parent for p in root.rglob("metrics.jsonl"))
    if not paths:
        raise ReportError(f"{root}: holds no run directory (no metrics.jsonl at or below it)")
    return [_read_run(p) for p in paths]


def _read_run(path: Path) -> Run:
    config_path = path / "config.json"
    if not config_path.exists():
        raise ReportError(f"{path}: has metrics.jsonl but no config.json; expected both in a run directory")
    rows = read_metrics(path / "metrics.jsonl")
    if not rows:
        raise ReportError(f"{path / 'metrics.jsonl'}: is empty; expected one JSON row per (step, member, probe)")
    if all(r.get("probe") == "train" for r in rows):
        raise ReportError(f"{path / 'metrics.jsonl'}: holds only training rows; expected probe rows")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{config_path}: is not valid JSON ({e.msg}, line {e.lineno}); expected the run's config"
        ) from None
    return Run(path, flatten(config), rows)


def combine(runs: list[Run]) -> Sweep:
    """One table of rows over all runs, each row with every coordinate, and the coordinates found."""
    # a field is a measurement in every row if it is one in any
    # (iclwl.record.measures: numbers that are not coordinates)
    measured = {k for run in runs for r in run.probe_rows for k, v in r.items() if is_measurement(k, v)}
    member_coords = list(dict.fromkeys(k for run in runs for r in run.probe_rows for k in r
                                       if k not in ROW_KEY and k not in measured))  # fmt: skip
    static = _static_coords(runs, member_coords)
    coords = [c for c in member_coords if c not in SEED_COORDS] + static
    rows, chance, owner = [], {}, {}
    for run in runs:
        n_labels = run.config.get("task.n_labels")
        if not isinstance(n_labels, int) or n_labels < 1:
            raise ReportError(f"{run.path / 'config.json'}: task.n_labels = {n_labels}; expected a positive integer")
        fixed = {c: run.config.get(c) for c in static}
        for r in run.probe_rows:
            # a run that did not sweep a field its neighbours swept holds it at its config value
            row = {**{c: _config_value(run.config, c) for c in member_coords}, **r, **fixed}
            rows.append(row)
            setting = _setting(row, coords)
            key = (setting, *(row.get(c) for c in SEED_COORDS))
            if owner.setdefault(key, run.path) != run.path:
                seeds = describe(tuple((c, row[c]) for c in SEED_COORDS if c in row))
                raise ReportError(
                    f"{owner[key]} and {run.path}: both hold {seeds} of "
                    f"{describe(setting)}; expected each seed of a setting once (report them apart)"
                )
            chance[setting] = 1.0 / n_labels
    return Sweep(rows, coords, chance)


def of_run(rows: list[dict[str, Any]], coords: list[str], n_labels: int) -> Sweep:
    """The sweep of one run's rows in memory (``coords``: its members' coordinates, the seed among them)."""
    probe_rows = [r for r in rows if r["probe"] != "train"]
    setting_coords = [c for c in coords if c not in SEED_COORDS]
    chance = {_setting(r, setting_coords): 1.0 / n_labels for r in probe_rows}
    return Sweep(probe_rows, setting_coords, chance)


def _static_coords(runs: list[Run], member_coords: list[str]) -> list[str]:
    """Config fields that differ between runs, less bookkeeping and the base values of swept fields."""
    # task.seed (the class universe) is no member's seed: it stays a candidate
    base = {f"{group}.{c}" for c in member_coords if c not in SEED_COORDS for group in ("task", "optim")}
    base |= {_intervene_path(c) for c in member_coords if c in INTERVENE_FIELDS}
    if "data_seed" in member_coords:  # task.seed is the base of the members' data seeds
        base.add("task.seed")
    names = sorted({k for run in runs for k in run.config})
    return [
        k
        for k in names
        if not k.startswith(NOT_COORDINATES) and k not in base and len({run.config.get(k) for run in runs}) > 1
    ]


def _config_value(config: dict[str, Any], coord: str) -> Any:
    if coord == "data_seed":  # a run without train.data_seeds draws every member's data from task.seed
        return config.get("task.seed")
    if coord in INTERVENE_FIELDS:
        return config.get(_intervene_path(coord))
    return config.get(f"task.{coord}", config.get(f"optim.{coord}"))


def _intervene_path(coord: str) -> str:
    """``intervene_start`` (a member coordinate) -> ``intervene.start`` (its config field)."""
    return "intervene." + coord.removeprefix("intervene_")


def _setting(row: dict[str, Any], coords: list[str]) -> Setting:
    return tuple((c, row[c]) for c in coords)


def probes_of(sweep: Sweep) -> list[str]:
    return list(dict.fromkeys(r["probe"] for r in sweep.rows))


def values_of(sweep: Sweep, coord: str) -> list[Any]:
    """The values a coordinate takes, numbers in increasing order before anything else."""
    return sorted({r[coord] for r in sweep.rows}, key=sort_key)


def sort_key(value: Any) -> tuple:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return (0, float(value), "") if number else (1, 0.0, str(value))


def curves(sweep: Sweep, series: list[str]) -> dict[tuple[Setting, str], Curve]:
    """Seed curves per (setting, series); a series is a probe name (its accuracy), ``probe:rare`` /
    ``probe:common`` for the accuracy on that frequency group (absent where the task has no groups), or
    ``probe:<measure>`` for a mechanistic measure of records.MECHANISM_SCALARS (``icl_novel:induction``; absent
    where the rows lack it)."""
    by_step: dict[tuple[Setting, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    wanted = set(series)
    fields = {**{g: f"acc_{g}" for g in GROUPS}, **{m: m for m in MECHANISM_SCALARS}}
    for r in sweep.rows:
        setting = _setting(r, sweep.coords)
        if r["probe"] in wanted:
            by_step[(setting, r["probe"])][r["step"]].append(r["acc"])
        for suffix, field in fields.items():
            name = f"{r['probe']}:{suffix}"
            if name in wanted and r.get(field) is not None:
                by_step[(setting, name)][r["step"]].append(r[field])
    order = sorted(by_step, key=lambda k: ([sort_key(v) for _, v in k[0]], series.index(k[1])))
    result = {}
    for key in order:
        steps = sorted(by_step[key])
        values = [np.asarray(by_step[key][s], dtype=float) for s in steps]
        result[key] = Curve(np.array(steps), values)
    return result


def onset_level(chance: float, level: float | None) -> float:
    """The level whose first crossing is the onset: ``level`` if given, else halfway from chance to 1."""
    return level if level is not None else chance + (1.0 - chance) / 2


def summary_row(curve: Curve, chance: float, drop_threshold: float, level: float | None) -> dict[str, Any]:
    """final, peak, drop, transient flag and onset of one curve (see the module docstring)."""
    mean = curve.mean
    final = curve.values[-1]
    peak_at = int(np.argmax(mean))  # the first maximum
    drop = float(mean[peak_at] - mean[-1])
    onset_at = onset_level(chance, level)
    return {
        "final": float(final.mean()),
        "final_std": float(final.std()),
        "final_step": int(curve.steps[-1]),
        "peak": float(mean[peak_at]),
        "peak_step": int(curve.steps[peak_at]),
        "drop": drop,
        "transient": drop > drop_threshold,
        "onset_level": onset_at,
        "onset_step": first_step_at(curve, onset_at),
        "chance": chance,
        "seeds": len(final),
    }


def first_step_at(curve: Curve, level: float) -> int | None:
    """The first evaluated step where the seed-mean curve reaches ``level`` (the onset), None if never."""
    reached = np.flatnonzero(curve.mean >= level)
    return int(curve.steps[reached[0]]) if reached.size else None


def summarise(sweep: Sweep, series: list[str], drop_threshold: float, level: float | None) -> list[dict[str, Any]]:
    """One row per setting and series: its coordinates, the series name and the numbers of ``summary_row``."""
    table = []
    for (setting, name), curve in curves(sweep, series).items():
        numbers = summary_row(curve, sweep.chance[setting], drop_threshold, level)
        table.append({**dict(setting), "setting": describe(setting), "probe": name, **numbers})
    return table
