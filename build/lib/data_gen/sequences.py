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
4. items: prototype plus noise (Reddy's eps or additive sigma) or one of E fixed exemplars (training's share
   of them, or the probes', when the task reserves some for the probes);
5. labels: the fixed map, a per-sequence random labelling, polysemy, label noise; probes may flip them.

With probability p_novel a training sequence is built from fresh classes (new prototypes, random labels).
A finite training set (N > 0) makes sequence i a function of the task key and i alone; a batch samples indices.

A drawn sequence, L = 4, Reddy form, B = 2::

    items:   x_a  x_q  x_a  x_q  | x_q'     (x_q' a new item of class q)
    labels:  7    3    7    3    | 3        (the last label is the target)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from data_gen.spec import TaskParams, TaskStatic
from data_gen.universe import (
    Universe,
    draw_prototypes,
    flipped_labels,
    head_size,
    labels_of,
    make_items,
    rank_weights,
    shares_label,
    trained_labels,
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
    labels: 'task' uses the task's label map; 'random' relabels each sequence with labels that training shows;
      'flip' moves every label to the next class's within its frequency group (``universe.flipped_labels``).
    exclude_query_label: no context item carries the query's label (its class is then absent too).
    ciwl: one context item (of another class) carries the query's true label.
    exemplars: which share of each class's fixed exemplars items show when the task splits them
      (``probe_exemplars`` > 0): 'train' the first exemplars - probe_exemplars, 'probe' the last probe_exemplars.
      Holdout classes, never trained on, show all of theirs either way.
    """

    pool: Literal["train", "holdout"] = "train"
    labels: Literal["task", "random", "flip"] = "task"
    exclude_query_label: bool = False
    ciwl: bool = False
    exemplars: Literal["train", "probe"] = "train"


TRAIN = Draw()


def _uniforms(key: jax.Array, shapes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    """One draw of U[0, 1) numbers, cut into named arrays: one random call instead of many keeps the program
    small (fast to compile) and the generator fast; every decision of a sequence is read off its own slice."""
    sizes = [math.prod(shape) for shape in shapes.values()]
    flat = jax.random.uniform(key, (sum(sizes),))
    out, start = {}, 0
    for (name, shape), size in zip(shapes.items(), sizes, strict=True):
        out[name] = flat[start : start + size].reshape(shape)
        start += size
    return out


def _int(u: jax.Array, low, high) -> jax.Array:
    """Uniform integers in [low, high) from U[0, 1) numbers."""
    return jnp.minimum(low + (u * (high - low)).astype(jnp.int32), high - 1)


def _pool(st: TaskStatic, draw: Draw, uni: Universe, p: TaskParams) -> tuple[jax.Array, jax.Array]:
    """Class ids of the pool and their sampling probabilities."""
    if draw.pool == "train":
        w = rank_weights(st, p)
        return uni.order, w / jnp.sum(w)
    ids = jnp.arange(st.max_classes, st.n_classes, dtype=jnp.int32)
    return ids, jnp.full((st.n_holdout,), 1.0 / st.n_holdout)


def _cdf(prob: jax.Array) -> jax.Array:
    """Normalised CDF of ``prob``, exactly 1 from the last entry with mass on.

    cumsum is a tree-ordered scan on CPU/GPU, so the zero-mass tail (ranks >= K) can sit an ulp above the last
    real entry; a u in that gap would pick a class with no mass.
    """
    last = prob.shape[0] - 1 - jnp.argmax(prob[::-1] > 0)
    cdf = jnp.cumsum(prob)
    return jnp.where(jnp.arange(prob.shape[0]) < last, cdf / cdf[last], 1.0)


def _inverse_cdf(cdf: jax.Array, u: jax.Array) -> jax.Array:
    """Index i with cdf[i-1] <= u < cdf[i]; zero-mass entries are never returned (``cdf`` from ``_cdf``)."""
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), jnp.argmax(cdf >= 1.0))


def _excluding(u: jax.Array, prob: jax.Array, cdf: jax.Array, excluded: jax.Array) -> jax.Array:
    """Pool indices from ``prob`` conditioned on not being any of ``excluded`` (a few distinct indices), one per
    entry of ``u``: the inverse CDF with the excluded intervals cut out (O(log K) each, not O(K))."""
    ex = jnp.sort(excluded)
    mass = prob[ex]
    v = u * (1.0 - jnp.sum(mass))
    for j in range(ex.shape[0]):  # left to right: a point at or past an excluded interval's start skips it
        v = jnp.where(v >= cdf[ex[j]] - mass[j], v + mass[j], v)
    idx = _inverse_cdf(cdf, v)
    # float round-off may land on an excluded class: step to the nearest free one above it with mass, else below
    up, down = idx, idx
    for j in range(ex.shape[0]):
        up = jnp.where(up == ex[j], up + 1, up)
        down = jnp.where(down == ex[-1 - j], down - 1, down)
    K = prob.shape[0]
    return jnp.where((up < K) & (prob[jnp.minimum(up, K - 1)] > 0), up, jnp.maximum(down, 0))


def _distinct_excluding(u: jax.Array, prob: jax.Array, cdf: jax.Array, q: jax.Array) -> jax.Array:
    """len(u) distinct pool indices other than q, drawn one after another in proportion to ``prob`` (sampling
    without replacement, the law of a Gumbel top-n), each from one uniform number."""
    chosen = q[None]
    for i in range(u.shape[0]):
        chosen = jnp.concatenate([chosen, _excluding(u[i], prob, cdf, chosen)[None]])
    return chosen[1:]


def _masked(u: jax.Array, prob: jax.Array, allowed: jax.Array) -> jax.Array:
    """Pool indices from ``prob`` restricted to ``allowed`` (any set), by Gumbel-max over the pool (u: (n, K))."""
    logits = jnp.where(allowed & (prob > 0), jnp.log(prob), -jnp.inf)
    gumbel = -jnp.log(-jnp.log(jnp.maximum(u, jnp.finfo(jnp.float32).tiny)))
    return jnp.argmax(logits + gumbel, axis=-1)


def _draws(st: TaskStatic, draw: Draw, pool: int) -> dict[str, tuple[int, ...]]:
    """The uniform numbers one sequence uses, by name and shape (only what this task and draw need)."""
    L, n_fill = st.L, st.L - st.shots * st.ways
    shapes = {"query": (), "bursty": (), "rel": (), "n_rel": (), "iid": (L,), "place": (L,), "lnoise": (L + 1,),
              "lrand": (L + 1,), "ciwl": (), "novel": (), "exemplar": (L + 1,), "sense": (L + 1,),
              "relabel": (st.n_labels,)}  # fmt: skip
    if draw.exclude_query_label:
        shapes["iid"] = (L, pool)
    shapes["others"] = (L // st.B - 1 if st.burst_form == "reddy" else st.ways - 1,)
    shapes["fill"] = (n_fill if st.burst_form == "chan2022" else 0,)
    return shapes


def _context(st: TaskStatic, draw: Draw, p: TaskParams, ids, prob, q, u) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Canonical context (L,) pool indices, the query's class first; the number of them that are relevant; bursty."""
    L = st.L
    cdf = _cdf(prob)

    # non-bursty: controlled relevance, or plain i.i.d.
    if draw.exclude_query_label:  # probes without support: other classes whose labels differ from the query's
        allowed = ~shares_label(st, ids, ids[q]) if draw.pool == "train" else ids != ids[q]
        # with very few active classes all may share the query's label: then only its class is kept out
        allowed = allowed | (~jnp.any(allowed & (prob > 0)) & (jnp.arange(ids.shape[0]) != q))
        others = _masked(u["iid"], prob, allowed)
    elif st.relevance:
        others = _excluding(u["iid"], prob, cdf, q[None])
    else:
        others = _inverse_cdf(cdf, u["iid"])
    if st.relevance:
        L_rel = p.L_relevant if st.exact_relevant else _int(u["n_rel"], 1, L + 1)
        n_rel = jnp.where(u["rel"] < p.p_relevant, L_rel, 0)
    else:
        n_rel = jnp.zeros((), jnp.int32)
    plain = jnp.where(jnp.arange(L) < n_rel, q, others)

    # bursty
    distinct = _distinct_excluding(u["others"], prob, cdf, q)
    if st.burst_form == "reddy":
        burst = jnp.repeat(jnp.concatenate([q[None], distinct]), st.B, total_repeat_length=L)
        n_burst = st.B
    else:
        block = jnp.repeat(jnp.concatenate([q[None], distinct]), st.shots, total_repeat_length=st.shots * st.ways)
        fillers = _excluding(u["fill"], prob, cdf, jnp.concatenate([q[None], distinct]))
        burst = jnp.concatenate([block, fillers])
        n_burst = st.shots
    bursty = u["bursty"] < p.p_bursty
    return jnp.where(bursty, burst, plain), jnp.where(bursty, n_burst, n_rel), bursty


def _place(st: TaskStatic, p: TaskParams, canon: jax.Array, n_rel: jax.Array, u: jax.Array) -> jax.Array:
    """Order the canonical context: relevant items at random slots, or at distances d, d+1, ... from the query."""
    prio = u
    if st.placement == "distance":
        dist = st.L - jnp.arange(st.L)  # slot p sits L - p pairs before the query
        near = (dist - p.distance) % st.L  # 0 at the requested distance, then farther, wrapping round
        prio = jnp.where(near < n_rel, near, n_rel + prio)
    rank = jnp.argsort(jnp.argsort(prio))  # slot p receives canonical item rank[p]
    return canon[rank]


def _exemplar_range(st: TaskStatic, draw: Draw) -> tuple[int, int]:
    """The exemplar indices [low, high) this draw's items use (see ``Draw.exemplars``)."""
    split = st.exemplars - st.probe_exemplars
    if draw.pool == "holdout" or st.probe_exemplars == 0:
        return 0, st.exemplars
    return (split, st.exemplars) if draw.exemplars == "probe" else (0, split)


def _local_ids(classes: jax.Array) -> jax.Array:
    """Index of each slot's class among the distinct classes of the sequence, in order of first appearance."""
    same = classes[:, None] == classes[None, :]
    first = jnp.argmax(same, axis=1)  # first slot holding the same class
    is_first = first == jnp.arange(classes.shape[0])
    return (jnp.cumsum(is_first) - 1)[first]


def sample_sequence(
    st: TaskStatic, draw: Draw, uni: Universe, p: TaskParams, key: jax.Array, query: jax.Array | None = None
) -> Batch:
    """One sequence (no batch axis). ``query`` >= 0 fixes the query's class to that frequency rank."""
    k_u, k_noise, k_fresh = jax.random.split(key, 3)
    ids, prob = _pool(st, draw, uni, p)
    u = _uniforms(k_u, _draws(st, draw, prob.shape[0]))
    q = _inverse_cdf(_cdf(prob), u["query"])
    if query is not None:
        q = jnp.where(query >= 0, query, q)
    canon, n_rel, bursty = _context(st, draw, p, ids, prob, q, u)
    pool_idx = jnp.concatenate([_place(st, p, canon, n_rel, u["place"]), q[None]])  # (L+1,)
    classes = ids[pool_idx]
    local = _local_ids(classes)
    novel = (draw.pool == "train") & st.novel & (u["novel"] < p.p_novel)

    # items
    e = _int(u["exemplar"], *_exemplar_range(st, draw))  # (L+1,) which fixed exemplar, when there are some
    if st.items == "omniglot":  # a drawing of the class, plus pixel noise when asked
        drawing = uni.images[classes, e]  # (L+1, D)
        noise = jax.random.normal(k_noise, drawing.shape) if st.noise == "additive" else 0.0
        items = drawing + p.noise_scale * noise
    elif st.exemplars > 0:
        eta = uni.exemplar_noise[classes, e]
        if st.novel:  # fresh classes get fresh exemplars
            fresh = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k_noise, i), (st.D,)))
            eta = jnp.where(novel, fresh(local * st.exemplars + e), eta)
    else:
        eta = jax.random.normal(k_noise, (st.L + 1, st.D))
    if st.items == "gaussian":
        mu = uni.prototypes[classes]
        if st.novel:
            mu = jnp.where(novel, draw_prototypes(st, k_fresh, local), mu)
        items = make_items(st, mu, eta, p.noise_scale)

    # labels
    random_labels = draw.labels == "random" or (draw.pool == "train" and st.label_map == "random")
    sense = _int(u["sense"], 0, st.polysemy)
    fixed = labels_of(st, classes, sense)
    if random_labels or st.novel:
        priority = u["relabel"]
        if draw.labels == "random":  # probes: labels that training shows come first
            priority = jnp.where(trained_labels(st, uni, p), priority, 1.0 + priority)
        relabel = jnp.argsort(priority)[local]  # a random injective map: distinct classes, distinct labels
        labels = relabel if random_labels else jnp.where(novel, relabel, fixed)
    else:
        labels = fixed
    if draw.labels == "flip":  # the next class's label in the query's group: a memorised answer is never the target
        labels = flipped_labels(st, uni, p, classes, sense)
    if draw.ciwl:  # the query's label on one context item of another class
        labels = labels.at[_int(u["ciwl"], 0, st.L)].set(labels[-1])
    noisy = u["lnoise"] < p.label_noise
    labels = jnp.where(noisy, _int(u["lrand"], 0, st.n_labels), labels)

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
    """A batch of ``batch_size`` sequences. With N > 0 they are drawn uniformly from the finite training set
    (``stored_sequences``); with N = 0 each is fresh."""
    k_idx, k_fresh = jax.random.split(key)
    idx = jax.random.randint(k_idx, (batch_size,), 0, jnp.maximum(p.N, 1))
    stored_keys, query = _stored(st, draw, uni, p, idx)
    fresh = jax.random.key_data(jax.random.split(k_fresh, batch_size))
    keys = jax.random.wrap_key_data(jnp.where(p.N > 0, jax.random.key_data(stored_keys), fresh))
    if query is not None:
        query = jnp.where(p.N > 0, query, -1)
    return jax.vmap(sample_sequence, (None, None, None, None, 0, 0))(st, draw, uni, p, keys, query)


