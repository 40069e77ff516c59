"""The transformer: causality, an exact forward pass against NumPy, the query-only path, attention weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from iclwl.config import ModelConfig
from iclwl.models.transformer import Transformer

L, D, V = 4, 5, 7


def make(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return Transformer(cfg, D, V, L, rngs=nnx.Rngs(seed))


def inputs(seed: int = 0, B: int = 3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (B, L + 1, D)), jax.random.randint(k2, (B, L + 1), 0, V)


CONFIGS = [
    ModelConfig(pos="learned"),
    ModelConfig(pos="sinusoidal", layernorm="none"),
    ModelConfig(pos="rotary", n_heads=4, d_model=32),
    ModelConfig(pos="none", mlp_ratio=0.0, readout_hidden=(16, 8)),
    ModelConfig(pos="onehot", max_offset=5),
    ModelConfig(tokens="concat", pos="learned"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pos}-{c.tokens}-{c.layernorm}-mlp{c.mlp_ratio}")
def test_causal(cfg):
    """Changing an item or a label never changes the logits at earlier item tokens."""
    model = make(cfg)
    items, labels = inputs()
    offset = jnp.array([0, 2, 5]) if cfg.max_offset else None
    base = model(items, labels, offset)
    for j in range(L + 1):
        changed = model(items.at[:, j].add(3.0), labels, offset)
        np.testing.assert_allclose(changed[:, :j], base[:, :j], atol=1e-5)
        assert not np.allclose(changed[:, j], base[:, j], atol=1e-4), "the changed item itself must matter"
        if j < L:  # label j sits after item j (interleaved) or in item j's token (concat)
            changed = model(items, labels.at[:, j].set((labels[:, j] + 1) % V), offset)
            seen_from = j + 1 if cfg.tokens == "interleaved" else j
            np.testing.assert_allclose(changed[:, :seen_from], base[:, :seen_from], atol=1e-5)
            assert not np.allclose(changed[:, -1], base[:, -1], atol=1e-5), "the query must see the label"
    # the target (last label) is never read
    np.testing.assert_allclose(model(items, labels.at[:, -1].set(0), offset), base, atol=0)


@pytest.mark.parametrize("cfg", CONFIGS[:5], ids=lambda c: c.pos)
def test_query_only_matches_full(cfg):
    model = make(cfg)
    items, labels = inputs(1)
    full = model(items, labels)
    np.testing.assert_allclose(model(items, labels, query_only=True)[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


FUSABLE = [
    ModelConfig(pos="sinusoidal", layernorm="none"),
    ModelConfig(pos="rotary", layernorm="none", n_heads=4, d_model=32),
    ModelConfig(pos="onehot", layernorm="none", max_offset=5, mlp_ratio=0.0, readout_hidden=(16,)),
    ModelConfig(pos="none", layernorm="none", n_layers=1),
    ModelConfig(tokens="concat", pos="learned", layernorm="none"),
]


@pytest.mark.parametrize("cfg", FUSABLE, ids=lambda c: f"{c.pos}-{c.tokens}-L{c.n_layers}")
@pytest.mark.parametrize("query_only", [False, True])
def test_first_layer_from_projected_tables_matches_projecting_tokens(cfg, query_only):
    """Without a LayerNorm before it, the first attention's q, k, v are summed from projected embedding tables;
    logits and every gradient match the plain path (projecting the tokens) up to rounding."""
    model = make(cfg)
    assert model.fuse_first and not make(ModelConfig(layernorm="pre")).fuse_first
    items, labels = inputs(2)
    offset = jnp.array([0, 3, 5]) if cfg.max_offset else None
    graphdef, params = nnx.split(model)

    def loss(p, fuse):
        m = nnx.merge(graphdef, p)
        m.fuse_first = fuse
        logits = m(items, labels, offset, query_only=query_only)
        return jnp.sum(jnp.sin(logits)), logits

    (_, fused), g_fused = jax.value_and_grad(loss, has_aux=True)(params, True)
    (_, plain), g_plain = jax.value_and_grad(loss, has_aux=True)(params, False)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_plain), strict=True):
        # float32 sums taken in another order: gradients of entries near 0 differ by a few ulps of the large ones
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)


READS_INPUTS = [
    ModelConfig(pos="onehot", layernorm="none", max_offset=5, mlp_ratio=0.0, readout_hidden=(16,)),  # Reddy 2023
    ModelConfig(pos="learned", layernorm="none", mlp_ratio=0.0, n_heads=4, d_model=32, n_layers=3),
    ModelConfig(pos="sinusoidal", layernorm="none", mlp_ratio=0.0, n_heads=2, n_layers=1),
    ModelConfig(pos="learned", layernorm="pre", n_heads=2),  # LayerNorm: the last layer reads, nothing deferred
    ModelConfig(pos="none", layernorm="none", mlp_ratio=2.0, n_heads=2),  # an MLP: nothing deferred
    ModelConfig(tokens="concat", pos="learned", layernorm="none", mlp_ratio=0.0, n_heads=2),
]


@pytest.mark.parametrize("cfg", READS_INPUTS, ids=lambda c: f"{c.pos}-{c.tokens}-{c.layernorm}-{c.n_layers}")
def test_last_layer_reading_its_inputs_matches_projecting_every_token(cfg):
    """The last attention of a query-only pass projects no keys or values of other tokens (and after an
    attention-only layer, that layer's mixing and output projection wait for the query row): logits and
    every gradient match the plain path up to rounding."""
    model = make(cfg)
    T = 2 * L + 1 if cfg.tokens == "interleaved" else L + 1
    assert model.blocks[-1].attn.reads_inputs(T, 1) and not model.blocks[-1].attn.reads_inputs(T, T)
    items, labels = inputs(3)
    offset = jnp.array([0, 3, 5]) if cfg.max_offset else None
    graphdef, params = nnx.split(model)

    def loss(p, reads):
        m = nnx.merge(graphdef, p)
        for block in m.blocks:
            block.attn.can_read_inputs = reads
        logits = m(items, labels, offset, query_only=True)
        return jnp.sum(jnp.sin(3 * logits)), logits

    (_, read), g_read = jax.value_and_grad(loss, has_aux=True)(params, True)
    (_, plain), g_plain = jax.value_and_grad(loss, has_aux=True)(params, False)
    np.testing.assert_allclose(read, plain, rtol=1e-5, atol=1e-5)
    leaves = jax.tree.leaves(g_read)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    for a, b in zip(leaves, jax.tree.leaves(g_plain), strict=True):  # to rounding, relative to each array's scale
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(jnp.abs(b).max())))


def test_attention_weights_are_causal_distributions():
    model = make(ModelConfig(n_layers=3, n_heads=2))
    items, labels = inputs()
    logits, att = model(items, labels, return_attention=True)
    T = 2 * L + 1
    assert att.shape == (3, 3, 2, T, T)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(att, k=1)).max()) == 0.0
    np.testing.assert_allclose(logits, model(items, labels), atol=1e-6)


# ----------------------------------------------------------------------------------- exact forward against NumPy


def _ln(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _gelu(x):  # tanh approximation, as jax.nn.gelu
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_one_block_matches_numpy_with_hand_set_weights():
    """Every parameter set by hand (from a NumPy generator); the forward pass recomputed in NumPy."""
    cfg = ModelConfig(n_layers=1, n_heads=2, d_model=6, mlp_ratio=2.0, pos="learned")
    model = make(cfg)
    rng = np.random.default_rng(0)
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32) * 0.5), params)
    model = nnx.merge(graphdef, params)
    P = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    items, labels = (np.asarray(a) for a in inputs(2, B=2))

    # tokens x1 y1 ... xL yL xq, plus learned positions
    x = items @ P["item_in"]["kernel"] + P["item_in"]["bias"]
    y = P["label_in"]["embedding"][labels[:, :-1]]
    tok = np.concatenate([np.stack([x[:, :-1], y], 2).reshape(2, 2 * L, 6), x[:, -1:]], 1)
    T = tok.shape[1]
    h = tok + P["pos_in"]["embedding"][:T]
    blk = P["blocks"][0]
    a_in = _ln(h, blk["ln1"]["scale"], blk["ln1"]["bias"])
    qkv = (a_in @ blk["attn"]["qkv"]["kernel"]).reshape(2, T, 6, 3)
    q, k, v = (qkv[:, :, 0:2, :], qkv[:, :, 2:4, :], qkv[:, :, 4:6, :])  # (B, T, H, dh)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(3)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    att = np.einsum("bhqk,bkhd->bqhd", _softmax(scores), v).reshape(2, T, 6)
    h = h + att @ blk["attn"]["out"]["kernel"] + blk["attn"]["out"]["bias"]
    m_in = _ln(h, blk["ln2"]["scale"], blk["ln2"]["bias"])
    h = h + _gelu(m_in @ blk["mlp"]["fc"]["kernel"] + blk["mlp"]["fc"]["bias"]) @ blk["mlp"]["proj"]["kernel"]
    h = h + blk["mlp"]["proj"]["bias"]
    h = _ln(h, P["ln_f"]["scale"], P["ln_f"]["bias"])[:, 0::2]
    expected = h @ P["readout"]["kernel"] + P["readout"]["bias"]
    np.testing.assert_allclose(np.asarray(model(items, labels)), expected, rtol=2e-4, atol=2e-4)
