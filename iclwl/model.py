"""A small causal transformer over (item, label) sequences, in Flax NNX.

Tokens (interleaved, the default)::

    x1  y1  x2  y2  ...  xL  yL  xq          T = 2L + 1 tokens
    ^       ^            ^       ^           logits are read at every item token: the last one answers the query

Items enter through a linear projection and labels through an embedding. With ``tokens='concat'`` each
(item, label) pair is one token ``[x_i ; onehot(y_i)]`` and the query is ``[x_q ; 0]`` (T = L + 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from iclwl.config import ModelConfig
from iclwl.encoders import make_encoder


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


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.n_heads, self.rotary = cfg.n_heads, cfg.pos == "rotary"
        # no bias: a key bias cannot change the softmax, so its gradient is pure round-off, which Adam would
        # amplify into lr-sized steps (and members of an ensemble would drift from their single runs)
        self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(cfg.d_model, cfg.d_model, rngs=rngs)

    def __call__(self, x: jax.Array | None, positions: jax.Array, rows: jax.Array | None = None,
                 qkv: jax.Array | None = None):  # fmt: skip
        """Causal self-attention of (B, T, d) tokens; with ``rows``, outputs only for those query tokens.

        ``qkv`` (B, T, 3d), when given, is the projection of the tokens, computed by the caller (the first
        layer's comes from projected embedding tables, see ``Transformer.first_projection``); ``x`` is not read.
        """
        B, T = positions.shape
        W = self.qkv.kernel.value  # (d, 3d): queries, keys, values
        d = W.shape[0]
        H, dh = self.n_heads, d // self.n_heads
        rows = jnp.arange(T) if rows is None else rows
        if qkv is None and rows.shape[0] == T:
            qkv = x @ W
        if qkv is not None:
            q, kv = qkv[:, rows, :d], qkv[..., d:]
        else:  # keys and values of every token, queries only of the rows asked for
            q, kv = x[:, rows] @ W[:, :d], x @ W[:, d:]
        q, q_pos = q.reshape(B, rows.shape[0], H, dh), positions[:, rows]  # (B, R, H, dh)
        k, v = jnp.split(kv.reshape(B, T, 2 * H, dh), 2, axis=2)  # (B, T, H, dh) each
        if self.rotary:
            q, k = rotate(q, q_pos), rotate(k, positions)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)  # (B, H, R, T)
        causal = rows[:, None] >= jnp.arange(T)[None, :]  # (R, T)
        weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, rows.shape[0], d)
        return self.out(y), weights


class MLP(nnx.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(d_in, d_hidden, rngs=rngs)
        self.proj = nnx.Linear(d_hidden, d_out, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(jax.nn.gelu(self.fc(x)))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d = cfg.d_model
        self.pre_ln = cfg.layernorm == "pre"
        self.ln1 = nnx.LayerNorm(d, rngs=rngs) if self.pre_ln else None
        self.attn = Attention(cfg, rngs=rngs)
        hidden = round(cfg.mlp_ratio * d)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs) if self.pre_ln and hidden else None
        self.mlp = MLP(d, hidden, d, rngs=rngs) if hidden else None

    def __call__(self, x: jax.Array, positions: jax.Array, rows: jax.Array | None = None,
                 qkv: jax.Array | None = None):  # fmt: skip
        """(B, T, d) -> (B, R, d) at the token indices ``rows`` (all tokens when None), and attention weights.
        ``qkv``: the attention's projection of ``x``, when the caller has it (only without ``ln1``)."""
        h, weights = self.attn(self.ln1(x) if self.ln1 else x, positions, rows, qkv)
        x = (x if rows is None else x[:, rows]) + h
        if self.mlp is not None:
            x = x + self.mlp(self.ln2(x) if self.ln2 else x)
        return x, weights


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
        # Without a LayerNorm before it, the first attention projects a sum of embeddings, so its q, k, v can be
        # summed from projected tables (``first_projection``). That is cheaper when items have at most d features.
        in_width = features if self.label_in is not None else features + n_labels
        self.fuse_first = cfg.n_layers > 0 and cfg.layernorm != "pre" and in_width <= d

    def position_table(self) -> jax.Array | None:
        """(n_positions, d): what each position adds to its token (None for rotary and no positions)."""
        if self.pos_in is not None:
            return self.pos_in.embedding.value
        if self.cfg.pos == "sinusoidal":
            return sinusoidal(jnp.arange(self.n_positions), self.cfg.d_model)
        return None

    def first_projection(self, features: jax.Array, labels: jax.Array, positions: jax.Array) -> jax.Array:
        """(B, T, 3d): the first attention's q, k, v of every token, without projecting the tokens.

        A token is ``item_in(x) + position`` or ``label_in(y) + position``, so its projection by the kernel W is
        a sum of rows of ``E_label W`` and ``E_position W`` and of ``x (W_in W) + b_in W``. The numbers are the
        projection of the tokens (up to rounding); the FLOPs, forward and backward, are about half for the
        Reddy 2023 model, where half the tokens are labels and items have 63 features for d = 128.
        """
        W = self.blocks[0].attn.qkv.kernel.value
        item_in = self.item_in
        item_map = lambda x: x @ (item_in.kernel.value @ W) + item_in.bias.value @ W
        label_map = None if self.label_in is None else lambda y: jnp.take(self.label_in.embedding.value @ W, y, 0)
        qkv = embed_tokens(item_map, label_map, self.n_labels, features, labels)
        table = self.position_table()
        return qkv if table is None else qkv + jnp.take(table @ W, positions, 0)

    def __call__(
        self,
        items: jax.Array,
        labels: jax.Array,
        offset: jax.Array | None = None,
        *,
        query_only: bool = False,
        return_attention: bool = False,
    ):
        """Logits (B, L+1, n_labels) at the item tokens; with ``return_attention`` also (layers, B, H, T, T).

        ``offset`` (B,) shifts the positions (pos='onehot' draws it at random in [0, max_offset]).
        ``query_only`` returns (B, 1, n_labels) for the query alone, and the last layer then computes only the
        query's row: the same numbers, fewer FLOPs.
        """
        features = self.encoder(items)
        h = embed_tokens(self.item_in, self.label_in, self.n_labels, features, labels)  # (B, T, d)
        B, T = h.shape[:2]
        positions = jnp.arange(T)[None, :] + (jnp.zeros((B, 1), jnp.int32) if offset is None else offset[:, None])
        table = self.position_table()
        if table is not None:
            h = h + jnp.take(table, positions, 0)
        qkv = self.first_projection(features, labels, positions) if self.fuse_first else None
        attention = []
        read = jnp.arange(0, T, 2) if self.label_in is not None else jnp.arange(T)  # item tokens
        if query_only:
            read = read[-1:]
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            h, w = block(h, positions, read if last and not return_attention else None, qkv if i == 0 else None)
            attention.append(w)
        if return_attention:
            h = h[:, read]
        if self.ln_f is not None:
            h = self.ln_f(h)  # (B, R, d) at the read tokens
        for layer in self.readout_hidden:
            h = jax.nn.gelu(layer(h))
        logits = self.readout(h)  # (B, R, n_labels)
        return (logits, jnp.stack(attention)) if return_attention else logits
