"""iclwl.load_runs: hand-made run directories as one DataFrame with exact numbers; plots return Figures and choose
no backend at import."""

import json
import subprocess
import sys

import pytest
from matplotlib.figure import Figure

import iclwl
from iclwl.report.analysis import ReportError, combine, curves, find_runs
from iclwl.report.plots import plot_settings


def make_run(path, config: dict, rows: list[dict]) -> None:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows(p_relevants, seed: int, acc0: float) -> list[dict]:
    out = []
    for m, p in enumerate(p_relevants):
        for step in (0, 10):
            out.append({"step": step, "member": m, "probe": "icl_flip", "acc": acc0 + step / 100 + m / 10,
                        "loss": 1.0, "acc_common": None, "acc_rare": 0.5, "seed": seed, "p_relevant": p})  # fmt: skip
        out.append({"step": 10, "member": m, "probe": "train", "acc": 0.5, "loss": 2.0, "stopped_at": None,
                    "seed": seed, "p_relevant": p})  # fmt: skip
    return out


def test_load_runs_of_a_multirun_tree(tmp_path):
    """Two jobs (L = 2, 4) of two p_relevant members each: every row, the run's config as columns, and the
    member's own p_relevant in task.p_relevant where the config file holds the base value 0.9."""
    for L in (2, 4):
        config = {"task": {"L": L, "p_relevant": 0.9, "n_labels": 10}, "optim": {"lr": 3e-4}}
        make_run(tmp_path / "sweep" / f"L{L}", config, rows([0.5, 1.0], seed=0, acc0=L / 10))
    df = iclwl.load_runs(tmp_path / "sweep")
    assert len(df) == 2 * 2 * 3  # jobs x members x (2 probe rows + 1 train row)
    flips = df[df.probe == "icl_flip"]
    assert sorted(flips["task.L"].unique()) == [2, 4]
    assert (flips["task.p_relevant"] == flips["p_relevant"]).all()
    got = flips.groupby(["task.L", "p_relevant", "step"]).acc.mean().to_dict()
    assert got == pytest.approx({(2, 0.5, 0): 0.2, (2, 0.5, 10): 0.3, (2, 1.0, 0): 0.3, (2, 1.0, 10): 0.4,
                                 (4, 0.5, 0): 0.4, (4, 0.5, 10): 0.5, (4, 1.0, 0): 0.5, (4, 1.0, 10): 0.6})  # fmt: skip
    assert set(df["run"]) == {str(tmp_path / "sweep" / "L2"), str(tmp_path / "sweep" / "L4")}
    assert (df[df.probe == "train"].loss == 2.0).all() and (df["optim.lr"] == 3e-4).all()
    one = iclwl.load_runs(tmp_path / "sweep" / "L2")  # a single run
    assert len(one) == 6 and (one["task.L"] == 2).all()
    with pytest.raises(ReportError, match="no such file"):
        iclwl.load_runs(tmp_path / "missing")


def test_plots_return_figures_and_importing_them_picks_no_backend(tmp_path):
    make_run(tmp_path / "r", {"task": {"n_labels": 10}}, rows([0.5], seed=0, acc0=0.1))
    sweep = combine(find_runs(tmp_path))
    fig = plot_settings(curves(sweep, ["icl_flip"]), ["icl_flip"], sweep.chance)
    assert isinstance(fig, Figure) and not (tmp_path / "curves.png").exists()
    plot_settings(curves(sweep, ["icl_flip"]), ["icl_flip"], sweep.chance, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    check = "import sys, iclwl.report.plots, iclwl.cli.report; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_two_crossed_coordinates_make_a_grid_and_zipped_ones_wrap():
    from iclwl.report.plots import grid_of

    crossed = [(("p_relevant", p), ("N", n)) for n in (64, None) for p in (0.5, 0.9)]
    grid = grid_of(crossed)
    assert (grid.nrows, grid.ncols) == (2, 2) and grid.cols == ["p_relevant=0.5", "p_relevant=0.9"]
    assert grid.rows == ["N=64", "N=∞"] and grid.place[(("p_relevant", 0.9), ("N", None))] == (1, 1)
    zipped = [(("K", 32), ("p_bursty", 0.0)), (("K", 1024), ("p_bursty", 1.0))]
    assert grid_of(zipped).cols == [] and (grid_of(zipped).nrows, grid_of(zipped).ncols) == (1, 2)
    five = [(("K", k),) for k in range(5)]
    assert (grid_of(five).nrows, grid_of(five).ncols, grid_of(five).place[(("K", 4),)]) == (2, 4, (1, 0))


def test_every_report_figure_has_one_legend_below_its_panels():
    """Curves, mechanisms and families: one figure legend, each label once, and no legend inside a panel."""
    import numpy as np

    from iclwl.report.analysis import Curve
    from iclwl.report.plots import plot_families, plot_mechanisms

    settings = [(("K", 512),), (("K", 2048),)]
    steps = np.array([0, 10, 100])
    curve = Curve(steps, [np.array([0.1, 0.2]), np.array([0.3, 0.4]), np.array([0.8, 0.9])])
    series = ["icl_novel", "iwl_no_support", "icl_novel:induction", "icl_novel:prev_token", "icl_flip:src_same_class",
              "icl_flip:src_context"]  # fmt: skip
    curves = {(s, name): curve for s in settings for name in series}
    chance = dict.fromkeys(settings, 1 / 32)
    onsets = [{"key": s, "icl_onset": 10, "induction_onset": 100} for s in settings]
    families = [{"key": s, "family": f, "step": step, "k": k, "mean": 0.5, "min": 0.4, "max": 0.6}
                for s in settings for f in ("shots", "distance") for step in (1, 100) for k in (1, 2)]  # fmt: skip
    figures = [plot_settings(curves, ["icl_novel", "iwl_no_support"], chance),
               plot_mechanisms(curves, onsets, ("icl_novel", "iwl_no_support", "icl_novel", "icl_flip"), chance),
               plot_families(families, chance)]  # fmt: skip
    for fig in figures:
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert len(labels) == len(set(labels)) >= 3 and "chance" in labels
