"""A small causal transformer over (item, label) sequences, in Flax NNX.

Tokens (interleaved, the default)::

    x1  y1  x2  y2  ...  xL  yL  xq          T = 2L + 1 tokens
    ^       ^            ^       ^           logits are read at every item token: the last one answers the query

Items enter through a linear projection and labels through an embedding. With ``tokens='concat'`` each
(item, label) pair is one token ``[x_i ; onehot(y_i)]`` and the query is ``[x_q ; 0]`` (T = L + 1).

Training on the query alone (``query_only``) takes cheaper paths to the same numbers: the last attention projects
no keys or values (``Attention.reads_inputs``), and an attention-only layer before it leaves its values and output
projection to the query row (``Deferred``); without a LayerNorm, the first layer's q, k, v come from projected
embedding tables (``Transformer.first_projection``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from iclwl.config import ModelConfig
from iclwl.models.encoders import make_encoder


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


@dataclasses.dataclass(frozen=True)
class Deferred:
    """The tokens after an attention-only layer, ``h_t = x_t + (sum_s a_ts x_s W_v) W + b``, kept in parts.

    Held are the layer's input x, its attention weights a (per head), its value kernel W_v and its output
    projection (W, b). The last layer reads only a few query rows, and what it needs of every token is a dot
    product with each query (for a softmax) and a weighted mean (``Attention.reads_inputs``). Both can be taken
    part by part, so values, their mixing and the projection by W are computed for those few rows only, never
    for all T tokens.
    """

    base: jax.Array  # (B, T, d) the layer's input x
    weights: jax.Array  # (B, H, T, T) its attention weights a, rows summing to one
    Wv: jax.Array  # (d, H, dh) its value kernel
    W: jax.Array  # (d, d)
    b: jax.Array  # (d,)

    def _project(self, mixed: jax.Array) -> jax.Array:
        """(..., H, d) per-head means of inputs -> (..., d) after the value kernel and the output projection."""
        y = jnp.einsum("...hd,dhe->...he", mixed, self.Wv)
        return y.reshape(*y.shape[:-2], -1) @ self.W

    def at(self, rows: slice) -> jax.Array:
        """(B, R, d): the tokens at ``rows``."""
        mixed = jnp.einsum("bhrs,bsd->brhd", self.weights[:, :, rows], self.base)
        return self.base[:, rows] + self._project(mixed) + self.b

    def scores(self, u: jax.Array) -> jax.Array:
        """(B, R, G, d) vectors -> (B, G, R, T) their dot products with every token, less ``u . b``.

        ``u . b`` is the same for every token, so a softmax over tokens never sees it (and its gradient would
        be round-off only)."""
        B, R, G, _ = u.shape
        H, dh = self.Wv.shape[1:]
        # u . (x_s W_v,h) W_h = (u W_h^T W_v,h^T) . x_s: u read back through each head's value and projection
        back = jnp.einsum("brghe,dhe->brghd", (u @ self.W.T).reshape(B, R, G, H, dh), self.Wv)
        uv = jnp.einsum("brghd,bsd->bgrhs", back, self.base)
        return jnp.einsum("brgd,btd->bgrt", u, self.base) + jnp.einsum("bgrhs,bhts->bgrt", uv, self.weights)

    def mean(self, w: jax.Array) -> jax.Array:
        """(B, G, R, T) weights, each row summing to one -> (B, R, G, d) the weighted means of the tokens."""
        through = jnp.einsum("bgrt,bhts->bgrhs", w, self.weights)  # weight of each input, through both layers
        mixed = jnp.einsum("bgrhs,bsd->brghd", through, self.base)
        return jnp.einsum("bgrt,btd->brgd", w, self.base) + self._project(mixed) + self.b


def _rows(x: jax.Array | Deferred, rows: slice) -> jax.Array:
    return x.at(rows) if isinstance(x, Deferred) else x[:, rows]


def _causal(rows: slice, T: int) -> np.ndarray:
    """(R, T) bool: which tokens each query row may attend to (itself and those before it)."""
    return np.arange(T)[rows][:, None] >= np.arange(T)[None, :]


def _masked_softmax(scores: jax.Array, mask: np.ndarray) -> jax.Array:
    """Softmax over the last axis of the entries where ``mask`` holds (the rest get weight 0)."""
    return jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.n_heads, self.rotary = cfg.n_heads, cfg.pos == "rotary"
        # no bias: a key bias cannot change the softmax, so its gradient is pure round-off, which Adam would
        # amplify into lr-sized steps (and members of an ensemble would drift from their single runs)
        self.qkv = nnx.Linear(cfg.d_model, 3 * cfg.d_model, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(cfg.d_model, cfg.d_model, rngs=rngs)
        # rotary positions rotate the projected keys, so only they must project every token
        self.can_read_inputs = not self.rotary

    def reads_inputs(self, T: int, R: int) -> bool:
        """Whether R query rows of T tokens take the path that projects no keys or values (``_attend_inputs``).

        Projecting keys and values costs about ``2 T d^2`` multiply-adds a sequence; reading the inputs
        ``2 H T R d + 2 R d^2`` more than the queries alone. So the path pays when a few rows are read.
        """
        d = self.qkv.kernel.value.shape[0]
        return self.can_read_inputs and self.n_heads * T * R + R * d < T * d

    def __call__(self, x: jax.Array | Deferred, positions: jax.Array, rows: slice = slice(None),
                 qkv: jax.Array | None = None):  # fmt: skip
        """Causal self-attention of (B, T, d) tokens; outputs only for the query tokens ``rows`` (a slice).

        ``qkv`` (B, T, 3d), when given, is the projection of the tokens, computed by the caller (the first
        layer's comes from projected embedding tables, see ``Transformer.first_projection``). ``x`` may be
        ``Deferred`` when ``reads_inputs``.
        """
        B, T = positions.shape
        if self.reads_inputs(T, len(range(T)[rows])):
            y, weights = self._attend_inputs(x, rows)
        else:
            W = self.qkv.kernel.value
            d = W.shape[0]
            if qkv is None and len(range(T)[rows]) == T:
                qkv = x @ W  # every token's q, k, v in one product
            weights = self.weights(x, positions, rows, qkv)
            v = qkv[..., 2 * d :] if qkv is not None else x @ W[:, 2 * d :]
            y = jnp.einsum("bhqk,bkhd->bqhd", weights, v.reshape(B, T, self.n_heads, -1))
        return self.out(y.reshape(*y.shape[:2], -1)), weights

    def weights(self, x: jax.Array, positions: jax.Array, rows: slice, qk: jax.Array | None = None) -> jax.Array:
        """Attention weights (B, H, R, T) of the query ``rows`` over every token.

        ``qk`` (B, T, >= 2d), when given, holds the queries and keys of the tokens in its first 2d columns."""
        B, T = positions.shape
        W = self.qkv.kernel.value  # (d, 3d): queries, keys, values
        d, R = W.shape[0], len(range(T)[rows])
        H, dh = self.n_heads, d // self.n_heads
        if qk is None and R == T:
            qk = x @ W[:, : 2 * d]
        if qk is not None:
            q, k = qk[:, rows, :d], qk[..., d : 2 * d]
        else:  # keys of every token, queries only of the rows asked for
            q, k = x[:, rows] @ W[:, :d], x @ W[:, d : 2 * d]
        q, k = q.reshape(B, R, H, dh), k.reshape(B, T, H, dh)
        if self.rotary:
            q, k = rotate(q, positions[:, rows]), rotate(k, positions)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)  # (B, H, R, T)
        return _masked_softmax(scores, _causal(rows, T))

    def _attend_inputs(self, x: jax.Array | Deferred, rows: slice):
        """The attention of a few query rows, without projecting the keys and values of every token.

        A score is ``q . (x_t W_k) = (q W_k^T) . x_t`` and the output ``sum_t w_t x_t W_v = (sum_t w_t x_t) W_v``,
        so only the R query rows meet the kernels. Returns the output (B, R, H, dh) before its projection, and
        the weights.
        """
        W = self.qkv.kernel.value
        T = x.base.shape[1] if isinstance(x, Deferred) else x.shape[1]
        d = W.shape[0]
        H, dh = self.n_heads, d // self.n_heads
        Wq, Wk, Wv = (w.reshape(d, H, dh) for w in jnp.split(W, 3, axis=1))
        q = jnp.einsum("brd,dhe->brhe", _rows(x, rows), Wq)  # (B, R, H, dh)
        qk = jnp.einsum("brhe,dhe->brhd", q, Wk) / math.sqrt(dh)  # (B, R, H, d): each query read in input space
        scores = x.scores(qk) if isinstance(x, Deferred) else jnp.einsum("brhd,btd->bhrt", qk, x)  # (B, H, R, T)
        weights = _masked_softmax(scores, _causal(rows, T))
        mixed = x.mean(weights) if isinstance(x, Deferred) else jnp.einsum("bhrt,btd->brhd", weights, x)
        return jnp.einsum("brhd,dhe->brhe", mixed, Wv), weights


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

    def __call__(self, x: jax.Array | Deferred, positions: jax.Array, rows: slice = slice(None),
                 qkv: jax.Array | None = None, defer: bool = False):  # fmt: skip
        """(B, T, d) -> (B, R, d) at the tokens ``rows`` (a slice), and attention weights.
        ``qkv``: the attention's projection of ``x``, when the caller has it (only without ``ln1``).
        ``defer``: for an attention-only block without LayerNorm, return the ``Deferred`` tokens (the mixing of
        values and the output projection left to the next block's few rows)."""
        if defer:
            weights = self.attn.weights(x, positions, slice(None), qkv)
            kernel, H = self.attn.qkv.kernel.value, self.attn.n_heads
            d = kernel.shape[0]
            Wv = kernel[:, 2 * d :].reshape(d, H, d // H)
            return Deferred(x, weights, Wv, self.attn.out.kernel.value, self.attn.out.bias.value), weights
        h, weights = self.attn(self.ln1(x) if self.ln1 else x, positions, rows, qkv)
        x = _rows(x, rows) + h
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

    def first_projection(self, features: jax.Array, labels: jax.Array, positions: jax.Array, columns: int
                         ) -> jax.Array:  # fmt: skip
        """(B, T, columns): the first attention's q, k (and v, for 3d columns) of every token, without
        projecting the tokens.

        A token is ``item_in(x) + position`` or ``label_in(y) + position``, so its projection by the kernel W is
        a sum of rows of ``E_label W`` and ``E_position W`` and of ``x (W_in W) + b_in W``. The numbers are the
        projection of the tokens (up to rounding); the FLOPs, forward and backward, are about half for the
        Reddy 2023 model, where half the tokens are labels and items have 63 features for d = 128.
        """
        W = self.blocks[0].attn.qkv.kernel.value[:, :columns]
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
        read = slice(0, T, 2) if self.label_in is not None else slice(0, T)  # item tokens
        if query_only:
            read = slice(T - 1, T)
        n = len(self.blocks)
        # the last block reads a few rows: the one before it, when attention-only, need not compute its values
        # or project its output for every token (``Deferred``)
        n_read = len(range(T)[read])
        defer = (n > 1 and not return_attention and self.blocks[-2].mlp is None and self.blocks[-2].ln1 is None
                 and self.blocks[-1].ln1 is None and self.blocks[-1].attn.reads_inputs(T, n_read))  # fmt: skip
        qkv = None
        if self.fuse_first:
            d = self.cfg.d_model
            qkv = self.first_projection(features, labels, positions, 2 * d if defer and n == 2 else 3 * d)
        attention = []
        for i, block in enumerate(self.blocks):
            last = i == n - 1
            rows = read if last and not return_attention else slice(None)
            h, w = block(h, positions, rows, qkv if i == 0 else None, defer=defer and i == n - 2)
            attention.append(w)
        if return_attention:
            h = h[:, read]
        if self.ln_f is not None:
            h = self.ln_f(h)  # (B, R, d) at the read tokens
        for layer in self.readout_hidden:
            h = jax.nn.gelu(layer(h))
        logits = self.readout(h)  # (B, R, n_labels)
        return (logits, jnp.stack(attention)) if return_attention else logits
