"""What an item token may read of its context, for predictors that compare items instead of reading tokens.

The transformer answers at every item token of ``x1 y1 ... xL yL xq``: item token j (j = 0 .. L, the query is
j = L) sees the (item, label) pairs i < j. The predictors of iclwl/models/reference.py and iclwl/models/gated.py
answer at the same rows with the same causality, so ``query_only`` and ``train.context_loss`` mean the same for
every arch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def answer_rows(L: int, query_only: bool) -> jax.Array:
    """The item positions answered: (R,) = [L] for the query alone, else 0 .. L."""
    return jnp.array([L]) if query_only else jnp.arange(L + 1)


def visible(rows: jax.Array, L: int) -> jax.Array:
    """(R, L) bool: context pair i is visible from item token rows[r] when i < rows[r]."""
    return rows[:, None] > jnp.arange(L)[None, :]


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity of (B, R, D) and (B, N, D) or (N, D) -> (B, R, N); a zero vector is similar to nothing."""
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return unit(a) @ jnp.swapaxes(unit(b), -1, -2)


def label_mixture(weights: jax.Array, labels: jax.Array, see: jax.Array, n_labels: int) -> jax.Array:
    """Spread (B, R, L) weights over the context pairs onto their labels -> (B, R, n_labels) probabilities.

    ``weights`` must be a distribution over the visible pairs ``see`` (R, L); a row that sees no pair (the first
    item token) gets the uniform distribution, since it has no context to copy from.
    """
    onehot = jax.nn.one_hot(labels, n_labels)  # (B, L, V)
    probs = jnp.einsum("brl,blv->brv", weights, onehot)  # (B, R, V)
    return jnp.where(see.any(-1)[None, :, None], probs, 1.0 / n_labels)
