"""Exact structural tests of data_gen: what each probe holds, determinism, ensembles, finite sets, items.

All draws use fixed keys; every check is exact (no tolerance).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _data_gen_util import (
    CHAN22,
    CHAN24,
    EXACT,
    FAST_COMPILE,
    IID,
    N_SEQ,
    RELEVANT,
    FastJit,
    fixed_labels,
    numpy,
    probe,
    query_count,
    rank_of,
    sample,
    sampler,
    split,
    universe,
)

import data_gen as dg
from data_gen.sequences import _cdf, _inverse_cdf
from data_gen.universe import rank_weights

N_PROBE = 4096
TRAIN_MAX = 64  # training classes of the templates (96 classes, 32 held out)


def shares_any(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether label sets a (..., P) and b (..., P) have a label in common."""
    return (a[..., :, None] == b[..., None, :]).any((-1, -2))


# ------------------------------------------------------------------------------------------------- probes


@pytest.mark.parametrize("template", [IID, RELEVANT], ids=["polysemy1", "polysemy2"])
def test_iwl_no_support(template: dg.TaskSpec):
    """Neither the query's class nor any of its labels appears in the context (modulo labels, 4 classes a label)."""
    n_labels, polysemy = template.n_labels, template.polysemy
    b, _ = probe("iwl_no_support", template, seed=1)
    q, ctx = b.classes[:, -1], b.classes[:, :-1]
    q_labels = fixed_labels(q, n_labels, polysemy)  # (n, P)
    assert np.all(ctx != q[:, None])
    assert not (b.labels[:, :-1, None] == q_labels[:, None, :]).any()
    assert not shares_any(fixed_labels(ctx, n_labels, polysemy), q_labels[:, None, :]).any()
    assert (b.labels[:, -1:] == q_labels).any(1).all()  # the target is one of the query's own labels
    assert query_count(b).max() == 0 and not b.bursty.any()
    # the exclusion is doing work: in training sequences other classes do carry the query's label
    t, _ = sample(template, seed=1, p_bursty=0.0, p_relevant=0.0 if template.p_relevant is not None else None)
    other_class_same_label = (t.labels[:, :-1] == t.labels[:, -1:]) & (t.classes[:, :-1] != t.classes[:, -1:])
    assert other_class_same_label.any(1).mean() > 0.05


def test_ciwl():
    """The query's class is absent, and exactly one context item (of a class with other labels) has its label."""
    b, _ = probe("ciwl", RELEVANT, seed=2)
    q, ctx, target = b.classes[:, -1], b.classes[:, :-1], b.labels[:, -1]
    assert np.all(ctx != q[:, None])
    carriers = b.labels[:, :-1] == target[:, None]
    assert np.all(carriers.sum(1) == 1)
    q_labels = fixed_labels(q, RELEVANT.n_labels, RELEVANT.polysemy)
    owned = fixed_labels(ctx, RELEVANT.n_labels, RELEVANT.polysemy)
    assert not shares_any(owned, q_labels[:, None, :]).any()  # the carrier's class does not own the label
    rest = b.labels[:, :-1][~carriers].reshape(-1, 7)
    assert not (rest[:, :, None] == q_labels[:, None, :]).any()
    assert np.unique(carriers.argmax(1)).size == 8  # the carrier's slot varies


def test_icl_flip_reddy_shifts_every_label_by_one():
    """k mod 16 labels with every label in use (64 classes): the flip is l -> l + 1 mod 16, on every item."""
    b, _ = probe("icl_flip", IID, seed=3)
    q, ctx, target = b.classes[:, -1], b.classes[:, :-1], b.labels[:, -1]
    assert np.all(target == (q % 16 + 1) % 16)
    assert np.all(b.labels[:, :-1] == (ctx % 16 + 1) % 16)
    relevant = ctx == q[:, None]
    assert np.all(relevant.any(1))  # the target label is in the context, on the query's class
    assert np.all(b.labels[:, :-1][relevant] == np.broadcast_to(target[:, None], ctx.shape)[relevant])
    assert np.all(ctx < TRAIN_MAX)


