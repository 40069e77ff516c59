"""Statistical tests of data_gen: realised rates match the knobs, within 5-sigma binomial bounds (so they don't flake).

Every test draws >= 10,000 sequences from fixed keys inside ``jax.jit`` (see _data_gen_util: one compilation per
static setting, the knobs under test are call arguments).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _data_gen_util import (
    CHAN22,
    CHAN24,
    EXACT,
    IID,
    N_SEQ,
    RELEVANT,
    SIGMAS,
    assert_binomial,
    class_counts,
    fixed_labels,
    query_count,
    rank_of,
    sample,
)

from data_gen.sequences import _cdf, _distinct_excluding, _excluding


def query_ranks(template, seeds, **dynamic) -> np.ndarray:
    """Ranks of the query classes of N_SEQ sequences per seed."""
    draws = [sample(template, seed, **dynamic) for seed in seeds]
    return np.concatenate([rank_of(uni)[b.classes[:, -1]] for b, uni in draws])


# ------------------------------------------------------------------------------------------------ burstiness


@pytest.mark.parametrize("p_bursty", [0.0, 0.1, 0.5, 0.85, 1.0])
def test_p_bursty(p_bursty: float):
    b, _ = sample(IID, seed=1, p_bursty=p_bursty, p_novel=0.0)
    assert_binomial(b.bursty.sum(), N_SEQ, p_bursty, "bursty sequences")
    # the flag tells the truth: bursty rows have the Reddy form, the query's class B times
    counts = query_count(b)
    assert np.all(counts[b.bursty] == 2)
    if 0 < p_bursty < 1:  # i.i.d. rows mostly hold no item of the query's class (64 classes, 8 slots)
        assert np.mean(counts[~b.bursty] == 2) < 0.2


@pytest.mark.parametrize(("K", "alpha"), [(None, 0.0), (4, 0.0), (16, 2.0)])
def test_reddy_bursts(K: int | None, alpha: float):
    """L/B = 4 classes, each exactly B = 2 times, the query's among them (K = 4: every active class, every time)."""
    b, uni = sample(IID, seed=2, K=K, alpha=alpha, p_bursty=1.0, p_novel=0.0)
    ctx = b.classes[:, :-1]
    assert np.all(class_counts(ctx) == 2)
    assert np.all(query_count(b) == 2)
    distinct = np.sort(ctx, axis=1)[:, ::2]
    assert np.all(np.diff(distinct, axis=1) > 0)  # 4 distinct classes
    ranks = rank_of(uni)[b.classes]
    assert ranks.max() < (K or 64)
    if K == 4:
        assert np.all(np.sort(ranks[:, :-1], axis=1) == np.repeat(np.arange(4), 2))


@pytest.mark.parametrize("K", [3, None])
def test_chan2022_bursts(K: int | None):
    """Query's class exactly `shots` times, one other class exactly `shots` times, fillers of other classes."""
    b, uni = sample(CHAN22, seed=3, K=K)
    ctx, q = b.classes[:, :-1], b.classes[:, -1]
    counts = class_counts(ctx)
    assert np.all(query_count(b) == 3)
    in_block = counts == 3
    assert np.all(in_block.sum(1) == 6)  # two classes of three items: the query's and one other
    other = np.where(in_block & (ctx != q[:, None]), ctx, -1).max(1)
    assert np.all((other >= 0) & (other != q))
    fillers = ctx[~in_block].reshape(-1, 2)
    assert np.all((fillers != q[:, None]) & (fillers != other[:, None]))
    assert np.all(rank_of(uni)[b.classes] < (K or 64))
    if K is None:  # fillers are i.i.d., so two of them share a class now and then
        assert 0 < np.mean(fillers[:, 0] == fillers[:, 1]) < 0.5


def test_distinct_and_excluding_draws_follow_the_class_frequencies():
    """The other classes of a burst are drawn one after another without replacement, in proportion to their
    frequency (ordered pair (a, b) after q: p_a / (1 - p_q) * p_b / (1 - p_q - p_a)); fillers are i.i.d. from the
    frequencies with the block's classes cut out. Exact laws on 5 classes (the last with no mass), 20,000 draws."""
    prob = jnp.array([0.4, 0.3, 0.2, 0.1, 0.0])
    q, n = 1, 20_000
    u = jax.random.uniform(jax.random.key(0), (n, 2))
    pairs = np.asarray(jax.jit(jax.vmap(lambda u: _distinct_excluding(u, prob, _cdf(prob), jnp.int32(q))))(u))
    P = np.asarray(prob, np.float64)
    for a, b in itertools.permutations([0, 2, 3, 4], 2):
        expected = P[a] / (1 - P[q]) * P[b] / (1 - P[q] - P[a])
        assert_binomial(np.sum((pairs[:, 0] == a) & (pairs[:, 1] == b)), n, expected, f"ordered pair {a}, {b}")
    fill = np.asarray(jax.jit(lambda u: _excluding(u, prob, _cdf(prob), jnp.array([2, 0])))(u[:, 0]))
    for c in range(5):
        assert_binomial(np.sum(fill == c), n, 0.0 if c in (0, 2) else P[c] / (1 - P[0] - P[2]), f"filler {c}")


# ------------------------------------------------------------------------------------------ relevance control


