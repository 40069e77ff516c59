"""The figure of a run: accuracy on each probe against training step, one panel per setting.

Lines are the mean over seeds, the band their min..max. The x axis is log-scaled (symlog, so step 0 shows).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from iclwl.records import setting_of

STYLE = {
    "icl_novel": ("tab:blue", "-"),
    "icl_flip": ("tab:cyan", "-"),
    "iwl_no_support": ("tab:red", "-"),
    "ciwl": ("tab:orange", "--"),
    "in_dist": ("black", ":"),
}


def plot_run(rows: list[dict[str, Any]], coords: list[str], path: Path, chance: float, title: str = "") -> None:
    curves: dict[tuple, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        if r["probe"] != "train":
            curves[setting_of(r, coords)][r["probe"]][r["step"]].append(r["acc"])
    settings = sorted(curves, key=str)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4), squeeze=False, sharey=True)
    for ax, setting in zip(axes[0], settings, strict=True):
        for probe, by_step in curves[setting].items():
            if probe.startswith(("shots_", "distance_")):
                continue
            steps = np.array(sorted(by_step))
            accs = [np.array(by_step[s]) for s in steps]
            mean = np.array([a.mean() for a in accs])
            color, ls = STYLE.get(probe, (None, "-"))
            ax.plot(steps, mean, ls, color=color, label=probe, lw=1.8)
            ax.fill_between(steps, [a.min() for a in accs], [a.max() for a in accs], color=color, alpha=0.15, lw=0)
        ax.axhline(chance, color="gray", lw=0.8, ls="--", label="chance")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("training step")
        ax.set_title(", ".join(f"{k}={v}" for k, v in setting) or title, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