@pytest.mark.parametrize("K", [10, 7], ids=["K10", "K7"])
def test_icl_flip_stays_within_the_frequency_group(K: int):
    """Chan 2024 (5 high + K - 5 low classes, identity labels): each item's label moves to the next label of its
    own class's group, cyclically, in increasing label order; the target is never the query's own label and always
    a label that training shows (K = 7: labels of the three inactive classes never appear)."""
    b, uni = probe("icl_flip", CHAN24, seed=3, K=K)
    order = np.asarray(uni.order)
    groups = [np.sort(order[:5]), np.sort(order[5:K])]  # labels = class ids (identity)
    for g, labels in enumerate(groups):
        following = {int(c): int(labels[(i + 1) % labels.size]) for i, c in enumerate(labels)}
        in_group = np.isin(b.classes, labels)
        expected = np.vectorize(lambda c, f=following: f.get(int(c), -1))(b.classes)
        assert np.array_equal(b.labels[in_group], expected[in_group]), g
        queries = in_group[:, -1]
        assert queries.any() and np.all(np.isin(b.labels[queries, -1], labels))  # the target's group is the query's
        assert np.all(np.asarray(b.group)[queries] == g)
    assert np.all(b.labels[:, -1] != b.classes[:, -1])
    assert np.all(np.isin(b.labels, order[:K]))


def test_icl_flip_group_of_one_class_uses_the_whole_label_map():
    """n_high = 1: the single high-frequency class has no other label in its group, so its label moves to the
    next label of the whole map; the low group still flips within itself."""
    b, uni = probe("icl_flip", CHAN24, seed=3, n_high=1)
    order = np.asarray(uni.order)
    high, low = int(order[0]), np.sort(order[1:10])
    ranked = np.sort(order[:10])
    queries_high = b.classes[:, -1] == high
    assert queries_high.any()
    assert np.all(b.labels[queries_high, -1] == ranked[(np.searchsorted(ranked, high) + 1) % 10])
    low_q = ~queries_high
    assert np.all(np.isin(b.labels[low_q, -1], low)) and np.all(b.labels[low_q, -1] != b.classes[low_q, -1])


def test_icl_flip_with_polysemy_never_targets_a_memorised_label():
    """With 2 labels a class, the flip moves to the next class's labels, never to the query's own other label."""
    b, _ = probe("icl_flip", dataclasses.replace(IID, polysemy=2, n_labels=31, p_novel=0.0), seed=5)
    q, target = b.classes[:, -1], b.labels[:, -1]
    own = np.stack([(2 * q) % 31, (2 * q + 1) % 31], axis=1)  # the query class's two memorised labels
    assert not np.any((own == target[:, None]).any(1))


def test_icl_novel_labels_are_labels_training_shows():
    """Identity labels with only K = 20 of 64 training classes active: icl_novel labels its holdout classes with the
    20 labels training shows, never with the 44 that no trained class carries (their outputs are never trained)."""
    b, uni = probe("icl_novel", CHAN22, seed=4, K=20)
    shown = np.asarray(uni.order)[:20]  # identity: label = class id
    assert np.all(np.isin(b.labels, shown))
    assert np.unique(b.labels).size == 20


@pytest.mark.parametrize("template", [IID, CHAN22], ids=["reddy", "chan2022"])
def test_icl_novel(template: dg.TaskSpec):
    """Holdout classes only, labelled by a consistent injective map drawn afresh in every sequence."""
    b, _ = probe("icl_novel", template, seed=4)
    assert b.classes.min() >= TRAIN_MAX and b.classes.max() < 96
    same_class = b.classes[:, :, None] == b.classes[:, None, :]
    same_label = b.labels[:, :, None] == b.labels[:, None, :]
    assert np.array_equal(same_class, same_label)  # same class <=> same label, within each sequence
    assert np.all(query_count(b) >= 2) and np.all(b.group == -1)
    # the map is not the fixed one: one class gets many labels across sequences
    c = b.classes[0, -1]
    assert np.unique(b.labels[b.classes == c]).size > 4


def test_shots_k_and_distance_d():
    st, _ = split(IID, {})
    names = dg.probe_names(st, families=True)
    assert [n for n in names if n.startswith(("shots", "distance"))] == [f"shots_{k}" for k in range(9)] + [
        f"distance_{d}" for d in range(1, 9)
    ]


@pytest.mark.parametrize("k", range(9))
def test_shots_k(k: int):
    b, _ = probe(f"shots_{k}", IID, seed=5, n=2048)
    assert np.all(query_count(b) == k)
    assert not b.bursty.any() and b.classes.max() < TRAIN_MAX and b.classes.min() >= 0