@pytest.mark.parametrize("p_relevant", [0.0, 0.2, 0.7, 1.0])
def test_p_relevant(p_relevant: float):
    b, _ = sample(RELEVANT, seed=4, p_relevant=p_relevant)
    assert not b.bursty.any()
    assert_binomial((query_count(b) > 0).sum(), N_SEQ, p_relevant, "sequences with a relevant item")


def test_relevant_count_uniform_without_L_relevant():
    """p_relevant set, L_relevant unset: the number of relevant items is uniform on 1..L."""
    b, _ = sample(RELEVANT, seed=5, p_relevant=0.7)
    counts = query_count(b)
    relevant = counts[counts > 0]
    assert_binomial(relevant.size, N_SEQ, 0.7, "relevant sequences")
    hist = np.bincount(relevant, minlength=9)
    assert hist[0] == 0 and hist.size == 9
    assert_binomial(hist[1:], relevant.size, 1 / 8, "relevant items 1..8")


@pytest.mark.parametrize("L_relevant", [1, 3, 8])
def test_exact_L_relevant(L_relevant: int):
    """Every relevant sequence holds exactly L_relevant items of the query's class, every other one none."""
    b, _ = sample(EXACT, seed=6, p_relevant=0.6, L_relevant=L_relevant)
    counts = query_count(b)
    assert set(np.unique(counts)) <= {0, L_relevant}
    assert_binomial((counts == L_relevant).sum(), N_SEQ, 0.6, "relevant sequences")


# --------------------------------------------------------------------------------------- class frequencies


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5])
def test_zipf_slope(alpha: float):
    """log(freq) of the query's rank against log(rank + 1) has slope -alpha (K = 64 ranks, 100,000 queries).

    Tolerance: 5 standard errors of the least-squares slope, from var(log count_r) ~ (1 - p_r) / (n p_r).
    """
    K = 64
    ranks = query_ranks(IID, range(70, 80), K=K, alpha=alpha, p_bursty=0.0, p_novel=0.0)
    counts, n = np.bincount(ranks, minlength=K), ranks.size
    assert counts.size == K and n == 100_000
    p = np.arange(1, K + 1) ** -alpha
    p /= p.sum()
    fit = n * p >= 100  # ranks with enough expected counts for the log to be near-Gaussian
    assert fit.sum() >= 32
    x, y = np.log(np.arange(1, K + 1)[fit]), np.log(counts[fit])
    w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    slope = (w * y).sum()
    se = math.sqrt((w**2 * (1 - p[fit]) / (n * p[fit])).sum())
    assert se < 0.05
    assert abs(slope + alpha) <= SIGMAS * se, f"slope {slope:.4f}, alpha {alpha}, se {se:.4f}"


@pytest.mark.parametrize("p_high", [0.9, 0.6])
def test_two_group_mass(p_high: float):
    """The top n_high = 5 ranks get mass p_high, shared evenly; the other 5 share 1 - p_high (50,000 queries)."""
    ranks = query_ranks(CHAN24, range(80, 85), p_high=p_high)
    per_rank, n = np.bincount(ranks, minlength=10), ranks.size
    assert n == 50_000
    assert per_rank.size == 10
    assert_binomial(per_rank[:5].sum(), n, p_high, "queries in the high group")
    assert_binomial(per_rank[:5], n, p_high / 5, "each high class")
    assert_binomial(per_rank[5:], n, (1 - p_high) / 5, "each low class")


# ------------------------------------------------------------------------------------------- novel classes


@pytest.mark.parametrize("p_novel", [0.1, 0.35])
def test_p_novel(p_novel: float):
    b, _ = sample(IID, seed=9, p_novel=p_novel, p_bursty=0.5)
    novel_any, novel_all = (b.classes < 0).any(1), (b.classes < 0).all(1)
    assert np.array_equal(novel_any, novel_all)  # a sequence is built from fresh classes entirely, or not at all
    assert_binomial(novel_any.sum(), N_SEQ, p_novel, "novel sequences")
    assert np.array_equal(b.group == -1, novel_any)


# ------------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("label_noise", [0.0, 0.2, 0.5])
def test_label_noise(label_noise: float):
    """A context label leaves the fixed map (class mod 16) with probability label_noise x (1 - 1/16)."""
    b, _ = sample(IID, seed=10, label_noise=label_noise, p_bursty=0.5, p_novel=0.0)
    changed = b.labels[:, :-1] != b.classes[:, :-1] % 16
    assert_binomial(changed.sum(), changed.size, label_noise * (1 - 1 / 16), "noisy context labels")
    assert b.labels.min() >= 0 and b.labels.max() < 16
    if label_noise > 0:  # the noisy label is uniform: it shows up in every other label too
        assert np.unique(b.labels[:, :-1][changed]).size == 16


def test_polysemy():
    """With polysemy 2 (modulo 31), class c shows exactly labels 2c and 2c+1 (mod 31), each half of the time."""
    b, _ = sample(RELEVANT, seed=11, K=16, p_relevant=0.5)
    classes, labels = b.classes.ravel(), b.labels.ravel()
    seen = np.unique(classes)
    assert seen.size == 16
    for c in seen:
        got = labels[classes == c]
        senses = fixed_labels(c, RELEVANT.n_labels, RELEVANT.polysemy)
        assert set(np.unique(got)) == set(senses), c
        assert_binomial((got[:, None] == senses).sum(0), got.size, 1 / 2, f"senses of class {c}")
