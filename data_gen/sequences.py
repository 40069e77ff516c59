"""Sequence assembly: a task, a key and a batch size give a batch of (item, label) contexts and a query.

One sequence is built in five steps, all pure JAX (it runs inside ``jit`` and ``vmap``):

1. the query's class, from the class frequencies (Zipf or two groups over a fixed random ranking);
2. the context's classes, in canonical order (the query's class first):
   - bursty, with probability p_bursty. Reddy form, L = 8, B = 2: ``a a b b c c q q`` (query class q among
     L/B distinct classes). Chan 2022 form, 3 shots x 2 ways: ``q q q a a a x y`` (x, y i.i.d. fillers of other
     classes);
   - otherwise, when p_relevant is set: with probability p_relevant the query's class fills L_relevant slots
     (1..L uniformly when L_relevant is unset) and other classes fill the rest, i.i.d.; else no slot is
     relevant. When p_relevant is unset: all L slots i.i.d. from the class frequencies;
3. placement: a random order, or the query's items at given distances from the query (``placement='distance'``);
4. items: prototype plus noise (Reddy's eps or additive sigma) or one of E fixed exemplars;
5. labels: the fixed map, a per-sequence random labelling, polysemy, label noise; probes may flip them.

With probability p_novel a training sequence is built from fresh classes (new prototypes, random labels).
A finite training set (N > 0) makes sequence i a function of the task key and i alone; a batch samples indices.

A drawn sequence, L = 4, Reddy form, B = 2::

    items:   x_a  x_q  x_a  x_q  | x_q'     (x_q' a new item of class q)
    labels:  7    3    7    3    | 3        (the last label is the target)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from data_gen.spec import TaskParams, TaskStatic
from data_gen.universe import (
    Universe,
    draw_prototypes,
    head_size,
    labels_of,
    make_items,
    rank_weights,
    shares_label,
)


class Batch(NamedTuple):
    """A batch of sequences; leading axes are whatever the caller vmapped over, then the batch axis."""

    items: jax.Array  # (..., L+1, D) context items, then the query
    labels: jax.Array  # (..., L+1) int32 context labels, then the target
    classes: jax.Array  # (..., L+1) int32 class ids; a fresh (novel) class is -1 - its index in the sequence
    group: jax.Array  # (...,) int32 frequency group of the query: 0 common/high, 1 rare/low, -1 none (holdout, novel)
    bursty: jax.Array  # (...,) bool


@dataclass(frozen=True)
class Draw:
    """How a batch departs from the training distribution (probes use it; training uses the default).

    pool: classes come from the training ranks or, uniformly, from the holdout set.
    labels: 'task' uses the task's label map; 'random' relabels each sequence; 'flip' shifts every label by one.
    exclude_query_label: no context item carries the query's label (its class is then absent too).
    ciwl: one context item (of another class) carries the query's true label.
    """

    pool: Literal["train", "holdout"] = "train"
    labels: Literal["task", "random", "flip"] = "task"
    exclude_query_label: bool = False
    ciwl: bool = False


TRAIN = Draw()


def _split(key: jax.Array, names: str) -> dict[str, jax.Array]:
    names_ = names.split()
    return dict(zip(names_, jax.random.split(key, len(names_)), strict=True))


def _pool(st: TaskStatic, draw: Draw, uni: Universe, p: TaskParams) -> tuple[jax.Array, jax.Array]:
    """Class ids of the pool and their sampling probabilities."""
    if draw.pool == "train":
        w = rank_weights(st, p)
        return uni.order, w / jnp.sum(w)
    ids = jnp.arange(st.max_classes, st.n_classes, dtype=jnp.int32)
    return ids, jnp.full((st.n_holdout,), 1.0 / st.n_holdout)


def _iid_excluding(key: jax.Array, prob: jax.Array, cdf: jax.Array, q: jax.Array, n: int) -> jax.Array:
    """n i.i.d. pool indices from ``prob`` conditioned on not being q, by inverse CDF (O(n log K))."""
    v = jax.random.uniform(key, (n,)) * (1.0 - prob[q])
    x = jnp.where(v < cdf[q] - prob[q], v, v + prob[q])  # skip q's interval of the CDF
    idx = _inverse_cdf(cdf, x)
    # float round-off may land on q itself: take the first other class with mass instead
    fallback = jnp.argmax((prob > 0) & (jnp.arange(prob.shape[0]) != q))
    return jnp.where(idx == q, fallback, idx)


def _inverse_cdf(cdf: jax.Array, u: jax.Array) -> jax.Array:
    """Index i with cdf[i-1] <= u < cdf[i]; zero-mass entries are never returned."""
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1)


def _masked(
    key: jax.Array,
    prob: jax.Array,
    allowed: jax.Array,
    shape: tuple[int, ...],
    distinct: bool,
) -> jax.Array:
    """Pool indices drawn from ``prob`` restricted to ``allowed``: i.i.d., or distinct (Gumbel top-k)."""
    if shape[0] == 0:
        return jnp.zeros(shape, jnp.int32)
    logits = jnp.where(allowed & (prob > 0), jnp.log(prob), -jnp.inf)
    if distinct:
        return jax.lax.top_k(logits + jax.random.gumbel(key, logits.shape), shape[0])[1]
    return jax.random.categorical(key, logits, shape=shape)


def _context(st: TaskStatic, draw: Draw, p: TaskParams, ids, prob, q, key) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Canonical context (L,) pool indices, the query's class first; the number of them that are relevant; bursty."""
    L = st.L
    k = _split(key, "bursty rel n_rel iid others fill")
    cdf = jnp.cumsum(prob)
    cdf = cdf / cdf[-1]
    slot = jnp.arange(L)

    # non-bursty: controlled relevance, or plain i.i.d.
    if draw.exclude_query_label:  # probes without support: other classes whose labels differ from the query's
        allowed = ~shares_label(st, ids, ids[q]) if draw.pool == "train" else ids != ids[q]
        others = _masked(k["iid"], prob, allowed, (L,), distinct=False)
    elif st.relevance:
        others = _iid_excluding(k["iid"], prob, cdf, q, L)
    else:
        others = _inverse_cdf(cdf, jax.random.uniform(k["iid"], (L,)))
    if st.relevance:
        n_rel = L_rel = p.L_relevant if st.exact_relevant else jax.random.randint(k["n_rel"], (), 1, L + 1)
        n_rel = jnp.where(jax.random.bernoulli(k["rel"], p.p_relevant), L_rel, 0)
    else:
        n_rel = jnp.zeros((), jnp.int32)
    plain = jnp.where(slot < n_rel, q, others)

    # bursty
    not_q = jnp.arange(prob.shape[0]) != q
    if st.burst_form == "reddy":
        distinct = _masked(k["others"], prob, not_q, (L // st.B - 1,), distinct=True)
        burst = jnp.repeat(jnp.concatenate([q[None], distinct]), st.B, total_repeat_length=L)
        n_burst = st.B
    else:
        distinct = _masked(k["others"], prob, not_q, (st.ways - 1,), distinct=True)
        block = jnp.repeat(
            jnp.concatenate([q[None], distinct]),
            st.shots,
            total_repeat_length=st.shots * st.ways,
        )
        in_block = jnp.zeros(prob.shape[0], bool).at[block].set(True)
        fillers = _masked(k["fill"], prob, ~in_block, (L - st.shots * st.ways,), distinct=False)
        burst = jnp.concatenate([block, fillers])
        n_burst = st.shots
    bursty = jax.random.bernoulli(k["bursty"], p.p_bursty)
    return jnp.where(bursty, burst, plain), jnp.where(bursty, n_burst, n_rel), bursty


def _place(st: TaskStatic, p: TaskParams, canon: jax.Array, n_rel: jax.Array, key: jax.Array) -> jax.Array:
    """Order the canonical context: relevant items at random slots, or at distances d, d+1, ... from the query."""
    prio = jax.random.uniform(key, (st.L,))
    if st.placement == "distance":
        dist = st.L - jnp.arange(st.L)  # slot p sits L - p pairs before the query
        near = (dist - p.distance) % st.L  # 0 at the requested distance, then farther, wrapping round
        prio = jnp.where(near < n_rel, near, n_rel + prio)
    rank = jnp.argsort(jnp.argsort(prio))  # slot p receives canonical item rank[p]
    return canon[rank]


def _local_ids(classes: jax.Array) -> jax.Array:
    """Index of each slot's class among the distinct classes of the sequence, in order of first appearance."""
    same = classes[:, None] == classes[None, :]
    first = jnp.argmax(same, axis=1)  # first slot holding the same class
    is_first = first == jnp.arange(classes.shape[0])
    return (jnp.cumsum(is_first) - 1)[first]


def sample_sequence(st: TaskStatic, draw: Draw, uni: Universe, p: TaskParams, key: jax.Array) -> Batch:
    """One sequence (no batch axis)."""
    k = _split(
        key,
        "novel query context place exemplar noise proto sense relabel lnoise lrand ciwl",
    )
    ids, prob = _pool(st, draw, uni, p)
    cdf = jnp.cumsum(prob)
    q = _inverse_cdf(cdf / cdf[-1], jax.random.uniform(k["query"]))
    canon, n_rel, bursty = _context(st, draw, p, ids, prob, q, k["context"])
    pool_idx = jnp.concatenate([_place(st, p, canon, n_rel, k["place"]), q[None]])  # (L+1,)
    classes = ids[pool_idx]
    local = _local_ids(classes)
    novel = (draw.pool == "train") & st.novel & jax.random.bernoulli(k["novel"], p.p_novel)

    # items
    if st.exemplars > 0:
        e = jax.random.randint(k["exemplar"], (st.L + 1,), 0, st.exemplars)
        fresh_eta = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k["noise"], i), (st.D,)))(
            local * st.exemplars + e
        )
        eta = jnp.where(novel, fresh_eta, uni.exemplar_noise[classes, e])
    else:
        eta = jax.random.normal(k["noise"], (st.L + 1, st.D))
    mu = jnp.where(novel, draw_prototypes(st, k["proto"], local), uni.prototypes[classes])
    items = make_items(st, mu, eta, p.noise_scale)

    # labels
    sense = jax.random.randint(k["sense"], (st.L + 1,), 0, st.polysemy)
    relabel = jax.random.permutation(k["relabel"], st.n_labels)[local]
    random_labels = draw.labels == "random" or (draw.pool == "train" and st.label_map == "random")
    labels = relabel if random_labels else jnp.where(novel, relabel, labels_of(st, classes, sense))
    if draw.labels == "flip":
        labels = (labels + 1) % st.n_labels
    if draw.ciwl:  # the query's label on one context item of another class
        labels = labels.at[jax.random.randint(k["ciwl"], (), 0, st.L)].set(labels[-1])
    noisy = jax.random.bernoulli(k["lnoise"], p.label_noise, (st.L + 1,))
    labels = jnp.where(noisy, jax.random.randint(k["lrand"], (st.L + 1,), 0, st.n_labels), labels)

    if draw.pool == "train":
        group = jnp.where(novel, -1, (q >= head_size(st, p)).astype(jnp.int32))
    else:
        group = jnp.int32(-1)
    return Batch(
        items=items.astype(jnp.float32),
        labels=labels.astype(jnp.int32),
        classes=jnp.where(novel, -1 - local, classes).astype(jnp.int32),
        group=group.astype(jnp.int32),
        bursty=bursty,
    )


