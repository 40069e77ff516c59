"""Interventions on the transformer: read its intermediate activations, ablate heads, clamp attention patterns.

An ``Intervention`` says, per layer and head, how much of a head's output to keep (the rest replaced by a given
vector: zero for zero-ablation, the head's mean output for mean-ablation) and how much of its attention pattern to
replace by a given one (the previous-token or the induction pattern, say)::

    iv = Intervention.none(cfg, T).ablate(layer=1, head=0)          # head 0 of layer 1 zeroed
    logits, acts = model(items, labels, intervention=iv, return_activations=True)
    acts.head_out[1, :, -1, 0]                                      # (B, d): what that head wrote at the query

Every field is an array, so an ensemble's members can carry different interventions in one compiled program. With
no intervention (the default) the transformer takes its usual paths; ``Intervention.none`` (nothing changed) gives
the same logits, by another order of the same sums.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from iclwl.config import ModelConfig


class HeadEdit(NamedTuple):
    """One layer's part of an ``Intervention`` (H heads, model width d, T tokens)."""

    keep: jax.Array  # (H,) 1 keeps a head's output, 0 replaces it by ``fill``
    fill: jax.Array  # (H, d) what a replaced head writes to the residual stream instead
    clamp: jax.Array  # (H,) 0 keeps a head's attention pattern, 1 replaces it by ``pattern``
    pattern: jax.Array  # (H, T, T) the replacing patterns: causal rows that sum to one


class Intervention(NamedTuple):
    """Per layer and head: ``HeadEdit``'s fields with a leading layer axis."""

    keep: jax.Array  # (layers, H)
    fill: jax.Array  # (layers, H, d)
    clamp: jax.Array  # (layers, H)
    pattern: jax.Array  # (layers, H, T, T)

    @classmethod
    def none(cls, cfg: ModelConfig, T: int) -> Intervention:
        """Nothing changed, for a model of ``cfg`` on T tokens (2L + 1 interleaved, L + 1 concatenated)."""
        n, H, d = cfg.n_layers, cfg.n_heads, cfg.d_model
        return cls(jnp.ones((n, H)), jnp.zeros((n, H, d)), jnp.zeros((n, H)), jnp.zeros((n, H, T, T)))

    def layer(self, i: int) -> HeadEdit:
        return HeadEdit(self.keep[i], self.fill[i], self.clamp[i], self.pattern[i])

    def ablate(self, layer: int, head: int, fill: jax.Array | None = None) -> Intervention:
        """This head's output replaced by ``fill`` (d,): zero by default, or its mean output (mean-ablation)."""
        new_fill = self.fill if fill is None else self.fill.at[layer, head].set(fill)
        return self._replace(keep=self.keep.at[layer, head].set(0.0), fill=new_fill)

    def clamp_pattern(self, layer: int, head: int, pattern: jax.Array) -> Intervention:
        """This head attends by ``pattern`` (T, T) instead of its own weights."""
        return self._replace(
            clamp=self.clamp.at[layer, head].set(1.0), pattern=self.pattern.at[layer, head].set(pattern)
        )


class Activations(NamedTuple):
    """What a forward pass computed on the way (B sequences, T tokens), layer-major."""

    resid: jax.Array  # (layers + 1, B, T, d) the residual stream before each block, and after the last
    attention: jax.Array  # (layers, B, H, T, T) attention weights (after any clamp)
    head_out: jax.Array  # (layers, B, T, H, d) each head's share of the attention output (after any ablation)
    attn_out: jax.Array  # (layers, B, T, d) the attention output added to the stream (heads, plus the bias)
    mlp_out: jax.Array  # (layers, B, T, d) the MLP's output added to the stream (zeros without an MLP)


def previous_token_pattern(T: int) -> jax.Array:
    """(T, T): every token attends to the token before it (the first to itself)."""
    return jax.nn.one_hot(jnp.maximum(jnp.arange(T) - 1, 0), T)
