"""A recurrent baseline: stacked LSTMs over the transformer's tokens, read out at the item tokens.

Chan et al. (2022) report that LSTMs and RNNs trained on the same bursty data show no ICL; this model lets a run
check that under the same task, probes and training program. The tokens are the transformer's
(``iclwl.models.transformer.embed_tokens``: ``x1 y1 ... xL yL xq`` interleaved, or one token per pair with
'concat'); there are no positions, since the recurrence itself orders them. Each layer is a
``nnx.OptimizedLSTMCell`` scanned over the sequence from a zero state.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from iclwl.config import ModelConfig
from iclwl.models.transformer import embed_tokens


def run_cell(cell: nnx.OptimizedLSTMCell, x: jax.Array) -> jax.Array:
    """(B, T, d_in) -> (B, T, d) hidden states of one LSTM layer, from a zero state."""
    B, d = x.shape[0], cell.hidden_features
    carry = (jnp.zeros((B, d), x.dtype), jnp.zeros((B, d), x.dtype))  # (c, h)
    _, h = jax.lax.scan(cell, carry, jnp.swapaxes(x, 0, 1))  # (T, B, d)
    return jnp.swapaxes(h, 0, 1)


class LSTM(nnx.Module):
    """Scores the label vocabulary at every item token of ``x1 y1 ... xL yL xq``, reading left to right."""

    def __init__(self, cfg: ModelConfig, item_dim: int, n_labels: int, context_len: int, *, rngs: nnx.Rngs):
        self.n_labels = n_labels
        d = cfg.d_model
        self.interleaved = cfg.tokens == "interleaved"
        if self.interleaved:
            self.item_in = nnx.Linear(item_dim, d, rngs=rngs)
            self.label_in = nnx.Embed(n_labels, d, rngs=rngs)
        else:
            self.item_in = nnx.Linear(item_dim + n_labels, d, rngs=rngs)
            self.label_in = None
        self.lstm = nnx.List([nnx.OptimizedLSTMCell(d, d, rngs=rngs) for _ in range(cfg.n_layers)])
        widths = (d, *cfg.readout_hidden)
        self.readout_hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.readout = nnx.Linear(widths[-1], n_labels, rngs=rngs)

    def __call__(self, items: jax.Array, labels: jax.Array, offset: jax.Array | None = None, *,
                 query_only: bool = False) -> jax.Array:  # fmt: skip
        """Logits (B, L+1, n_labels) at the item tokens, or (B, 1, n_labels) for the query with ``query_only``.

        ``offset`` is accepted for the common signature and unused: an LSTM has no positions to shift.
        """
        h = embed_tokens(self.item_in, self.label_in, self.n_labels, items, labels)  # (B, T, d)
        for cell in self.lstm:
            h = run_cell(cell, h)  # (B, T, d)
        T = h.shape[1]
        read = jnp.arange(0, T, 2) if self.interleaved else jnp.arange(T)  # item tokens
        h = h[:, read[-1:] if query_only else read]  # (B, R, d)
        for layer in self.readout_hidden:
            h = jax.nn.gelu(layer(h))
        return self.readout(h)  # (B, R, n_labels)
