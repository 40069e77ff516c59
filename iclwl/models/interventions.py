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

During training (``intervene`` in the config), each member carries one ``EditWindow``: which head, zeroed or
clamped to which pattern (``pattern_bank``: previous-token, induction, uniform), and the steps it applies to; at
step t it becomes the ``Intervention`` of that step (``EditWindow.at``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from iclwl.config import ModelConfig


class HeadEdit(NamedTuple):
    """One layer's part of an ``Intervention`` (H heads, model width d, T tokens)."""

    keep: jax.Array  # (H,) 1 keeps a head's output, 0 replaces it by ``fill``
    fill: jax.Array  # (H, d) what a replaced head writes to the residual stream instead; or (T, H, d), per position
    clamp: jax.Array  # (H,) 0 keeps a head's attention pattern, 1 replaces it by ``pattern``
    pattern: jax.Array  # (H, T, T) the replacing patterns, causal rows that sum to one; or (B, H, T, T), per sequence


class Intervention(NamedTuple):
    """Per layer and head: ``HeadEdit``'s fields with a leading layer axis."""

    keep: jax.Array  # (layers, H)
    fill: jax.Array  # (layers, H, d), or (layers, T, H, d) per position (a mean output, say)
    clamp: jax.Array  # (layers, H)
    pattern: jax.Array  # (layers, H, T, T), or (layers, B, H, T, T) for patterns that depend on the sequence

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


def uniform_pattern(T: int) -> jax.Array:
    """(T, T): every token attends evenly to itself and every token before it."""
    causal = jnp.tril(jnp.ones((T, T)))
    return causal / causal.sum(axis=1, keepdims=True)


def induction_pattern(classes: jax.Array, tokens: str) -> jax.Array:
    """(B, L+1) classes -> (B, T, T): each item token attends evenly to the label tokens of the earlier items of its
    class (with ``tokens='concat'``, to those items' pair tokens), which is what an induction head reads; an item
    with no earlier item of its class, and every label token, attends to itself."""
    B, n = classes.shape  # n = L + 1 items, the query last
    same = (classes[:, :, None] == classes[:, None, :]) & jnp.tril(jnp.ones((n, n), bool), -1)  # (B, n, n) j < i
    if tokens == "interleaved":  # item i at 2i, its label at 2i + 1; rows and columns laid out over T = 2L + 1
        T = 2 * n - 1
        rows = jnp.zeros((B, T, T), bool).at[:, 0::2, 1::2].set(same[:, :, : n - 1])
    else:
        T = n
        rows = same
    none = ~rows.any(axis=-1, keepdims=True)  # (B, T, 1)
    rows = rows | (none & jnp.eye(T, dtype=bool))
    return rows / rows.sum(axis=-1, keepdims=True)


PATTERNS = ("previous_token", "induction", "uniform")  # the patterns a training-time clamp can take, by index
KINDS = ("none", "zero", "clamp")  # what a training-time edit does to its head, by index


def pattern_bank(classes: jax.Array, tokens: str) -> jax.Array:
    """(B, L+1) classes -> (len(PATTERNS), B, T, T): every pattern a clamp can take, for this batch."""
    induction = induction_pattern(classes, tokens)
    B, T = induction.shape[:2]
    fixed = (previous_token_pattern(T), uniform_pattern(T))
    prev, uniform = (jnp.broadcast_to(p, (B, T, T)) for p in fixed)
    return jnp.stack([prev, induction, uniform])


class EditWindow(NamedTuple):
    """One member's training-time edit, as data (``intervene`` in the config): int32 scalars (a leading member
    axis in an ensemble's inputs), indices into ``KINDS`` and ``PATTERNS``."""

    kind: jax.Array
    layer: jax.Array
    head: jax.Array
    pattern: jax.Array
    start: jax.Array  # the edit applies to the steps that start from step count start ...
    stop: jax.Array  # ... up to, not including, stop (-1: to the end)

    def active(self, t: jax.Array) -> jax.Array:
        """Whether the edit applies at step count t (the step that trains on batch t, or the probes after t steps)."""
        return (self.kind > 0) & (t >= self.start) & ((self.stop < 0) | (t < self.stop))

    def at(self, t: jax.Array, cfg: ModelConfig, classes: jax.Array) -> Intervention:
        """The intervention of step count t on a batch of these (B, L+1) classes: nothing changed where inactive."""
        n, H, d = cfg.n_layers, cfg.n_heads, cfg.d_model
        spot = jax.nn.one_hot(self.layer, n)[:, None] * jax.nn.one_hot(self.head, H)[None, :]  # (layers, H)
        on = self.active(t)
        zero = spot * (on & (self.kind == KINDS.index("zero")))
        clamp = spot * (on & (self.kind == KINDS.index("clamp")))
        pattern = pattern_bank(classes, cfg.tokens)[self.pattern]  # (B, T, T)
        B, T = pattern.shape[:2]
        patterns = jnp.broadcast_to(pattern[None, :, None], (n, B, H, T, T))
        return Intervention(1.0 - zero, jnp.zeros((n, H, d)), clamp, patterns)
