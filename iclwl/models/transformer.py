"""A small causal transformer over (item, label) sequences, in Flax NNX.

Tokens (interleaved, the default)::

    x1  y1  x2  y2  ...  xL  yL  xq          T = 2L + 1 tokens
    ^       ^            ^       ^           logits are read at every item token: the last one answers the query

Items enter through a linear projection and labels through an embedding. With ``tokens='concat'`` each
(item, label) pair is one token ``[x_i ; onehot(y_i)]`` and the query is ``[x_q ; 0]`` (T = L + 1).

Each block is ``h = h + attn(ln1(h))`` then ``h = h + mlp(ln2(h))`` (pre-LayerNorm; ``layernorm='none'`` drops the
LayerNorms, ``mlp_ratio=0`` the MLP), as in GPT-2. This file is the model as written in a textbook: every layer
computes every token. Runs take ``iclwl/models/fast_paths.py`` by default (``model.fast_paths``), which computes the
same logits and gradients with fewer FLOPs; a change to the model made here is then made there too, or runs with
``model.fast_paths=false``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from iclwl.config import ModelConfig
from iclwl.models.encoders import make_encoder
from iclwl.models.interventions import Activations, HeadEdit, Intervention


def sinusoidal(positions: jax.Array, d: int) -> jax.Array:
    """(..., T) integer positions -> (..., T, d) fixed sinusoidal features."""
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(0, d, 2) / d)  # (d/2,)
    angles = positions[..., None] * freqs  # (..., T, d/2)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[..., :d]


def rotate(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotary position embedding of (B, T, H, dh) queries or keys."""
    dh = x.shape[-1]
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(0, dh, 2) / dh)  # (dh/2,)
    angles = positions[:, :, None, None] * freqs  # (B, T, 1, dh/2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(x.shape)


def random_offsets(cfg: ModelConfig, key: jax.Array, n: int) -> jax.Array | None:
    """Position offsets for a batch of n: uniform in [0, max_offset] for pos='onehot' (Reddy 2023), else None."""
    if cfg.max_offset == 0:
        return None
    return jax.random.randint(key, (n,), 0, cfg.max_offset + 1)


def embed_tokens(item_map: Callable, label_map: Callable | None, n_labels: int, items: jax.Array,
                 labels: jax.Array) -> jax.Array:  # fmt: skip
    """(B, L+1, F) items and (B, L+1) labels (the last, the target, is never read) -> (B, T, w) tokens.

    ``item_map`` is a linear map of item features (an ``nnx.Linear``), ``label_map`` one of labels (an
    ``nnx.Embed``). With a label map the tokens interleave ``x1 y1 ... xL yL xq``; without one, each pair is one
    token ``item_map([x_i ; onehot(y_i)])`` and the query ``item_map([x_q ; 0])``. Shared by every arch that reads
    the token sequence.
    """
    B, n, _ = items.shape
    if label_map is None:
        onehot = jax.nn.one_hot(labels, n_labels).at[:, -1].set(0.0)  # hide the target
        return item_map(jnp.concatenate([items, onehot], axis=-1))  # (B, L+1, w)
    x = item_map(items)  # (B, L+1, w)
    y = label_map(labels[:, :-1])  # (B, L, w)
    pairs = jnp.stack([x[:, :-1], y], axis=2).reshape(B, 2 * (n - 1), -1)  # (B, 2L, w)
    return jnp.concatenate([pairs, x[:, -1:]], axis=1)  # (B, 2L+1, w)


def causal_mask(rows: slice, T: int) -> np.ndarray:
    """(R, T) bool: which tokens each query row may attend to (itself and those before it)."""
    return np.arange(T)[rows][:, None] >= np.arange(T)[None, :]


def masked_softmax(scores: jax.Array, mask: np.ndarray) -> jax.Array:
    """Softmax over the last axis of the entries where ``mask`` holds (the rest get weight 0)."""
    return jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)