def stored_sequences(st: TaskStatic, uni: Universe, p: TaskParams, idx: jax.Array) -> Batch:
    """Sequences ``idx`` (int array (n,)) of the finite training set, as training sees them.

    Stored sequence i is a function of the task's key and i alone. With ``query_all_classes``, sequences
    0 .. K-1 have the classes of ranks 0 .. K-1 as their queries, so every training class is asked about;
    the others draw their query from the class frequencies."""
    keys, query = _stored(st, TRAIN, uni, p, idx)
    return jax.vmap(sample_sequence, (None, None, None, None, 0, 0))(st, TRAIN, uni, p, keys, query)


def _stored(st: TaskStatic, draw: Draw, uni: Universe, p: TaskParams, idx: jax.Array):
    """The keys of stored sequences ``idx`` and the query ranks they fix (None when no query is fixed)."""
    dataset_key = jax.random.wrap_key_data(uni.dataset_key)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(dataset_key, idx)
    if not (st.query_all_classes and draw.pool == "train"):
        return keys, None
    return keys, jnp.where(idx < p.K, idx, -1).astype(jnp.int32)


def without_training_noise(p: TaskParams) -> TaskParams:
    """The parameters of an evaluation draw: fresh sequences, no novel classes, no label noise."""
    return p._replace(
        N=jnp.zeros_like(p.N),
        p_novel=jnp.zeros_like(p.p_novel),
        label_noise=jnp.zeros_like(p.label_noise),
    )
