"""A small causal transformer over (item, label) sequences, in Flax NNX.

Tokens (interleaved, the default)::

    x1  y1  x2  y2  ...  xL  yL  xq          T = 2L + 1 tokens
    ^       ^            ^       ^           logits are read at every item token: the last one answers the query

Items enter through a linear projection and labels through an embedding. With ``tokens='concat'`` each
(item, label) pair is one token ``[x_i ; onehot(y_i)]`` and the query is ``[x_q ; 0]`` (T = L + 1).
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


@dataclasses.dataclass(frozen=True)
class Deferred:
    """The tokens after an attention-only layer, ``h_t = x_t + (sum_s a_ts v_s) W + b``, kept in parts.

    Held are the layer's input x, its attention weights a and values v (per head) and its output projection
    (W, b). The last layer reads only a few query rows, and what it needs of every token is a dot product with
    each query (for a softmax) and a weighted mean (``Attention.reads_inputs``). Both can be taken part by part,
    so the mixing ``a v`` and the projection by W are applied to those few rows only, never to all T tokens.
    """

    base: jax.Array  # (B, T, d) the layer's input x
    weights: jax.Array  # (B, H, T, T) its attention weights a, rows summing to one
    values: jax.Array  # (B, T, H, dh) its values v
    W: jax.Array  # (d, d)
    b: jax.Array  # (d,)

    def at(self, rows: slice) -> jax.Array:
        """(B, R, d): the tokens at ``rows``."""
        mixed = jnp.einsum("bhrs,bshe->brhe", self.weights[:, :, rows], self.values)
        return self.base[:, rows] + mixed.reshape(*mixed.shape[:2], -1) @ self.W + self.b

    def scores(self, u: jax.Array) -> jax.Array:
        """(B, R, G, d) vectors -> (B, G, R, T) their dot products with every token, less ``u . b``.

        ``u . b`` is the same for every token, so a softmax over tokens never sees it (and its gradient would
        be round-off only)."""
        B, R, G, _ = u.shape
        H, dh = self.values.shape[2:]
        uv = jnp.einsum("brghe,bshe->bgrhs", (u @ self.W.T).reshape(B, R, G, H, dh), self.values)
        return jnp.einsum("brgd,btd->bgrt", u, self.base) + jnp.einsum("bgrhs,bhts->bgrt", uv, self.weights)

    def mean(self, w: jax.Array) -> jax.Array:
        """(B, G, R, T) weights, each row summing to one -> (B, R, G, d) the weighted means of the tokens."""
        through = jnp.einsum("bgrt,bhts->bgrhs", w, self.weights)  # weight of each value, through both layers
        mixed = jnp.einsum("bgrhs,bshe->brghe", through, self.values)
        mixed = mixed.reshape(*mixed.shape[:3], -1)  # (B, R, G, d)
        return jnp.einsum("bgrt,btd->brgd", w, self.base) + mixed @ self.W + self.b


def _rows(x: jax.Array | Deferred, rows: slice) -> jax.Array:
    return x.at(rows) if isinstance(x, Deferred) else x[:, rows]


def _causal(rows: slice, T: int) -> np.ndarray:
    """(R, T) bool: which tokens each query row may attend to (itself and those before it)."""
    return np.arange(T)[rows][:, None] >= np.arange(T)[None, :]


@jax.custom_vjp
def _masked_softmax(scores: jax.Array, mask: np.ndarray) -> jax.Array:
    """Softmax over the last axis of the entries where ``mask`` holds (the rest get weight 0).

    The same numbers and gradient as ``jax.nn.softmax(jnp.where(mask, scores, -inf))``; the gradient is written
    out as ``w (g - sum(g w))``, which XLA's CPU backend runs faster than the derived one (a slow reduction
    fusion in the backward pass of the Reddy 2023 model).
    """
    return jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=-1)


def _masked_softmax_fwd(scores: jax.Array, mask: np.ndarray):
    w = _masked_softmax(scores, mask)
    return w, w


def _masked_softmax_bwd(w: jax.Array, g: jax.Array):
    return w * (g - jnp.sum(g * w, axis=-1, keepdims=True)), None  # masked entries: w = 0, so 0


_masked_softmax.defvjp(_masked_softmax_fwd, _masked_softmax_bwd)


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
        T = positions.shape[1]
        if self.reads_inputs(T, len(range(T)[rows])):
            y, weights = self._attend_inputs(x, rows)
        else:
            weights, v = self.weights_values(x, positions, rows, qkv)
            y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.out(y.reshape(*y.shape[:2], -1)), weights

    def weights_values(self, x: jax.Array, positions: jax.Array, rows: slice, qkv: jax.Array | None = None):
        """Attention weights (B, H, R, T) of the query ``rows``, and the values (B, T, H, dh) of every token."""
        B, T = positions.shape
        W = self.qkv.kernel.value  # (d, 3d): queries, keys, values
        d, R = W.shape[0], len(range(T)[rows])
        H, dh = self.n_heads, d // self.n_heads
        if qkv is None and R == T:
            qkv = x @ W
        if qkv is not None:
            q, kv = qkv[:, rows, :d], qkv[..., d:]
        else:  # keys and values of every token, queries only of the rows asked for
            q, kv = x[:, rows] @ W[:, :d], x @ W[:, d:]
        q, q_pos = q.reshape(B, R, H, dh), positions[:, rows]  # (B, R, H, dh)
        k, v = jnp.split(kv.reshape(B, T, 2 * H, dh), 2, axis=2)  # (B, T, H, dh) each
        if self.rotary:
            q, k = rotate(q, q_pos), rotate(k, positions)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)  # (B, H, R, T)
        return _masked_softmax(scores, _causal(rows, T)), v

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
            weights, v = self.attn.weights_values(x, positions, slice(None), qkv)
            return Deferred(x, weights, v, self.attn.out.kernel.value, self.attn.out.bias.value), weights
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
        read = slice(0, T, 2) if self.label_in is not None else slice(0, T)  # item tokens
        if query_only:
            read = slice(T - 1, T)
        n = len(self.blocks)
        # the last block reads a few rows: the one before it, when attention-only, need not project its output
        n_read = len(range(T)[read])
        defer = (n > 1 and not return_attention and self.blocks[-2].mlp is None and self.blocks[-2].ln1 is None
                 and self.blocks[-1].ln1 is None and self.blocks[-1].attn.reads_inputs(T, n_read))  # fmt: skip
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