class Attention(nnx.Module):
    """Causal multi-head self-attention."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.n_heads, self.rotary = cfg.n_heads, cfg.pos == "rotary"
        # no bias: a key bias cannot change the softmax, so its gradient is pure round-off, which Adam would
        # amplify into lr-sized steps (and members of an ensemble would drift from their single runs)
        self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(cfg.d_model, cfg.d_model, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, edit: HeadEdit | None = None):
        """(B, T, d) tokens, (B, T) positions -> (B, T, d) outputs and (B, H, T, T) attention weights; with an
        ``edit`` (iclwl/models/interventions.py) also each head's share of the output, (B, T, H, d)."""
        B, T, d = x.shape
        H = self.n_heads
        q, k, v = (a.reshape(B, T, H, d // H) for a in jnp.split(self.qkv(x), 3, axis=-1))  # (B, T, H, dh) each
        if self.rotary:
            q, k = rotate(q, positions), rotate(k, positions)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // H)  # (B, H, T, T)
        weights = masked_softmax(scores, causal_mask(slice(None), T))
        if edit is not None:  # a clamped head attends by the given pattern
            weights = weights + edit.clamp[:, None, None] * (edit.pattern - weights)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # (B, T, H, dh)
        if edit is None:
            return self.out(y.reshape(B, T, d)), weights
        # the output projection head by head: each head's share, kept or replaced, then summed
        heads = jnp.einsum("bthe,hed->bthd", y, self.out.kernel.value.reshape(H, d // H, d))  # (B, T, H, d)
        heads = edit.keep[:, None] * heads + (1 - edit.keep[:, None]) * edit.fill
        return heads.sum(axis=2) + self.out.bias.value, weights, heads


class MLP(nnx.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(d_in, d_hidden, rngs=rngs)
        self.proj = nnx.Linear(d_hidden, d_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(jax.nn.gelu(self.fc(x)))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.d_model
        pre_ln = cfg.layernorm == "pre"
        self.ln1 = nnx.LayerNorm(d, rngs=rngs) if pre_ln else None
        self.attn = Attention(cfg, rngs=rngs)
        hidden = round(cfg.mlp_ratio * d)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs) if pre_ln and hidden else None
        self.mlp = MLP(d, hidden, d, rngs=rngs) if hidden else None

    def __call__(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, T, d) -> (B, T, d), and the attention weights (B, H, T, T)."""
        h, weights = self.attn(self.ln1(x) if self.ln1 else x, positions)
        x = x + h
        if self.mlp is not None:
            x = x + self.mlp(self.ln2(x) if self.ln2 else x)
        return x, weights

    def edited(self, x: jax.Array, positions: jax.Array, edit: HeadEdit):
        """The block with its heads edited: (B, T, d), and its parts (weights, heads, attention and MLP outputs)."""
        h, weights, heads = self.attn(self.ln1(x) if self.ln1 else x, positions, edit)
        x = x + h
        m = self.mlp(self.ln2(x) if self.ln2 else x) if self.mlp is not None else jnp.zeros_like(x)
        return x + m, (weights, heads, h, m)


class Transformer(nnx.Module):
    """Scores the label vocabulary at every item token of ``x1 y1 ... xL yL xq``."""

    def __init__(self, cfg: ModelConfig, item_dim: int, n_labels: int, context_len: int, *, rngs: nnx.Rngs):
        self.cfg, self.n_labels = cfg, n_labels
        d = cfg.d_model
        n_tokens = 2 * context_len + 1 if cfg.tokens == "interleaved" else context_len + 1
        self.n_positions = n_tokens + cfg.max_offset
        self.encoder = make_encoder(cfg.encoder, item_dim, cfg.encoder_width, cfg.encoder_stages, rngs=rngs)
        features = self.encoder.out_dim
        if cfg.tokens == "interleaved":
            self.item_in = nnx.Linear(features, d, rngs=rngs)
            self.label_in = nnx.Embed(n_labels, d, rngs=rngs)
        else:
            self.item_in = nnx.Linear(features + n_labels, d, rngs=rngs)
            self.label_in = None
        self.pos_in = nnx.Embed(self.n_positions, d, rngs=rngs) if cfg.pos in ("learned", "onehot") else None
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = nnx.LayerNorm(d, rngs=rngs) if cfg.layernorm == "pre" else None
        widths = (d, *cfg.readout_hidden)
        self.readout_hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.readout = nnx.Linear(widths[-1], n_labels, rngs=rngs)

    def position_table(self) -> jax.Array | None:
        """(n_positions, d): what each position adds to its token (None for rotary and no positions)."""
        if self.pos_in is not None:
            return self.pos_in.embedding.value
        if self.cfg.pos == "sinusoidal":
            return sinusoidal(jnp.arange(self.n_positions), self.cfg.d_model)
        return None

    def positions(self, B: int, T: int, offset: jax.Array | None) -> jax.Array:
        """(B, T) the position of every token: 0 .. T-1, shifted by ``offset`` (B,) when given."""
        return jnp.arange(T)[None, :] + (jnp.zeros((B, 1), jnp.int32) if offset is None else offset[:, None])

    def answer_tokens(self, T: int, query_only: bool) -> slice:
        """The tokens the logits are read at: every item token, or the query alone."""
        if query_only:
            return slice(T - 1, T)
        return slice(0, T, 2) if self.label_in is not None else slice(0, T)

    def head(self, h: jax.Array) -> jax.Array:
        """(B, R, d) the last block's output at the answer tokens -> (B, R, n_labels) logits."""
        if self.ln_f is not None:
            h = self.ln_f(h)
        for layer in self.readout_hidden:
            h = jax.nn.gelu(layer(h))
        return self.readout(h)

    def __call__(
        self,
        items: jax.Array,
        labels: jax.Array,
        offset: jax.Array | None = None,
        *,
        query_only: bool = False,
        return_attention: bool = False,
        intervention: Intervention | None = None,
        return_activations: bool = False,
    ):
        """Logits (B, L+1, n_labels) at the item tokens; with ``return_attention`` also (layers, B, H, T, T).

        ``offset`` (B,) shifts the positions (pos='onehot' draws it at random in [0, max_offset]).
        ``query_only`` returns (B, 1, n_labels), the logits of the query alone. ``intervention`` ablates heads or
        clamps their patterns; ``return_activations`` returns ``(logits, Activations)`` instead
        (iclwl/models/interventions.py).
        """
        features = self.encoder(items)  # (B, L+1, F)
        h = embed_tokens(self.item_in, self.label_in, self.n_labels, features, labels)  # (B, T, d)
        B, T = h.shape[:2]
        positions = self.positions(B, T, offset)  # (B, T)
        table = self.position_table()
        if table is not None:
            h = h + jnp.take(table, positions, 0)
        if intervention is not None or return_activations:
            return self._intervened(
                h,
                positions,
                query_only,
                return_attention,
                return_activations,
                intervention if intervention is not None else Intervention.none(self.cfg, T),
            )
        return self.forward(h, positions, features, labels, query_only, return_attention)

    def forward(self, h: jax.Array, positions: jax.Array, features: jax.Array, labels: jax.Array, query_only: bool,
                return_attention: bool):  # fmt: skip
        """The blocks and the readout, from the embedded tokens h (B, T, d) (``FastTransformer`` reorders it)."""
        attention = []
        for block in self.blocks:
            h, weights = block(h, positions)  # (B, T, d), (B, H, T, T)
            attention.append(weights)
        logits = self.head(h[:, self.answer_tokens(h.shape[1], query_only)])  # (B, R, n_labels)
        return (logits, jnp.stack(attention)) if return_attention else logits

    def _intervened(self, h: jax.Array, positions: jax.Array, query_only: bool, return_attention: bool,
                    return_activations: bool, intervention: Intervention):  # fmt: skip
        """The blocks with their heads edited, from the embedded tokens h (B, T, d)."""
        resid, parts = [h], []
        for i, block in enumerate(self.blocks):
            h, part = block.edited(h, positions, intervention.layer(i))
            resid.append(h)
            parts.append(part)
        logits = self.head(h[:, self.answer_tokens(h.shape[1], query_only)])  # (B, R, n_labels)
        weights, heads, attn_out, mlp_out = (jnp.stack(x) for x in zip(*parts, strict=True))
        if return_activations:
            return logits, Activations(jnp.stack(resid), weights, heads, attn_out, mlp_out)
        return (logits, weights) if return_attention else logits