@pytest.mark.parametrize("d", range(1, 9))
def test_distance_d(d: int):
    """One relevant item, d pairs before the query: at context slot L - d."""
    b, _ = probe(f"distance_{d}", IID, seed=6, n=2048)
    relevant = b.classes[:, :-1] == b.classes[:, -1:]
    expected = np.zeros(8, bool)
    expected[8 - d] = True
    assert np.all(relevant == expected)


# --------------------------------------------------------------------------------------- training batches


@pytest.mark.parametrize(
    ("template", "dynamic"),
    [
        (IID, dict(p_bursty=0.5, p_novel=0.3)),
        (IID, dict(p_bursty=0.0, p_novel=0.0, alpha=1.0)),
        (RELEVANT, dict(p_bursty=0.5)),
        (EXACT, dict(p_relevant=1.0, L_relevant=8)),
        (CHAN22, dict(p_bursty=0.9)),
        (CHAN24, dict()),
    ],
    ids=["iid_novel", "iid_zipf", "relevant", "exact", "chan2022", "chan2024"],
)
def test_holdout_never_in_training(template: dg.TaskSpec, dynamic: dict):
    """Training classes only (ids below n_classes - n_holdout), or fresh ones (negative ids) in novel sequences."""
    max_classes = template.n_classes - template.n_holdout
    seen = np.zeros(max_classes, bool)
    for seed in range(3):
        b, _ = sample(template, seed=100 + seed, **dynamic)
        assert b.classes.max() < max_classes
        novel = (b.classes < 0).any(1)
        assert np.all(b.classes[~novel] >= 0)
        seen[np.unique(b.classes[~novel])] = True
        if dynamic.get("p_novel", 0) > 0:
            assert novel.any()
            fresh = b.classes[novel]
            assert fresh.max() < 0 and fresh.min() >= -(template.L + 1)  # -1 - index among the sequence's classes
        else:
            assert not novel.any()
    assert seen.all()  # the test did look at every training class


def test_no_zero_mass_rank_is_ever_drawn():
    """Regression: jnp.cumsum is a tree-ordered scan on CPU/GPU, so the zero-mass tail of a class CDF (ranks >= K)
    could sit an ulp above the last active rank, and a uniform in that gap drew an inactive class (rank 304 for
    K = 291, alpha = 0, about once in 6 million draws). Checked for every K of a 512-class pool, at the largest
    float32 below 1 (the largest uniform) and at 1 itself (where round-off in the excluding sampler can land).
    """
    st, p = split(dg.TaskSpec(), {})
    u = jnp.asarray([np.nextafter(np.float32(1), np.float32(0)), 1.0], jnp.float32)

    def drawn(K, alpha):
        w = rank_weights(st, p._replace(K=K, alpha=alpha))
        return _inverse_cdf(_cdf(w / jnp.sum(w)), u)

    Ks, every_K = np.arange(2, 513), jax.jit(jax.vmap(drawn, (0, None)))
    for alpha in (0.0, 0.5, 1.0):
        got = np.asarray(every_K(jnp.asarray(Ks, jnp.int32), alpha))
        assert np.all(got < Ks[:, None]), Ks[(got >= Ks[:, None]).any(1)]
        assert np.all(got[Ks < 512] >= 0)


def test_same_key_same_batch():
    st, p = split(IID, dict(p_bursty=0.5, p_novel=0.0))
    uni, f = universe(st), sampler(st, N_SEQ)
    base = jax.random.key(42)
    a = numpy(f(uni, p, jax.random.fold_in(base, 7)))
    b = numpy(f(uni, p, jax.random.fold_in(base, 7)))
    c = numpy(f(uni, p, jax.random.fold_in(base, 8)))
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.any(np.all(a.items == c.items, axis=(1, 2)))  # no sequence repeats under the next step's key
    assert np.mean(np.all(a.classes == c.classes, axis=1)) < 0.01


