"""Reproductions (docs/reproductions.md): each entry's CPU-scale preset, trained as ``iclwl-reproduce``
trains it (its first seed: one of the page's three), shows the direction of the paper's effect in its own metrics.

Every test trains a whole preset (one to a few minutes of a 2-core CPU each), so all are marked slow:
``python -m pytest tests/test_reproductions.py --runslow``. Margins are loose on purpose: the tests check the
direction of an effect, the page gives the numbers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_presets import composed

from iclwl.cli.reproduce import seed_overrides
from iclwl.config import from_dict
from iclwl.record.files import read_metrics
from iclwl.report import analysis
from iclwl.report.analysis import Curve
from iclwl.run import run

pytestmark = pytest.mark.slow


def train(out: Path, experiment: str, *overrides: str) -> list[dict[str, Any]]:
    """Train ``experiment`` (with Hydra ``overrides``, as on the command line) into ``out`` with the first seed of
    ``iclwl-reproduce`` (seed 0, data seed 0); its metrics rows.

    No checkpoints, plot or progress bar: they change nothing the tests read."""
    data = composed(experiment, *seed_overrides(1), "checkpoint.enabled=false", "logging.plot=false",
                    "logging.progress=false", *overrides)  # fmt: skip
    run(from_dict(data), out)
    return read_metrics(out / "metrics.jsonl")


def final(rows: list[dict[str, Any]], probe: str, field: str = "acc", **coords: Any) -> float:
    """Mean over the matching members (seeds) of ``field`` of ``probe`` at the last evaluated step; ``coords``
    select members by their coordinates (``p_bursty=0.9``, ``K=2048``)."""
    picked = [r for r in rows if r["probe"] == probe and all(r.get(k) == v for k, v in coords.items())]
    assert picked, f"no {probe} rows with {coords}"
    last = max(r["step"] for r in picked)
    return float(np.mean([r[field] for r in picked if r["step"] == last]))


def curve(rows: list[dict[str, Any]], probe: str, **coords: Any) -> Curve:
    """The seeds' accuracies of ``probe`` at each evaluated step, for the members with ``coords``."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["probe"] == probe and all(r.get(k) == v for k, v in coords.items()):
            by_step[r["step"]].append(r["acc"])
    steps = sorted(by_step)
    return Curve(np.array(steps), [np.asarray(by_step[s], dtype=float) for s in steps])


def first_step_at(rows: list[dict[str, Any]], probe: str, level: float, **coords: Any) -> int | None:
    """First evaluated step where the seed mean of ``probe`` reaches ``level`` (None when it never does)."""
    return analysis.first_step_at(curve(rows, probe, **coords), level)


def peak(rows: list[dict[str, Any]], probe: str, **coords: Any) -> float:
    """Largest seed-mean accuracy of ``probe`` over the evaluated steps."""
    return float(curve(rows, probe, **coords).mean.max())


# ------------------------------------------------------------------------------------- 1. Chan et al. 2022


def test_chan2022_bursty_sequences_give_icl_iid_sequences_give_iwl(tmp_path):
    rows = train(tmp_path, "chan2022_bursty_cpu")
    # ICL appears only when training sequences are bursty ...
    assert peak(rows, "icl_novel", p_bursty=0.9) > peak(rows, "icl_novel", p_bursty=0.0) + 0.4
    assert final(rows, "icl_novel", p_bursty=1.0) > final(rows, "icl_novel", p_bursty=0.0) + 0.6
    assert final(rows, "icl_novel", p_bursty=0.9) > final(rows, "icl_novel", p_bursty=0.0) + 0.1
    # ... and without bursts the model memorises the classes instead
    assert final(rows, "iwl_no_support", p_bursty=0.0) > final(rows, "iwl_no_support", p_bursty=0.9) + 0.3
    assert final(rows, "iwl_no_support", p_bursty=0.0) > final(rows, "iwl_no_support", p_bursty=1.0) + 0.6


def test_chan2022_zipf_icl_falls_iwl_rises_with_alpha_both_near_1(tmp_path):
    rows = train(tmp_path, "chan2022_zipf_cpu")
    assert final(rows, "icl_novel", alpha=0.0) > final(rows, "icl_novel", alpha=2.0) + 0.1
    assert peak(rows, "icl_novel", alpha=0.0) > peak(rows, "icl_novel", alpha=2.0) + 0.4
    assert final(rows, "iwl_no_support", alpha=2.0) > final(rows, "iwl_no_support", alpha=0.0) + 0.3
    # alpha = 1: both at once, ICL on novel classes well above chance (1/1600) and IWL on the common classes
    assert final(rows, "icl_novel", alpha=1.0) > 0.1
    assert final(rows, "iwl_no_support", "acc_common", alpha=1.0) > 0.8


