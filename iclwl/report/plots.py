"""Figures: accuracy on each probe against training step, one panel per setting (a run's curves.png, and the
report's curves over many runs), the report's phase diagrams over two coordinates, and its mechanistic measures
against step (mechanisms.png).

Lines are the mean over seeds, the band their min..max. The step axis is linear from 0 to 1 and logarithmic
beyond (symlog), with the linear part a fifth of a decade wide. When exactly two coordinates vary, the panels form
a grid: one column per value of the first, one row per value of the second, the values written at the top and the
left; otherwise they wrap four to a row, each titled with its setting. One legend for all panels sits below them.
Every function returns its matplotlib Figure (a notebook shows it) and also writes it when given a path. Figures
are built without pyplot, so importing this module chooses no backend and a training process opens no window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from iclwl.record.measures import describe, value_text
from iclwl.report.analysis import Setting, sort_key

STYLE = {
    "icl_novel": ("tab:blue", "-"),
    "icl_flip": ("tab:cyan", "-"),
    "iwl_no_support": ("tab:red", "-"),
    "ciwl": ("tab:orange", "--"),
    "in_dist": ("black", ":"),
}


def _subplots(nrows: int, ncols: int, **kwargs):
    """A Figure and its axes grid, as pyplot.subplots gives them, without pyplot's backend or figure registry."""
    layout = kwargs.pop("layout", None)
    fig = Figure(figsize=kwargs.pop("figsize"), layout=layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _saved(fig: Figure, path: Path | None, dpi: int) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _setting_title(setting: tuple) -> str:
    return describe(setting, empty="all runs")


def step_axis(ax, label: bool = True) -> None:
    """Linear on [0, 1], log beyond: step 0 shows and takes a fifth of a decade, not a whole one."""
    ax.set_xscale("symlog", linthresh=1, linscale=0.2)
    ax.set_xlim(left=0)
    if label:
        ax.set_xlabel("training step", fontsize=8)


def _accuracy_axis(ax, chance: float | None = None) -> None:
    """An axis of accuracies or shares: [0, 1] with a margin, a light grid, chance as a dashed grey line."""
    if chance is not None:
        ax.axhline(chance, color="gray", lw=0.8, ls="--", label="chance")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def _shared_legend(fig: Figure, axes) -> None:
    """One legend for every panel, below them (each label once)."""
    entries: dict[str, Any] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        ncols = min(len(entries), 5, max(1, round(fig.get_figwidth() / 2.0)))  # about 2 inches an entry
        fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncols=ncols, fontsize=8,
                   frameon=False)  # fmt: skip


@dataclass(frozen=True)
class Grid:
    """Where each setting's panel goes: rows x columns over two varying coordinates, or wrapped."""

    nrows: int
    ncols: int
    place: dict[Setting, tuple[int, int]]
    cols: list[str]  # column headers (grid over two coordinates), else []
    rows: list[str]  # row headers, else []


