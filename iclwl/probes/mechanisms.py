"""Mechanistic measures of one probe set: what the attention heads look at, and where an answer comes from.

Pure functions of a layer's attention weights, the batch's classes and labels, and the model's predictions; they
run on the device inside the evaluation (``iclwl.probes.evaluate``) and are tested on hand-built patterns.

Token layout (``model.tokens``), context of L pairs, query last::

    interleaved   x1 y1 x2 y2 ... xL yL xq    T = 2L + 1; item i at 2i, its label at 2i + 1, the query at 2L
    concat        (x1,y1) (x2,y2) ... (xq)    T = L + 1;  pair i at i (item and label in one token), query at L

An item is *relevant* when its class is the query's class. Measures (per head; attention rows sum to 1):

- induction: the query's attention on the label tokens of relevant items, summed. An induction head that reads
  the answer off the context puts all of it there: 1. With concat tokens the label sits in the pair's own token,
  so the target is the relevant pair token itself.
- relevant_mass / irrelevant_mass: the query's attention on all tokens of relevant / of irrelevant context pairs
  (item and label tokens; with concat, the pair token). What is left is on the query itself. Interleaved:
  relevant_mass - induction is the part on the relevant *item* tokens.
- prev_token: a context label token's attention to the item token right before it, averaged over the L label
  tokens: 1 for a previous-token head. Interleaved only; NaN with concat (there is no separate label token).

The query measures are averaged over the sequences whose context holds at least one relevant item (NaN when
none does, as in iwl_no_support); prev_token over all sequences.

Prediction source: each answer (argmax) falls in the first category that holds it, in this order:
  same_class  the label of a relevant context item (what ICL answers);
  memorised   a label the task's fixed map gives the query's class (what IWL answers; none for holdout and
              novel classes, or with label_map='random');
  context     the label of another, irrelevant context item;
  other       anything else.
Same-class before memorised: on in-distribution sequences the two usually agree and the answer is in context.
Memorised before context: where the memorised label also sits on another item (the CIWL probe, flipped labels)
the answer is the one memory gives, which is what those probes ask about.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Tokens = Literal["interleaved", "concat"]


class Attention(NamedTuple):
    """Per-head measures of one layer (``jax.vmap`` over layers gives (layers, H) each)."""

    induction: jax.Array  # (H,)
    relevant_mass: jax.Array  # (H,)
    irrelevant_mass: jax.Array  # (H,)
    prev_token: jax.Array  # (H,)


def relevant(classes: jax.Array) -> jax.Array:
    """(B, L+1) classes, the query's last -> (B, L) whether each context item shares the query's class."""
    return classes[:, :-1] == classes[:, -1:]


def _pair_tokens(mask: jax.Array, tokens: Tokens) -> jax.Array:
    """(B, L) mask over context pairs -> (B, T) mask over the tokens of those pairs (the query's is False)."""
    B = mask.shape[0]
    per_token = jnp.repeat(mask, 2, axis=1) if tokens == "interleaved" else mask  # (B, 2L) or (B, L)
    return jnp.concatenate([per_token, jnp.zeros((B, 1), bool)], axis=1)


def _label_tokens(L: int, tokens: Tokens) -> jax.Array:
    """(L,) token index that holds each context item's label."""
    return 2 * jnp.arange(L) + 1 if tokens == "interleaved" else jnp.arange(L)


def _mean_over(values: jax.Array, keep: jax.Array) -> jax.Array:
    """(B, H) values, (B,) bool -> (H,) mean over the kept sequences; NaN when none is kept."""
    n = jnp.sum(keep)
    total = jnp.sum(jnp.where(keep[:, None], values, 0.0), axis=0)
    return jnp.where(n > 0, total / jnp.maximum(n, 1), jnp.nan)


def induction_score(weights: jax.Array, classes: jax.Array, tokens: Tokens) -> jax.Array:
    """(B, H, T, T) attention of one layer, (B, L+1) classes -> (H,) the query's attention on relevant labels."""
    rel = relevant(classes)  # (B, L)
    query = weights[:, :, -1, :]  # (B, H, T)
    on_labels = query[:, :, _label_tokens(rel.shape[1], tokens)]  # (B, H, L)
    return _mean_over(jnp.sum(jnp.where(rel[:, None, :], on_labels, 0.0), -1), rel.any(-1))


def context_mass(weights: jax.Array, classes: jax.Array, tokens: Tokens) -> tuple[jax.Array, jax.Array]:
    """(B, H, T, T), (B, L+1) -> (H,) the query's attention on relevant pairs' tokens, and on irrelevant ones'."""
    rel = relevant(classes)  # (B, L)
    query = weights[:, :, -1, :]  # (B, H, T)
    on_rel = jnp.sum(jnp.where(_pair_tokens(rel, tokens)[:, None, :], query, 0.0), -1)  # (B, H)
    on_irr = jnp.sum(jnp.where(_pair_tokens(~rel, tokens)[:, None, :], query, 0.0), -1)  # (B, H)
    some = rel.any(-1)
    return _mean_over(on_rel, some), _mean_over(on_irr, some)


def prev_token_score(weights: jax.Array, tokens: Tokens) -> jax.Array:
    """(B, H, T, T) -> (H,) each context label token's attention to its item (interleaved; NaN for concat)."""
    if tokens != "interleaved":
        return jnp.full(weights.shape[1], jnp.nan)
    L = (weights.shape[-1] - 1) // 2
    labels = 2 * jnp.arange(L) + 1
    return jnp.mean(weights[:, :, labels, labels - 1], axis=(0, 2))  # (B, H, L) -> (H,)


def attention_measures(weights: jax.Array, classes: jax.Array, tokens: Tokens) -> Attention:
    """Every measure of one layer: (B, H, T, T) attention, (B, L+1) classes."""
    rel_mass, irr_mass = context_mass(weights, classes, tokens)
    return Attention(induction_score(weights, classes, tokens), rel_mass, irr_mass, prev_token_score(weights, tokens))


def prediction_sources(pred: jax.Array, labels: jax.Array, classes: jax.Array, memorised: jax.Array) -> jax.Array:
    """Shares of answers by source, in ``iclwl.record.measures.SOURCES`` order; they sum to 1.

    pred: (B,) answered labels; labels, classes: (B, L+1) (the last entries are the query's); memorised: (B, S)
    the labels the task's fixed map gives each query's class, -1 where there is none.
    """
    rel = relevant(classes)  # (B, L)
    shown = pred[:, None] == labels[:, :-1]  # (B, L) the answer is this item's label
    same = jnp.any(shown & rel, -1)
    memory = ~same & jnp.any((pred[:, None] == memorised) & (memorised >= 0), -1)
    context = ~same & ~memory & jnp.any(shown & ~rel, -1)
    other = ~(same | memory | context)
    return jnp.mean(jnp.stack([same, memory, context, other], -1).astype(jnp.float32), axis=0)  # (4,)


# ---------------------------------------------------------------------------------- host side: row fields


def headline(measures: dict[str, np.ndarray]) -> dict[str, float | None]:
    """One number per measure from the (layers, H) arrays of a probe set:

    induction: the largest over the last layer's heads (the induction head, where Reddy 2023 finds it);
    relevant_mass, irrelevant_mass: of that same head; prev_token: the largest over the first layer's heads.
    NaN (undefined) becomes None.
    """
    induction = measures["induction"][-1]  # (H,)
    head = int(np.nanargmax(induction)) if not np.all(np.isnan(induction)) else 0
    prev = measures["prev_token"][0]
    return {
        "induction": number(induction[head]),
        "relevant_mass": number(measures["relevant_mass"][-1][head]),
        "irrelevant_mass": number(measures["irrelevant_mass"][-1][head]),
        "prev_token": None if np.all(np.isnan(prev)) else float(np.nanmax(prev)),
    }


def number(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def per_head(values: np.ndarray) -> list[list[float | None]]:
    """(layers, H) -> nested lists for a JSON row, NaN as None."""
    return [[number(v) for v in layer] for layer in np.asarray(values, dtype=float)]
