"""The transformer's fast paths: the logits and gradients of ``iclwl/models/transformer.py`` with fewer FLOPs.

``FastTransformer`` has the parameters of ``Transformer`` and its call; ``model.fast_paths`` (on by default) picks it.
It computes what the plain forward pass computes, reordered where the products are cheaper:

1. **The last block computes only the rows read** (the query, or the item tokens): no later layer reads its
   other rows.
2. **The last attention reads its inputs** (``reads_inputs``) when it answers a few rows: a score is
   ``q . (x_t W_k) = (q W_k^T) . x_t`` and an output ``sum_t w_t x_t W_v = (sum_t w_t x_t) W_v``, so only the
   query rows meet the kernels and no key or value of any token is projected (not with rotary positions, which
   rotate the projected keys).
3. **The block before it is deferred** (``Deferred``) when it is attention-only without LayerNorm: its values,
   their mixing and its output projection are computed for the rows the last block reads, never for every token.
4. **The first projection comes from tables** (``first_projection``) without a LayerNorm before the first
   attention: a token is a sum of embeddings, so its q, k, v are sums of rows of projected embedding tables.

``plan`` says which of them a call takes; ``tests/test_model.py`` checks logits and gradients against the plain
path for every combination. ``docs/benchmarks.md`` gives the speed each one buys.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from iclwl.models.transformer import Attention, Block, Transformer, causal_mask, embed_tokens, masked_softmax, rotate


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which fast paths a call takes (numbered as in the module docstring; the first is always taken)."""

    reads_inputs: bool  # 2: the last attention projects no keys or values
    deferred: bool  # 3: the block before the last is deferred
    first_from_tables: bool  # 4: the first attention's q, k, v come from projected tables


def reads_inputs(attn: Attention, T: int, R: int) -> bool:
    """Whether an attention answering R of T rows should read its inputs instead of projecting every token.

    Projecting keys and values costs about ``2 T d^2`` multiply-adds a sequence; reading the inputs
    ``2 H T R d + 2 R d^2`` more than the queries alone. So the path pays when a few rows are read.
    """
    d = attn.qkv.kernel.value.shape[0]
    return not attn.rotary and attn.n_heads * T * R + R * d < T * d


def plan(model: Transformer, T: int, query_only: bool, return_attention: bool = False) -> Plan:
    """The fast paths of a call on T tokens."""
    blocks, n = model.blocks, len(model.blocks)
    R = len(range(T)[model.answer_tokens(T, query_only)])
    reads = n > 0 and not return_attention and reads_inputs(blocks[-1].attn, T, R)
    deferred = reads and n > 1 and blocks[-2].mlp is None and blocks[-2].ln1 is None and blocks[-1].ln1 is None
    in_width = model.encoder.out_dim + (0 if model.label_in is not None else model.n_labels)
    first = n > 0 and blocks[0].ln1 is None and in_width <= model.cfg.d_model
    return Plan(reads, deferred, first)


@dataclasses.dataclass(frozen=True)
class Deferred:
    """The tokens after an attention-only block, ``h_t = x_t + (sum_s a_ts x_s W_v) W + b``, kept in parts.

    Held are the block's input x, its attention weights a (per head), its value kernel W_v and its output
    projection (W, b). The last block reads only a few rows, and what it needs of every token is a dot product
    with each query (for a softmax) and a weighted mean (``attend_inputs``). Both can be taken part by part, so
    values, their mixing and the projection by W are computed for those few rows only.
    """

    base: jax.Array  # (B, T, d) the block's input x
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
        through = jnp.einsum("bgrt,bhts->bgrhs", w, self.weights)  # weight of each input, through both blocks
        mixed = jnp.einsum("bgrhs,bsd->brghd", through, self.base)
        return jnp.einsum("bgrt,btd->brgd", w, self.base) + self._project(mixed) + self.b


def _rows(x: jax.Array | Deferred, rows: slice) -> jax.Array:
    return x.at(rows) if isinstance(x, Deferred) else x[:, rows]


def attention_weights(attn: Attention, x: jax.Array, positions: jax.Array, rows: slice,
                      qk: jax.Array | None = None) -> jax.Array:  # fmt: skip
    """Attention weights (B, H, R, T) of the query ``rows`` over every token.

    ``qk`` (B, T, >= 2d), when given, holds the queries and keys of the tokens in its first 2d columns."""
    B, T = positions.shape
    W = attn.qkv.kernel.value  # (d, 3d): queries, keys, values
    d, R = W.shape[0], len(range(T)[rows])
    H, dh = attn.n_heads, d // attn.n_heads
    if qk is None and R == T:
        qk = x @ W[:, : 2 * d]
    if qk is not None:
        q, k = qk[:, rows, :d], qk[..., d : 2 * d]
    else:  # keys of every token, queries only of the rows asked for
        q, k = x[:, rows] @ W[:, :d], x @ W[:, d : 2 * d]
    q, k = q.reshape(B, R, H, dh), k.reshape(B, T, H, dh)
    if attn.rotary:
        q, k = rotate(q, positions[:, rows]), rotate(k, positions)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)  # (B, H, R, T)
    return masked_softmax(scores, causal_mask(rows, T))