def test_vmap_over_members_equals_each_member():
    """A member axis on TaskParams (one compilation) gives every member exactly its own batch."""
    members = [
        dict(p_bursty=0.2, noise_scale=0.1, K=64, alpha=0.0),
        dict(p_bursty=0.9, noise_scale=0.5, K=8, alpha=1.0),
        dict(p_bursty=0.5, noise_scale=0.0, K=32, alpha=2.0, p_novel=0.2),
    ]
    st = dg.static_part(IID)
    ps = [split(IID, dict(p_novel=0.0) | m)[1] for m in members]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *ps)
    assert stacked.K.shape == (3,)
    uni, key = universe(st), jax.random.key(3)
    # compiled with the options of sampler(st, N_SEQ): another XLA optimisation level may round items differently
    ensemble = FastJit(lambda u, p, k: jax.vmap(lambda q: dg.sample_batch(st, u, q, k, N_SEQ))(p), FAST_COMPILE)
    together = numpy(ensemble(uni, stacked, key))
    for i, p in enumerate(ps):
        alone = numpy(sampler(st, N_SEQ)(uni, p, key))
        for name, x, y in zip(dg.Batch._fields, together, alone, strict=True):
            assert np.array_equal(x[i], y), (i, name)
    ranks = rank_of(uni)
    assert ranks[together.classes[1][together.classes[1] >= 0]].max() < 8  # the members really differ
    assert not np.array_equal(together.bursty[0], together.bursty[1])


@pytest.mark.parametrize("p_novel", [0.0, 0.5])
def test_finite_training_set(p_novel: float):
    """N = 4: every batch holds at most 4 distinct sequences, and the same 4 under every batch key."""
    st, p = split(IID, dict(N=4, p_bursty=0.5, p_novel=p_novel))
    uni, f = universe(st), sampler(st, N_SEQ)
    rows = []
    for seed in range(3):
        b = f(uni, p, jax.random.key(seed))
        flat = np.concatenate([np.asarray(x).reshape(N_SEQ, -1).astype(np.float64) for x in b], axis=1)
        distinct = np.unique(flat, axis=0)
        assert len(distinct) == 4  # 10,000 draws of 4 indices: each shows up
        rows.append(distinct)
    assert all(np.array_equal(rows[0], r) for r in rows)
    # an infinite set (N unset) repeats nothing
    st, p = split(IID, dict(p_bursty=0.5, p_novel=p_novel))
    items = np.asarray(f(uni, p, jax.random.key(0)).items)
    assert len(np.unique(items.reshape(N_SEQ, -1), axis=0)) == N_SEQ


_stored = FastJit(dg.stored_sequences, static_argnums=0)


def stored_set(template: dg.TaskSpec, N: int, **dynamic) -> tuple[dg.Batch, dg.Universe]:
    """All N stored sequences of ``template``'s finite training set, in index order."""
    st, p = split(dataclasses.replace(template, **dynamic), dict(N=N))
    uni = universe(st)
    return numpy(_stored(st, uni, p, jnp.arange(N))), uni


def test_query_all_classes_makes_every_class_a_query_of_the_stored_set():
    """Chan 2024, N = 16 >= K = 10: stored sequences 0..9 ask about the classes of ranks 0..9, so every class is a
    query; without the option a rare class is missing from the queries of this small set. The batches that
    training draws come from the same stored set."""
    spec = dataclasses.replace(CHAN24, p_high=0.99)  # 5 rare classes share 1% of the mass
    b, uni = stored_set(spec, 16, query_all_classes=True)
    order = np.asarray(uni.order)
    assert np.array_equal(b.classes[:10, -1], order[:10])
    assert set(b.classes[:, -1]) == set(order[:10])
    without, _ = stored_set(spec, 16, query_all_classes=False)
    assert len(set(without.classes[:, -1])) < 10
    st, p = split(dataclasses.replace(spec, query_all_classes=True), dict(N=16))
    drawn = numpy(sampler(st, N_SEQ)(universe(st), p, jax.random.key(0)))
    stored_rows = {tuple(x) for x in b.classes}
    assert {tuple(x) for x in drawn.classes} == stored_rows  # every stored sequence drawn, nothing else


def test_query_all_classes_needs_N_of_at_least_K():
    spec = dataclasses.replace(CHAN24, query_all_classes=True)
    dg.validate(dataclasses.replace(spec, N=10))
    dg.validate(dataclasses.replace(spec, N=None))  # fresh sequences: nothing to cover
    with pytest.raises(dg.ConfigError) as e:
        dg.validate(dataclasses.replace(spec, N=9))
    assert e.value.field == "task.N" and e.value.value == 9 and "N >= K" in e.value.rule


