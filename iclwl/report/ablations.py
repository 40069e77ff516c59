"""The ablations part of the report (``iclwl.cli.report``): what each head is worth to ICL and to IWL over training.

Written only where the runs logged ablations (``probes.ablations``: rows with ``ablate_drop_lh``). Per setting, for
the ICL probe and the IWL probe: the seed mean of each head's accuracy drop at every evaluation (``ablations.png``:
heads down, steps across on the step axis of the other figures), and in ``ablations.md`` the final drops, with the
top-k most inductive heads against k random ones (iclwl/probes/ablations.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from iclwl.record.markdown import markdown_table
from iclwl.record.measures import describe
from iclwl.report.analysis import DEFAULT_PROBES, Setting, Sweep, sort_key
from iclwl.report.plots import step_axis


@dataclass(frozen=True)
class HeadDrops:
    """One setting's drops on one probe: seed means at every evaluated step."""

    steps: np.ndarray  # (S,)
    drop: np.ndarray  # (S, layers, H) each head's drop
    topk: np.ndarray  # (S,) the k most inductive heads together (NaN where not logged)
    random: np.ndarray  # (S,) k random other heads


def ablation_probes(sweep: Sweep) -> tuple[str, str] | None:
    """(ICL probe, IWL probe) when the runs logged ablations on both, else None."""
    logged = {r["probe"] for r in sweep.rows if r.get("ablate_drop_lh") is not None}
    icl, iwl = DEFAULT_PROBES[0], DEFAULT_PROBES[1]
    return (icl, iwl) if icl in logged and iwl in logged else None


def head_drops(sweep: Sweep, probes: tuple[str, str]) -> dict[tuple[Setting, str], HeadDrops]:
    """The seed means of every setting's drops on each probe, settings in their sort order."""
    found: dict[tuple[Setting, str], dict[int, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    for r in sweep.rows:
        if r["probe"] in probes and r.get("ablate_drop_lh") is not None:
            setting = tuple((c, r[c]) for c in sweep.coords)
            drop = np.array(r["ablate_drop_lh"], dtype=float)  # None -> nan
            found[(setting, r["probe"])][r["step"]].append((drop, r.get("ablate_topk_drop"),
                                                            r.get("ablate_random_drop")))  # fmt: skip
    result = {}
    order = sorted(found, key=lambda k: ([sort_key(v) for _, v in k[0]], probes.index(k[1])))
    for key in order:
        steps = sorted(found[key])
        means = [_seed_means(found[key][s]) for s in steps]
        result[key] = HeadDrops(np.array(steps), *(np.stack(parts) for parts in zip(*means, strict=True)))
    return result


def _seed_means(seeds: list[tuple]) -> tuple[np.ndarray, float, float]:
    number = lambda x: np.nan if x is None else float(x)
    with np.errstate(invalid="ignore"):
        drop = np.mean([d for d, _, _ in seeds], axis=0)
    return drop, np.mean([number(t) for _, t, _ in seeds]), np.mean([number(r) for _, _, r in seeds])


def _cell_edges(steps: np.ndarray) -> np.ndarray:
    """(S,) evaluated steps -> (S + 1,) cell edges halfway between them (the first cell starts at 0)."""
    steps = steps.astype(float)
    if len(steps) == 1:
        return np.array([0.0, max(steps[0], 1.0) * 2])
    middle = (steps[:-1] + steps[1:]) / 2
    return np.concatenate([[0.0], middle, [steps[-1] + (steps[-1] - steps[-2]) / 2]])


def format_ablations(drops: dict[tuple[Setting, str], HeadDrops], probes: tuple[str, str]) -> str:
    """Per setting and probe: the final drop of each head, of the top-k heads and of k random ones."""
    num = lambda x: "-" if x is None or np.isnan(x) else f"{x:+.3f}"
    heads = next(iter(drops.values())).drop.shape[1:]
    names = [f"L{i}H{j}" for i in range(heads[0]) for j in range(heads[1])]
    rows = [(describe(setting), probe, *(num(v) for v in d.drop[-1].ravel()), num(d.topk[-1]), num(d.random[-1]))
            for (setting, probe), d in drops.items()]  # fmt: skip
    text = [
        f"Accuracy lost on {probes[0]} (ICL) and {probes[1]} (IWL) at the last evaluation when each head is "
        "ablated (seed mean; positive: the probe needs the head), and when the k heads of highest induction score "
        "are ablated together against k other heads drawn at random (docs/interventions.md).",
        "",
        markdown_table(("setting", "probe", *names, "top-k", "random k"), rows),
    ]
    return "\n".join(text) + "\n"


def plot_ablations(drops: dict[tuple[Setting, str], HeadDrops], probes: tuple[str, str],
                   path: Path | None = None) -> Figure:  # fmt: skip
    """Heads x steps heat maps of the drop: one row per setting, the ICL probe left and the IWL probe right."""
    settings = list(dict.fromkeys(s for s, _ in drops))
    layers, H = next(iter(drops.values())).drop.shape[1:]
    names = [f"L{i}H{j}" for i in range(layers) for j in range(H)]
    height = 0.8 + (0.25 * len(names) + 0.6) * len(settings)
    fig = Figure(figsize=(10, height), layout="constrained")
    axes = np.asarray(fig.subplots(len(settings), 2, squeeze=False))
    image: Any = None
    for r, setting in enumerate(settings):
        for c, probe in enumerate(probes):
            ax = axes[r, c]
            d = drops.get((setting, probe))
            if d is None:
                ax.set_visible(False)
                continue
            edges = _cell_edges(d.steps)
            image = ax.pcolormesh(edges, np.arange(len(names) + 1) - 0.5, d.drop.reshape(len(d.steps), -1).T,
                                  cmap="RdBu_r", vmin=-1, vmax=1)  # fmt: skip
            step_axis(ax, label=r == len(settings) - 1)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(len(names) - 0.5, -0.5)  # the first layer on top
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.tick_params(axis="x", labelsize=7)
            kind = "ICL" if c == 0 else "IWL"
            ax.set_title(f"{describe(setting)}: {probe} ({kind})" if setting else f"{probe} ({kind})", fontsize=9)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, location="bottom", shrink=0.5, aspect=40)
        bar.set_label("accuracy lost when the head is ablated", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