def attend_inputs(attn: Attention, x: jax.Array | Deferred, rows: slice) -> tuple[jax.Array, jax.Array]:
    """Path 2: the attention of a few query rows, without projecting the keys and values of every token.

    Returns the output (B, R, H, dh) before its projection, and the weights (B, H, R, T)."""
    W = attn.qkv.kernel.value
    T = x.base.shape[1] if isinstance(x, Deferred) else x.shape[1]
    d = W.shape[0]
    H, dh = attn.n_heads, d // attn.n_heads
    Wq, Wk, Wv = (w.reshape(d, H, dh) for w in jnp.split(W, 3, axis=1))
    q = jnp.einsum("brd,dhe->brhe", _rows(x, rows), Wq)  # (B, R, H, dh)
    qk = jnp.einsum("brhe,dhe->brhd", q, Wk) / math.sqrt(dh)  # (B, R, H, d): each query read in input space
    scores = x.scores(qk) if isinstance(x, Deferred) else jnp.einsum("brhd,btd->bhrt", qk, x)  # (B, H, R, T)
    weights = masked_softmax(scores, causal_mask(rows, T))
    mixed = x.mean(weights) if isinstance(x, Deferred) else jnp.einsum("bhrt,btd->brhd", weights, x)
    return jnp.einsum("brhd,dhe->brhe", mixed, Wv), weights


def attend(attn: Attention, x: jax.Array | Deferred, positions: jax.Array, rows: slice, reads: bool,
           qkv: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """``Attention.__call__`` at the query ``rows`` only: (B, R, d) outputs and (B, H, R, T) weights.

    ``reads``: take path 2. ``qkv`` (B, T, 3d): the tokens' projection, when the caller has it (path 4)."""
    B, T = positions.shape
    if reads:
        y, weights = attend_inputs(attn, x, rows)
    else:
        W = attn.qkv.kernel.value
        d = W.shape[0]
        if qkv is None and len(range(T)[rows]) == T:
            qkv = x @ W  # every token's q, k, v in one product
        weights = attention_weights(attn, x, positions, rows, qkv)
        v = qkv[..., 2 * d :] if qkv is not None else x @ W[:, 2 * d :]
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v.reshape(B, T, attn.n_heads, -1))
    return attn.out(y.reshape(*y.shape[:2], -1)), weights


def block_forward(block: Block, x: jax.Array | Deferred, positions: jax.Array, rows: slice, reads: bool,
                  qkv: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """``Block.__call__`` at the tokens ``rows``: (B, R, d) and the attention weights (B, H, R, T)."""
    h, weights = attend(block.attn, block.ln1(x) if block.ln1 else x, positions, rows, reads, qkv)
    x = _rows(x, rows) + h
    if block.mlp is not None:
        x = x + block.mlp(block.ln2(x) if block.ln2 else x)
    return x, weights


def defer(block: Block, x: jax.Array, positions: jax.Array, qkv: jax.Array | None) -> tuple[Deferred, jax.Array]:
    """Path 3: an attention-only block without LayerNorm, its output left in parts for the next block."""
    weights = attention_weights(block.attn, x, positions, slice(None), qkv)
    kernel, H = block.attn.qkv.kernel.value, block.attn.n_heads
    d = kernel.shape[0]
    Wv = kernel[:, 2 * d :].reshape(d, H, d // H)
    return Deferred(x, weights, Wv, block.attn.out.kernel.value, block.attn.out.bias.value), weights


def first_projection(model: Transformer, features: jax.Array, labels: jax.Array, positions: jax.Array,
                     columns: int) -> jax.Array:  # fmt: skip
    """Path 4: (B, T, columns) the first attention's q, k (and v, for 3d columns) of every token, without
    projecting the tokens.

    A token is ``item_in(x) + position`` or ``label_in(y) + position``, so its projection by the kernel W is a
    sum of rows of ``E_label W`` and ``E_position W`` and of ``x (W_in W) + b_in W``. The FLOPs, forward and
    backward, are about half for the Reddy 2023 model, where half the tokens are labels and items have 63
    features for d = 128.
    """
    W = model.blocks[0].attn.qkv.kernel.value[:, :columns]
    item_in = model.item_in
    item_map = lambda x: x @ (item_in.kernel.value @ W) + item_in.bias.value @ W
    label_map = None if model.label_in is None else lambda y: jnp.take(model.label_in.embedding.value @ W, y, 0)
    qkv = embed_tokens(item_map, label_map, model.n_labels, features, labels)
    table = model.position_table()
    return qkv if table is None else qkv + jnp.take(table @ W, positions, 0)


class FastTransformer(Transformer):
    """``Transformer`` with the same parameters, its forward pass taken through the fast paths."""

    def forward(self, h: jax.Array, positions: jax.Array, features: jax.Array, labels: jax.Array, query_only: bool,
                return_attention: bool):  # fmt: skip
        """``Transformer.forward`` through the fast paths; with ``return_attention`` every block computes every row
        (path 4 only). Interventions and activations take the plain path (``Transformer.__call__``)."""
        T = h.shape[1]
        read = self.answer_tokens(T, query_only)
        p, n = plan(self, T, query_only, return_attention), len(self.blocks)
        qkv = None
        if p.first_from_tables:  # a deferred first block needs no values
            d = self.cfg.d_model
            qkv = first_projection(self, features, labels, positions, 2 * d if p.deferred and n == 2 else 3 * d)
        attention = []
        for i, block in enumerate(self.blocks):
            first_qkv = qkv if i == 0 else None
            if p.deferred and i == n - 2:
                h, weights = defer(block, h, positions, first_qkv)
            else:
                last = i == n - 1
                rows = read if last and not return_attention else slice(None)
                h, weights = block_forward(block, h, positions, rows, last and p.reads_inputs, first_qkv)
            attention.append(weights)
        if return_attention:
            h = h[:, read]
        logits = self.head(h)  # (B, R, n_labels)
        return (logits, jnp.stack(attention)) if return_attention else logits
