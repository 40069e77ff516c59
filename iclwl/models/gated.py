"""The gated ICL/IWL model of Chan, Chen, György, Schuurmans (2024): two predictors and a learned choice.

    p(y | x_q, context) = g(x_q) p_IWL(y | x_q) + (1 - g(x_q)) p_ICL(y | x_q, context)

* IWL predictor ``mlp``: an MLP from the query item alone to label logits (what the weights can memorise).
* ICL predictor ``attn``: a softmax over the similarities <W_q x_q, W_k x_i> / sqrt(d) of the query to each
  context item, spread onto those items' labels: a single attention head whose values are the labels.
* gate ``gate``: g(x_q) = sigmoid(w . x_q + b), the weight of the IWL predictor; it depends on the query, so the
  model may trust memory for common classes and the context for rare ones (a constant gate is w = 0).

The names make ``optim.decay_mask`` meaningful: 'mlp' decays the IWL predictor, 'attention' the ICL one. The call
signature is the transformer's; ``query_measures`` gives the gate at the query, which the probes average and a
run records as ``gate_iwl`` in metrics.jsonl (1 = all memory, 0 = all context).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from iclwl.config import ModelConfig
from iclwl.models.context import answer_rows, label_mixture, visible
from iclwl.models.transformer import MLP

FLOOR = 1e-6  # a tiny uniform share of the mixture: the loss stays finite where both predictors rule a label out


class Similarity(nnx.Module):
    """p_ICL: softmax attention of an item over the visible context items, returning their labels' distribution."""

    def __init__(self, item_dim: int, d: int, *, rngs: nnx.Rngs):
        self.q = nnx.Linear(item_dim, d, use_bias=False, rngs=rngs)
        self.k = nnx.Linear(item_dim, d, use_bias=False, rngs=rngs)

    def __call__(self, items: jax.Array, labels: jax.Array, rows: jax.Array, n_labels: int) -> jax.Array:
        """(B, L+1, D) items, (B, L+1) labels, (R,) answer rows -> (B, R, n_labels) probabilities."""
        L = items.shape[1] - 1
        q, k = self.q(items[:, rows]), self.k(items[:, :L])  # (B, R, d), (B, L, d)
        scores = jnp.einsum("brd,bld->brl", q, k) / math.sqrt(q.shape[-1])  # (B, R, L)
        see = visible(rows, L)  # (R, L)
        # a finite mask value: a row that sees nothing gets a harmless uniform softmax (then replaced), not NaN
        weights = jax.nn.softmax(jnp.where(see, scores, -1e30), axis=-1)
        return label_mixture(weights, labels[:, :L], see, n_labels)


class Gated(nnx.Module):
    """Mixes an IWL predictor of the query and an ICL predictor of its context by a learned, query-dependent gate."""

    def __init__(self, cfg: ModelConfig, item_dim: int, n_labels: int, context_len: int, *, rngs: nnx.Rngs):
        self.n_labels = n_labels
        self.mlp = MLP(item_dim, cfg.d_model, n_labels, rngs=rngs)
        self.attn = Similarity(item_dim, cfg.d_model, rngs=rngs)
        self.gate = nnx.Linear(item_dim, 1, rngs=rngs)

    def gate_of(self, x: jax.Array) -> jax.Array:
        """(..., D) items -> (...) weight of the IWL predictor."""
        return jax.nn.sigmoid(self.gate(x)[..., 0])

    def __call__(self, items: jax.Array, labels: jax.Array, offset: jax.Array | None = None, *,
                 query_only: bool = False) -> jax.Array:  # fmt: skip
        """Logits (B, R, n_labels) of the mixture at the item tokens (R = L+1, or 1 with ``query_only``).

        ``offset`` is accepted for the common signature and unused: nothing here depends on positions.
        """
        rows = answer_rows(items.shape[1] - 1, query_only)
        x = items[:, rows]  # (B, R, D)
        p_iwl = jax.nn.softmax(self.mlp(x), axis=-1)  # (B, R, V)
        p_icl = self.attn(items, labels, rows, self.n_labels)  # (B, R, V)
        g = self.gate_of(x)[..., None]  # (B, R, 1)
        p = g * p_iwl + (1.0 - g) * p_icl
        return jnp.log((1.0 - FLOOR) * p + FLOOR / self.n_labels)

    def query_measures(self, items: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        """Per-sequence measures at the query, (B,) each, that the probes average: the gate."""
        return {"gate_iwl": self.gate_of(items[:, -1])}