def test_data_seed_redraws_the_stored_set_and_the_classes():
    """The task's seed is its data seed: another one redraws prototypes, ranking and the stored set; the same one
    gives them identically."""
    a, ua = stored_set(CHAN24, 64, seed=0)
    a2, _ = stored_set(CHAN24, 64, seed=0)
    b, ub = stored_set(CHAN24, 64, seed=1)
    for x, y in zip(a, a2, strict=True):
        assert np.array_equal(x, y)
    assert not np.any(np.all(a.items == b.items, axis=(1, 2)))
    assert not np.array_equal(a.classes, b.classes)
    assert not np.array_equal(np.asarray(ua.order), np.asarray(ub.order))
    assert not np.any(np.all(np.asarray(ua.prototypes) == np.asarray(ub.prototypes), axis=1))


# -------------------------------------------------------------------------------------------------- items


def test_prototypes_do_not_move():
    """Class c's prototype (and exemplars) depend on the seed and c alone, not on n_holdout, n_classes, alpha, ...

    (make_universe runs under jit here: eagerly it costs seconds of op-by-op compilation.)
    """
    assert dg.static_part(dataclasses.replace(IID, alpha=1.0, p_bursty=0.3, K=7)) == dg.static_part(IID)
    base = universe(dg.static_part(dataclasses.replace(IID, exemplars=3)))
    for change in (dict(n_holdout=16), dict(n_classes=160, n_holdout=48)):
        other = universe(dg.static_part(dataclasses.replace(IID, exemplars=3, **change)))
        assert np.array_equal(np.asarray(base.prototypes), np.asarray(other.prototypes)[:96]), change
        assert np.array_equal(np.asarray(base.exemplar_noise), np.asarray(other.exemplar_noise)[:96]), change
    reseeded = universe(dg.static_part(dataclasses.replace(IID, seed=1, exemplars=3)))
    assert not np.any(np.all(np.asarray(reseeded.prototypes) == np.asarray(base.prototypes), axis=1))


@pytest.mark.parametrize("template", [IID, CHAN24], ids=["reddy_noise", "additive_noise"])
def test_noise_free_items_are_prototypes(template: dg.TaskSpec):
    b, uni = sample(template, seed=7, noise_scale=0.0, p_novel=0.0)
    assert np.array_equal(b.items, np.asarray(uni.prototypes)[b.classes])
    b, uni = sample(template, seed=7, noise_scale=0.1, p_novel=0.0)
    assert not np.any(np.all(b.items == np.asarray(uni.prototypes)[b.classes], axis=-1))


def test_single_exemplar():
    """exemplars = 1: every occurrence of a class, in any sequence, is the same item (and not the prototype)."""
    b, uni = sample(dataclasses.replace(CHAN22, exemplars=1, noise_scale=0.5), seed=8, n=N_PROBE)
    classes, items = b.classes.ravel(), b.items.reshape(-1, b.items.shape[-1])
    seen, first = np.unique(classes, return_index=True)  # first occurrence of every class
    assert seen.size == TRAIN_MAX
    assert np.array_equal(items, items[first[classes]])
    assert not np.any(np.all(items == np.asarray(uni.prototypes)[classes], axis=-1))


def test_frequency_group_two_group():
    """group 0 exactly for queries of the top n_high = 5 ranks."""
    b, uni = sample(CHAN24, seed=9, p_high=0.7)
    rank = rank_of(uni)[b.classes[:, -1]]
    assert np.array_equal(b.group, (rank >= 5).astype(np.int32))
    assert 0 < b.group.mean() < 1


def test_frequency_group_zipf():
    """zipf: the common group is the fewest top ranks holding half the mass (32 of 64 classes when uniform)."""
    for alpha in (0.0, 1.0):
        b, uni = sample(IID, seed=10, alpha=alpha, p_novel=0.2)
        w = np.arange(1, 65) ** -alpha
        head = np.sum(np.cumsum(w) / w.sum() < 0.5) + 1
        assert head == (32 if alpha == 0 else 6)
        novel = b.classes[:, -1] < 0
        rank = rank_of(uni)[b.classes[~novel, -1]]
        assert np.array_equal(b.group[~novel], (rank >= head).astype(np.int32))
        assert np.all(b.group[novel] == -1)
