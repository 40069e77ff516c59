"""Ablations at evaluation: what each attention head is worth to each probe (``probes.ablations``).

On a probe set, the transformer runs again with one head's output replaced, for every head in turn:

- ``zero``: by zeros;
- ``mean``: by the head's mean output over that probe set's sequences, at each position (mean-ablation keeps
  what the head writes on average and removes only what it writes for this sequence).

A head's **drop** is the probe's accuracy with nothing replaced minus its accuracy with that head replaced: how much
of the probe the head carries (0: nothing; negative: the probe does better without it). Both accuracies come from
the same pass (``Transformer`` with an ``Intervention``), so a head that does nothing drops exactly 0.

With ``probes.ablation_k = k``, also the drop when the k heads of highest induction score are replaced together,
against k heads drawn at random from the others (the mean over ``RANDOM_SETS`` draws, the same draws at every
evaluation; where the others hold at most ``RANDOM_SETS`` sets of k, the mean over all of them): whether the
inductive heads are the load-bearing ones or any k heads would do. The ranking is the member's induction score
(``iclwl.probes.mechanisms``) at this evaluation, averaged over the probe sets that have one.

Cost: one forward pass of each probe set for the reference and one for every head; top-k vs random adds one
for the top-k and one per random set (at most ``RANDOM_SETS``); the mean needs one more to collect the heads'
outputs. These passes take the plain forward pass (every token), the probes' own pass the fast one.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from iclwl.models.interventions import Intervention

RANDOM_SETS = 4  # random sets of k heads the top-k heads are compared with, each evaluation


class Ablation(NamedTuple):
    """One probe set's ablations (``(..., P)`` leading axes in ``ProbeMetrics``)."""

    drop: jax.Array  # (layers, H) accuracy lost when each head is replaced
    topk_drop: jax.Array  # () accuracy lost when the k most inductive heads are replaced; NaN with k = 0
    random_drop: jax.Array  # () the same for k other heads drawn at random, mean over the sets


def head_masks(layers: int, H: int) -> jax.Array:
    """(layers * H, layers, H): one mask per head, layer-major, 1 at that head."""
    return jnp.eye(layers * H).reshape(layers * H, layers, H)


def topk_and_random_masks(score: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """(1 + R, layers, H) masks: the k heads of highest ``score`` (layers, H; NaN ranks last), then R sets of k of
    the other heads: every such set when there are at most RANDOM_SETS of them (R of them, an exact mean), else
    RANDOM_SETS sets drawn uniformly."""
    flat = jnp.nan_to_num(score.reshape(-1), nan=-jnp.inf)
    n = flat.shape[0]
    order = jnp.argsort(-flat, stable=True)  # heads by score, highest first
    top = jnp.zeros(n).at[order[:k]].set(1.0)
    if math.comb(n - k, k) <= RANDOM_SETS:  # few enough: all of them
        picks = jnp.array(list(itertools.combinations(range(n - k), k)))  # (R, k) places among the others
        others = order[k:][picks]  # (R, k) heads
    else:
        draws = jnp.where(top > 0, -1.0, jax.random.uniform(key, (RANDOM_SETS, n)))  # never one of the top heads
        others = jax.vmap(lambda d: jax.lax.top_k(d, k)[1])(draws)  # (RANDOM_SETS, k)
    picked = jax.vmap(lambda idx: jnp.zeros(n).at[idx].set(1.0))(others)
    return jnp.concatenate([top[None], picked]).reshape(-1, *score.shape)


def ablate(model, batch, offset, base: Intervention, how: str, masks: jax.Array) -> jax.Array:
    """(A,) accuracy on ``batch`` (its query) with the heads of each of the A masks (A, layers, H) replaced, on top
    of ``base`` (the edits the probes run with); mask 0 is usually all zeros, the reference."""
    target = batch.labels[:, -1]
    base_fill = base.fill[:, None] if base.fill.ndim == 3 else base.fill  # (layers, 1 or T, H, d)
    if how == "mean":  # each head's mean output at each position, over the sequences
        _, acts = model(batch.items, batch.labels, offset, query_only=True, intervention=base, return_activations=True)
        fill = acts.head_out.mean(axis=1)  # (layers, T, H, d)
    else:
        fill = jnp.zeros_like(base_fill)

    def accuracy(mask):  # (layers, H)
        iv = base._replace(keep=base.keep * (1 - mask), fill=jnp.where(mask[:, None, :, None] > 0, fill, base_fill))
        logits = model(batch.items, batch.labels, offset, query_only=True, intervention=iv)[:, -1]
        return jnp.mean(jnp.argmax(logits, -1) == target)

    return jax.lax.map(accuracy, masks, batch_size=min(len(masks), 16))


def head_ablations(model, batch, offset, base: Intervention, how: str, score: jax.Array | None, k: int,
                   key: jax.Array) -> Ablation:  # fmt: skip
    """Every head's drop on this probe set, and (k > 0, ``score`` the heads' induction scores) top-k vs random."""
    layers, H = base.keep.shape
    masks = [jnp.zeros((1, layers, H)), head_masks(layers, H)]
    if k:
        masks.append(topk_and_random_masks(score, k, key))
    acc = ablate(model, batch, offset, base, how, jnp.concatenate(masks))
    drop = acc[0] - acc[1 : 1 + layers * H]
    if not k:
        return Ablation(drop.reshape(layers, H), jnp.float32(jnp.nan), jnp.float32(jnp.nan))
    rest = acc[1 + layers * H :]
    return Ablation(drop.reshape(layers, H), acc[0] - rest[0], jnp.mean(acc[0] - rest[1:]))
