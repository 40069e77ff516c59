"""Accuracy against shots and against distance, the report's ``families.md`` / ``families.csv`` /
``families.png``: the ``shots_k`` probes (exactly k context items of the query's class, k = 0 .. L) and the
``distance_d`` probes (one such item, d pairs before the query) that ``probes.families`` adds to a run.

Each family is read at a few evaluated steps of each setting (``--family-steps``, default 4: log-spaced between
the first step after 0 and the last, which is always one of them), so a user sees how the dependence on shots or
recency changes while ICL appears or fades. Numbers are the seed mean and the min..max over seeds.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from iclwl.record.markdown import markdown_table
from iclwl.record.measures import describe
from iclwl.report.analysis import Setting, Sweep, curves, probes_of

FAMILIES = {"shots": re.compile(r"shots_(\d+)$"), "distance": re.compile(r"distance_(\d+)$")}
AXIS = {"shots": "relevant items in the context (k)", "distance": "pairs between the relevant item and the query (d)"}


def family_members(sweep: Sweep) -> dict[str, list[tuple[int, str]]]:
    """Per family present in the runs, its (k or d, probe name) pairs in increasing order."""
    found: dict[str, list[tuple[int, str]]] = {}
    for probe in probes_of(sweep):
        for family, pattern in FAMILIES.items():
            match = pattern.match(probe)
            if match:
                found.setdefault(family, []).append((int(match.group(1)), probe))
    return {family: sorted(members) for family, members in found.items()}


def pick_steps(steps: np.ndarray, n: int) -> list[int]:
    """About ``n`` of the evaluated ``steps``, log-spaced from the first positive one to the last (kept)."""
    positive = steps[steps > 0]
    if positive.size == 0:
        return [int(steps[-1])]
    targets = np.geomspace(positive[0], positive[-1], n)
    chosen = {int(positive[np.argmin(np.abs(np.log(positive) - np.log(t)))]) for t in targets}
    return sorted(chosen | {int(steps[-1])})


def family_table(sweep: Sweep, n_steps: int) -> list[dict[str, Any]]:
    """One row per setting, family, chosen step and k (or d): the seed mean, min and max accuracy."""
    members = family_members(sweep)
    found = curves(sweep, [probe for pairs in members.values() for _, probe in pairs])
    settings: list[Setting] = list(dict.fromkeys(setting for setting, _ in found))
    table = []
    for setting in settings:
        for family, pairs in members.items():
            present = [(k, found[(setting, probe)]) for k, probe in pairs if (setting, probe) in found]
            if not present:
                continue
            for step in pick_steps(present[0][1].steps, n_steps):
                for k, curve in present:
                    at = np.flatnonzero(curve.steps == step)
                    if at.size == 0:
                        continue
                    seeds = curve.values[at[0]]
                    table.append({**dict(setting), "key": setting, "setting": describe(setting), "family": family,
                                  "step": step, "k": k, "mean": float(seeds.mean()), "min": float(seeds.min()),
                                  "max": float(seeds.max()), "seeds": len(seeds)})  # fmt: skip
    return table


def format_families(table: list[dict[str, Any]]) -> str:
    """A markdown table per family: one line per setting and step, one column per k (or d): the seed mean."""
    lines = []
    for family in dict.fromkeys(t["family"] for t in table):
        rows = [t for t in table if t["family"] == family]
        ks = sorted({t["k"] for t in rows})
        symbol = "k" if family == "shots" else "d"
        cells = []
        for setting, step in dict.fromkeys((t["setting"], t["step"]) for t in rows):
            cell = {t["k"]: t["mean"] for t in rows if t["setting"] == setting and t["step"] == step}
            cells.append((setting, step, *(f"{cell[k]:.3f}" if k in cell else "" for k in ks)))
        header = ("setting", "step", *(f"{symbol}={k}" for k in ks))
        lines += [f"## accuracy against {family}: {AXIS[family]} (seed mean)", "", markdown_table(header, cells), ""]
    return "\n".join(lines)
