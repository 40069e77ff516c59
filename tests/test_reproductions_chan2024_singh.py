"""Reproductions, docs/reproductions.md sections 3 (Chan et al. 2024) and 4 (Singh et al. 2023/2025): each test
trains a CPU-scale preset through ``iclwl.run.run`` and checks the direction of the paper's effect in its metrics,
with a margin. Slow: run with ``--runslow`` (1 to 3 minutes each, 12 minutes for the six, on a 2-core CPU shared with
other jobs, load average about 3 to 4).

The margins are well inside the numbers of the runs in docs/reproductions.md (one seed; a CPU run with the same
seed repeats them), and well above the probes' sampling noise (about 0.02 at 512 sequences and 50% accuracy).
"""

from pathlib import Path
from typing import Any

import pytest
from test_reproductions import train

from iclwl.analysis import combine, find_runs, summarise

INF = None  # N = infinite (fresh sequences every step)
SERIES = ["icl_novel", "icl_flip", "iwl_no_support", "ciwl", "icl_flip:rare", "icl_flip:common",
          "iwl_no_support:rare", "iwl_no_support:common"]  # fmt: skip

pytestmark = pytest.mark.slow


def table(root: Path) -> list[dict[str, Any]]:
    """The report's numbers (final, peak, drop, ...) per setting and series of the runs under ``root``."""
    sweep = combine(find_runs(root))
    series = [s for s in SERIES if s.split(":")[0] in {r["probe"] for r in sweep.rows}]
    return summarise(sweep, series, drop_threshold=0.1, level=None)


def at(rows: list[dict[str, Any]], probe: str, **coords: Any) -> dict[str, Any]:
    """The one row of ``probe`` at these coordinates."""
    (row,) = [r for r in rows if r["probe"] == probe and all(r[k] == v for k, v in coords.items())]
    return row


def test_chan2024_no_icl_without_relevant_context(tmp_path):
    """p_relevant = 0: the context never holds the query's class, and no ICL appears; at 0.9 and 1 it does."""
    train(tmp_path, "chan2024_prelevant_cpu")
    rows = table(tmp_path)
    for n in (1024, INF):
        none, high, always = (at(rows, "icl_novel", p_relevant=p, N=n) for p in (0.0, 0.9, 1.0))
        assert none["peak"] < 0.2, none  # chance is 0.1 (10 labels)
        assert high["peak"] > none["peak"] + 0.25, (high, none)
        assert always["final"] > 0.9 and always["final"] > high["final"], (always, high)
    finite = {p: at(rows, "icl_novel", p_relevant=p, N=1024)["final"] for p in (0.0, 0.9)}
    assert finite[0.9] > finite[0.0] + 0.25, finite  # and on a finite set it stays to the end


def test_chan2024_icl_transient_as_n_grows_unless_noise_is_large(tmp_path):
    """sigma = 0.2: ICL holds on a finite training set and fades with fresh data; sigma = 0.8: it holds."""
    train(tmp_path, "chan2024_n_cpu")
    rows = table(tmp_path)
    fresh_low = at(rows, "icl_novel", noise_scale=0.2, N=INF)
    assert fresh_low["transient"] and fresh_low["drop"] > 0.15, fresh_low
    for n in (64, 1024):
        finite = at(rows, "icl_novel", noise_scale=0.2, N=n)
        assert finite["drop"] < 0.05, finite
    fresh_high = at(rows, "icl_novel", noise_scale=0.8, N=INF)
    assert not fresh_high["transient"] and fresh_high["final"] > 0.8, fresh_high
    assert fresh_high["final"] > fresh_low["final"] + 0.4
    assert at(rows, "iwl_no_support", noise_scale=0.2, N=INF)["final"] > 0.9  # IWL took over


def test_chan2024_icl_on_rare_classes_iwl_on_common_ones(tmp_path):
    """p_high = 0.9: the rare classes are answered from the context (icl_flip) and the common ones from the
    weights (iwl_no_support); with p_high = 0.5 (the two groups equally frequent) ICL does not favour either group
    and the gap in IWL between them is much smaller."""
    train(tmp_path, "chan2024_phigh_cpu")
    rows = table(tmp_path)
    skewed = {s: at(rows, s, p_high=0.9)["final"] for s in SERIES}
    assert skewed["icl_flip:rare"] > skewed["icl_flip:common"] + 0.2, skewed
    assert skewed["iwl_no_support:common"] > skewed["iwl_no_support:rare"] + 0.3, skewed
    even = {s: at(rows, s, p_high=0.5)["final"] for s in SERIES}
    assert abs(even["icl_flip:rare"] - even["icl_flip:common"]) < 0.1, even
    gap = {k: v["iwl_no_support:common"] - v["iwl_no_support:rare"] for k, v in (("even", even), ("skewed", skewed))}
    assert gap["skewed"] > gap["even"] + 0.3, gap


def test_chan2024_more_relevant_items_help_icl(tmp_path):
    """L = 4: ICL grows with the number of relevant context items L_relevant."""
    train(tmp_path, "chan2024_lrelevant_cpu")
    rows = table(tmp_path)
    for n in (1024, INF):
        one, two, four = (at(rows, "icl_novel", L_relevant=k, N=n)["final"] for k in (1, 2, 4))
        assert one + 0.15 < two and two + 0.15 < four, (n, one, two, four)


def test_chan2024_longer_contexts_with_irrelevant_items_hurt_icl(tmp_path):
    """One relevant item among L: ICL at L = 1 is well above ICL at L = 8 (the ends of the page's -m grid)."""
    for length in (1, 8):
        train(tmp_path / f"L{length}", "chan2024_lrelevant_cpu", f"task.L={length}", "sweep.L_relevant=[1]")
    rows = table(tmp_path)
    for n in (1024, INF):
        short, long = (at(rows, "icl_novel", **{"task.L": k, "N": n})["final"] for k in (1, 8))
        assert short > long + 0.3, (n, short, long)


def test_singh_icl_transient_ciwl_and_weight_decay(tmp_path):
    """ICL rises and fades as the in-weight probes rise; with every context bursty the model answers from memory
    mainly when the memorised label is in the context (CIWL), and L2 weight decay turns ICL transient there."""
    train(tmp_path, "singh2023_transient_cpu")
    rows = table(tmp_path)
    half = {p: at(rows, p, p_bursty=0.5, weight_decay=0.0) for p in ("icl_novel", "iwl_no_support", "ciwl")}
    assert half["icl_novel"]["peak"] > 0.8 and half["icl_novel"]["final"] < 0.4, half["icl_novel"]
    assert half["icl_novel"]["peak_step"] < half["iwl_no_support"]["peak_step"]  # ICL first, IWL after
    assert half["ciwl"]["final"] > 0.9 and half["iwl_no_support"]["final"] > 0.9
    bursty = {p: at(rows, p, p_bursty=1.0, weight_decay=0.0) for p in ("icl_novel", "iwl_no_support", "ciwl")}
    # The CIWL signature. The margin was 0.3, set from one seed before session 5's generator change (gap 0.45); since
    # then seeds 0-2 gave gaps of 0.20-0.24 (docs/reproductions.md), so 0.15: still far from no CIWL (a gap near 0).
    assert bursty["ciwl"]["final"] > bursty["iwl_no_support"]["final"] + 0.15, bursty
    assert not bursty["icl_novel"]["transient"], bursty["icl_novel"]
    decayed = at(rows, "icl_novel", p_bursty=1.0, weight_decay=0.01)
    assert decayed["transient"] and decayed["final"] < bursty["icl_novel"]["final"] - 0.3, decayed