def test_chan2022_many_exemplars_give_more_icl_than_one(tmp_path):
    one = train(tmp_path / "1", "chan2022_exemplars_cpu", "task.exemplars=1")
    many = train(tmp_path / "20", "chan2022_exemplars_cpu", "task.exemplars=20")
    assert peak(many, "icl_novel") > peak(one, "icl_novel") + 0.4
    assert final(many, "icl_novel") > final(one, "icl_novel") + 0.1
    assert final(one, "iwl_no_support") > final(many, "iwl_no_support") + 0.3


# ------------------------------------------------------------------------------------- 2. Reddy et al. 2023


def test_reddy2023_icl_rises_with_k_and_b_iwl_falls(tmp_path):
    # the page's multirun is task.B=1,2,4; B = 2 also runs in test_reddy2023_bursty_onset (its K = 2048 member)
    runs = {b: train(tmp_path / f"B{b}", "reddy2023_bk_cpu", f"task.B={b}") for b in (1, 4)}
    for rows in runs.values():  # many classes: ICL; few classes: IWL
        assert final(rows, "icl_novel", K=2048) > final(rows, "icl_novel", K=128) + 0.5
        assert final(rows, "iwl_no_support", K=128) > final(rows, "iwl_no_support", K=2048) + 0.4
    # burstier contexts: ICL earlier (many classes) and more of it (few classes); IWL lower. The level is high
    # because before the rise each run plateaus at B/L (one of the L/B context labels, picked at random)
    onset = {b: first_step_at(rows, "icl_novel", 0.8, K=2048) for b, rows in runs.items()}
    assert onset[4] is not None and (onset[1] is None or onset[4] < onset[1])
    assert final(runs[4], "icl_novel", K=128) > final(runs[1], "icl_novel", K=128) + 0.05
    assert final(runs[1], "iwl_no_support", K=128) > final(runs[4], "iwl_no_support", K=128) + 0.15


def test_reddy2023_bursty_onset_after_plateau_iid_gives_iwl(tmp_path):
    rows = train(tmp_path, "reddy2023_bursty_cpu")
    # non-bursty training: IWL and no ICL; bursty: ICL and no IWL
    assert final(rows, "iwl_no_support", p_bursty=0.0) > final(rows, "iwl_no_support", p_bursty=1.0) + 0.4
    assert final(rows, "icl_novel", p_bursty=1.0) > final(rows, "icl_novel", p_bursty=0.0) + 0.6
    # abrupt: the climb from 0.4 to 0.8 takes less than half as long as the plateau before 0.4
    t40 = first_step_at(rows, "icl_novel", 0.4, p_bursty=1.0)
    t80 = first_step_at(rows, "icl_novel", 0.8, p_bursty=1.0)
    assert t40 is not None and t80 is not None
    assert t80 - t40 < t40 / 2
    # the induction score sits near its uniform value in the plateau and rises with ICL
    steps = curve(rows, "icl_novel", p_bursty=1.0).steps
    plateau = int(steps[steps <= t40 // 2].max())
    induction = {r["step"]: r["induction"] for r in rows if r["probe"] == "icl_novel" and r["p_bursty"] == 1.0}
    assert induction[plateau] < 0.2
    assert final(rows, "icl_novel", "induction", p_bursty=1.0) > 0.5


def test_reddy2023_interventions_both_heads_carry_icl_and_a_previous_token_head_comes_first(tmp_path):
    rows = train(tmp_path, "reddy2023_interventions_cpu")
    # untouched: ICL; each head's ablation costs most of it, the top head by induction score is the second layer's
    assert final(rows, "icl_novel", intervene_kind="none") > 0.9
    drops = [r for r in rows if r["probe"] == "icl_novel" and r["intervene_kind"] == "none" and r["step"] == 2000]
    assert all(min(d[0] for d in r["ablate_drop_lh"]) > 0.5 for r in drops)
    assert all(r["ablate_topk_drop"] == r["ablate_drop_lh"][1][0] for r in drops)
    # without the first layer's head no induction head forms: ICL stays at copying a random context label
    assert final(rows, "icl_novel", intervene_kind="zero") < 0.35
    assert final(rows, "icl_novel", "induction", intervene_kind="zero") < 0.3
    # a ready-made previous-token head brings ICL forward
    clamped = first_step_at(rows, "icl_novel", 0.516, intervene_kind="clamp")
    untouched = first_step_at(rows, "icl_novel", 0.516, intervene_kind="none")
    assert clamped is not None and untouched is not None and clamped < untouched