def grid_of(settings: list[Setting], wrap: int = 4) -> Grid:
    """Two varying coordinates whose values cross (every pair a setting): columns are the first one's values, rows
    the second's; else (one, three or more, or zipped coordinates) the settings wrap."""
    names = [k for k, _ in settings[0]] if settings else []
    varying = [k for i, k in enumerate(names) if len({s[i][1] for s in settings}) > 1]
    if len(varying) == 2:
        x, y = (names.index(k) for k in varying)
        xs = sorted({s[x][1] for s in settings}, key=sort_key)
        ys = sorted({s[y][1] for s in settings}, key=sort_key)
    if len(varying) == 2 and len(xs) * len(ys) == len(settings):
        place = {s: (ys.index(s[y][1]), xs.index(s[x][1])) for s in settings}
        heads = [describe(((varying[0], v),)) for v in xs]
        return Grid(len(ys), len(xs), place, heads, [describe(((varying[1], v),)) for v in ys])
    ncols = max(min(len(settings), wrap), 1)
    place = {s: (i // ncols, i % ncols) for i, s in enumerate(settings)}
    return Grid(-(-len(settings) // ncols) or 1, ncols, place, [], [])


def _label_grid(axes, grid: Grid, settings: list[Setting]) -> None:
    """Column headers on top (row headers go with the y labels); or each panel's setting as its title."""
    if grid.cols:
        fixed = [(k, v) for i, (k, v) in enumerate(settings[0]) if len({s[i][1] for s in settings}) == 1]
        for c, head in enumerate(grid.cols):
            axes[0][c].set_title(head, fontsize=9)
        if fixed:  # the coordinates every panel shares
            axes[0][0].figure.suptitle(_setting_title(fixed), fontsize=10)
    else:
        for setting, (r, c) in grid.place.items():
            if setting:  # a run of one setting: the figure's title says what it is
                axes[r][c].set_title(_setting_title(setting), fontsize=9)
    used = set(grid.place.values())
    for r in range(grid.nrows):
        for c in range(grid.ncols):
            if (r, c) not in used:
                axes[r][c].set_visible(False)


def plot_settings(curves: dict, probes: list[str], chance: dict, path: Path | None = None, title: str = "") -> Figure:
    """One panel per setting: each probe's seed mean against step, band = min..max over seeds; its rare and
    common frequency groups (series ``probe:rare`` / ``probe:common`` in ``curves``), where present, as thin
    dashed / dotted lines. ``curves`` maps (setting, series) to an ``iclwl.report.analysis.Curve``."""
    settings = list(dict.fromkeys(s for s, _ in curves))
    grid = grid_of(settings)
    size = (0.6 + 4.0 * grid.ncols, 1.0 + 3.0 * grid.nrows)
    fig, axes = _subplots(grid.nrows, grid.ncols, figsize=size, squeeze=False, sharey=True, sharex=True,
                          layout="constrained")  # fmt: skip
    for setting, (r, c) in grid.place.items():
        ax = axes[r][c]
        for i, probe in enumerate(probes):
            color = STYLE.get(probe, (f"C{i}", "-"))[0]
            if (setting, probe) in curves:
                cv = curves[(setting, probe)]
                ax.plot(cv.steps, cv.mean, color=color, lw=1.8, label=probe)
                lo, hi = [v.min() for v in cv.values], [v.max() for v in cv.values]
                ax.fill_between(cv.steps, lo, hi, color=color, alpha=0.15, lw=0)
            for group, ls in (("rare", "--"), ("common", ":")):
                if (setting, f"{probe}:{group}") in curves:
                    g = curves[(setting, f"{probe}:{group}")]
                    ax.plot(g.steps, g.mean, ls, color=color, lw=1.0, label=f"{probe} ({group})")
        _accuracy_axis(ax, chance[setting])
        step_axis(ax, label=r == grid.nrows - 1)
    _label_grid(axes, grid, settings)
    for r, ax in enumerate(axes[:, 0]):  # a grid's row header above the axis label
        ax.set_ylabel(f"{grid.rows[r]}\naccuracy" if grid.rows else "accuracy", fontsize=8)
    _shared_legend(fig, axes)
    if title:
        shared = fig.get_suptitle()
        fig.suptitle(f"{title}: {shared}" if shared else title, fontsize=11)
    return _saved(fig, path, dpi=100)


def plot_phase(
    table: list[dict[str, Any]], coords: list[str], x: str, y: str, probes: list[str], path: Path | None = None
) -> Figure:
    """Phase diagrams: final and peak seed-mean accuracy of each probe over coordinates ``x`` and ``y``; one row
    of panels per combination of the other coordinates. ``table`` rows come from ``iclwl.report.analysis.summarise``."""

    def values(c: str, rows: list[dict[str, Any]]) -> list[Any]:
        return sorted({r[c] for r in rows}, key=sort_key)

    others = [c for c in coords if c not in (x, y)]
    facets = sorted({tuple((c, r[c]) for c in others) for r in table}, key=lambda f: [sort_key(v) for _, v in f])
    xs, ys = values(x, table), values(y, table)
    panels = [(p, m) for p in probes for m in ("final", "peak")]
    size = (1.2 + len(panels) * (1.2 + 0.55 * len(xs)), len(facets) * (1.6 + 0.45 * len(ys)))
    fig, axes = _subplots(len(facets), len(panels), figsize=size, squeeze=False, layout="constrained")
    for row, facet in enumerate(facets):
        for col, (probe, measure) in enumerate(panels):
            grid = np.full((len(ys), len(xs)), np.nan)
            for r in table:
                if r["probe"] == probe and all(r[c] == v for c, v in facet):
                    grid[ys.index(r[y]), xs.index(r[x])] = r[measure]
            ax = axes[row][col]
            image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
            ax.set_xticks(range(len(xs)), [value_text(x, v) for v in xs], fontsize=7)
            ax.set_yticks(range(len(ys)), [value_text(y, v) for v in ys], fontsize=7)
            if row == len(facets) - 1:
                ax.set_xlabel(x, fontsize=8)
            if col == 0:
                ax.set_ylabel(y, fontsize=8)
            title = f"{measure} {probe}" + (f"\n{_setting_title(facet)}" if facet else "")
            ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy (seed mean)")
    return _saved(fig, path, dpi=100)


MEASURE_STYLE = {
    "induction": ("tab:green", "-"),
    "prev_token": ("tab:purple", "--"),
    "relevant_mass": ("tab:olive", ":"),
}
SOURCE_COLORS = {"same_class": "tab:blue", "memorised": "tab:red", "context": "tab:orange", "other": "gray"}


def plot_mechanisms(curves: dict, table: list[dict[str, Any]], probes: tuple[str, str, str, str], chance: dict,
                    path: Path | None = None) -> Figure:  # fmt: skip
    """Per setting, two panels over training step. Top: the ICL and IWL probes' accuracy and the mechanistic
    measures of the measure probe, on one axis, with the onsets of ICL and of the induction score as vertical
    lines, each with its step written at the top (from ``table``, iclwl.cli.report.mechanism_table). Bottom: where
    the sources probe's answers come from. Settings are placed as in ``plot_settings``; one legend below all.
    ``probes`` = (icl, iwl, measure, sources probe); ``curves`` maps (setting, series) to a Curve."""
    icl, iwl, measured, sourced = probes
    settings = [row["key"] for row in table]
    grid = grid_of(settings)
    fig, axes = _subplots(2 * grid.nrows, grid.ncols, figsize=(0.6 + 4.4 * grid.ncols, 1.0 + 6.0 * grid.nrows),
                          squeeze=False, sharex=True, layout="constrained")  # fmt: skip
    tops, bottoms = axes[0::2], axes[1::2]  # (nrows, ncols) each: a setting's two panels, one above the other
    for row in table:
        setting = row["key"]
        r, c = grid.place[setting]
        top, bottom = tops[r][c], bottoms[r][c]
        series = [(icl, f"{icl} acc", STYLE.get(icl, ("tab:blue", "-"))),
                  (iwl, f"{iwl} acc", STYLE.get(iwl, ("tab:red", "-")))]  # fmt: skip
        series += [(f"{measured}:{m}", f"{m} ({measured})", style) for m, style in MEASURE_STYLE.items()]
        for name, label, (color, ls) in series:
            if (setting, name) in curves:
                cv = curves[(setting, name)]
                top.plot(cv.steps, cv.mean, ls, color=color, lw=1.6, label=label)
        # each onset's step is written by its line, the induction onset's lower, so close onsets stay readable
        for step, color, what, height in ((row["icl_onset"], "tab:blue", "ICL onset", 1.0),
                                          (row["induction_onset"], "tab:green", "induction onset", 0.94)):  # fmt: skip
            if step is not None:
                top.axvline(step, color=color, lw=1.0, ls=(0, (4, 3)), alpha=0.8, label=what)
                top.annotate(str(step), (step, height), xycoords=("data", "axes fraction"), xytext=(-2, -2),
                             textcoords="offset points", ha="right", va="top", fontsize=6, color=color)  # fmt: skip
        _accuracy_axis(top, chance[setting])
        top.set_ylabel("accuracy / attention", fontsize=8)
        for source, color in SOURCE_COLORS.items():
            if (setting, f"{sourced}:src_{source}") in curves:
                cv = curves[(setting, f"{sourced}:src_{source}")]
                bottom.plot(cv.steps, cv.mean, color=color, lw=1.4, label=f"answer is {source}")
        _accuracy_axis(bottom)
        bottom.set_ylabel(f"share of {sourced} answers", fontsize=8)
        for ax in (top, bottom):
            step_axis(ax, label=ax is bottom and r == grid.nrows - 1)
    _label_grid(tops, grid, settings)
    for r in range(grid.nrows):
        for c in range(grid.ncols):
            bottoms[r][c].set_visible(tops[r][c].get_visible())
        if grid.rows:  # a grid's row header above the first panel's axis label
            tops[r][0].set_ylabel(f"{grid.rows[r]}\naccuracy / attention", fontsize=8)
    _shared_legend(fig, axes)
    return _saved(fig, path, dpi=90)


def plot_families(table: list[dict[str, Any]], chance: dict, path: Path | None = None) -> Figure:
    """One row of panels per setting, one column per family (accuracy against shots k, against distance d):
    a line per chosen step, coloured from early (light) to late (dark), the band the min..max over seeds; one
    legend below all. ``table`` rows come from ``iclwl.report.families.family_table``."""
    settings = list(dict.fromkeys(t["key"] for t in table))
    families = list(dict.fromkeys(t["family"] for t in table))
    steps = sorted({t["step"] for t in table})  # one colour per step, the same in every panel
    colors = dict(zip(steps, matplotlib.colormaps["viridis_r"](np.linspace(0.25, 1.0, len(steps))), strict=True))
    fig, axes = _subplots(len(settings), len(families), figsize=(0.6 + 4.4 * len(families), 1.0 + 3.0 * len(settings)),
                          squeeze=False, layout="constrained")  # fmt: skip
    for i, setting in enumerate(settings):
        for j, family in enumerate(families):
            ax = axes[i][j]
            rows = [t for t in table if t["key"] == setting and t["family"] == family]
            for step in dict.fromkeys(t["step"] for t in rows):
                line = [t for t in rows if t["step"] == step]
                ks = [t["k"] for t in line]
                ax.plot(ks, [t["mean"] for t in line], "o-", color=colors[step], ms=3, lw=1.4, label=f"step {step}")
                ax.fill_between(ks, [t["min"] for t in line], [t["max"] for t in line], color=colors[step],
                                alpha=0.12, lw=0)  # fmt: skip
            _accuracy_axis(ax, chance[setting])
            if i == len(settings) - 1:
                ax.set_xlabel("relevant items k" if family == "shots" else "distance d (pairs before the query)",
                              fontsize=8)  # fmt: skip
            if i == 0:
                ax.set_title(family, fontsize=9)
            if j == 0:
                head = _setting_title(setting) if setting else ""
                ax.set_ylabel(f"{head}\naccuracy" if head else "accuracy", fontsize=8)
    _shared_legend(fig, axes)
    return _saved(fig, path, dpi=90)