def sample_batch(
    st: TaskStatic,
    uni: Universe,
    p: TaskParams,
    key: jax.Array,
    batch_size: int,
    draw: Draw = TRAIN,
) -> Batch:
    """A batch of ``batch_size`` sequences. With N > 0, sequence keys come from the finite training set."""
    k_idx, k_fresh = jax.random.split(key)
    fresh = jax.random.key_data(jax.random.split(k_fresh, batch_size))
    idx = jax.random.randint(k_idx, (batch_size,), 0, jnp.maximum(p.N, 1))
    dataset_key = jax.random.wrap_key_data(uni.dataset_key)
    fixed = jax.random.key_data(jax.vmap(jax.random.fold_in, (None, 0))(dataset_key, idx))
    keys = jax.random.wrap_key_data(jnp.where(p.N > 0, fixed, fresh))
    return jax.vmap(sample_sequence, (None, None, None, None, 0))(st, draw, uni, p, keys)


def without_training_noise(p: TaskParams) -> TaskParams:
    """The parameters of an evaluation draw: fresh sequences, no novel classes, no label noise."""
    return p._replace(
        N=jnp.zeros_like(p.N),
        p_novel=jnp.zeros_like(p.p_novel),
        label_noise=jnp.zeros_like(p.label_noise),
    )
