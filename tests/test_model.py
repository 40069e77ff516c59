"""The transformer: causality, an exact forward pass against NumPy, the query-only path, attention weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_gen import TaskSpec, static_part
from iclwl.config import ModelConfig
from iclwl.models.architectures import build_model
from iclwl.models.fast_paths import FastTransformer, Plan, plan
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


# (config, the fast paths a query-only call takes): every combination of paths 2-4 (iclwl/models/fast_paths.py)
FAST = [
    (
        ModelConfig(pos="onehot", layernorm="none", max_offset=5, mlp_ratio=0.0, readout_hidden=(16,)),
        Plan(True, True, True),
    ),  # Reddy 2023
    (
        ModelConfig(pos="learned", layernorm="none", mlp_ratio=0.0, n_heads=4, d_model=32, n_layers=3),
        Plan(True, True, True),
    ),
    (ModelConfig(pos="sinusoidal", layernorm="none", mlp_ratio=0.0, n_heads=2, n_layers=1), Plan(True, False, True)),
    (ModelConfig(pos="learned", layernorm="pre", n_heads=2), Plan(True, False, False)),  # LayerNorm
    (ModelConfig(pos="none", layernorm="none", mlp_ratio=2.0, n_heads=2), Plan(True, False, True)),  # an MLP
    (ModelConfig(tokens="concat", pos="learned", layernorm="none", mlp_ratio=0.0, n_heads=2), Plan(True, True, True)),
    (ModelConfig(pos="rotary", layernorm="none", n_heads=4, d_model=32), Plan(False, False, True)),
    (ModelConfig(pos="rotary", n_heads=4, d_model=32), Plan(False, False, False)),
    (ModelConfig(pos="sinusoidal", layernorm="none"), Plan(True, False, True)),
    (ModelConfig(pos="learned", readout_hidden=(16, 8)), Plan(True, False, False)),
]


@pytest.mark.parametrize(("cfg", "expected"), FAST, ids=lambda c: f"{c.pos}-{c.tokens}-{c.layernorm}-L{c.n_layers}"
                         if isinstance(c, ModelConfig) else "")  # fmt: skip
@pytest.mark.parametrize("mode", ["query_only", "every_item", "attention"])
def test_fast_paths_match_the_plain_transformer(cfg, expected, mode):
    """FastTransformer and Transformer with the same parameters: the same logits, attention weights and every
    gradient, for the paths each config takes. In float64, so the two orders of the same sums agree to 1e-9."""
    plain = make(cfg)
    T = 2 * L + 1 if cfg.tokens == "interleaved" else L + 1
    query_only, return_attention = mode == "query_only", mode == "attention"
    fast = FastTransformer(cfg, D, V, L, rngs=nnx.Rngs(0))
    if query_only:
        assert plan(fast, T, query_only=True) == expected
    graphdef, params = nnx.split(plain)
    fast_graphdef, fast_params = nnx.split(fast)
    assert jax.tree.structure(params) == jax.tree.structure(fast_params)
    items, labels = inputs(3)
    offset = jnp.array([0, 3, 5]) if cfg.max_offset else None

    def loss(p, g, items):
        model = nnx.merge(g, p)
        for _, module in nnx.iter_graph(model):  # an Embed casts its output to its dtype, float32 by default
            if isinstance(module, nnx.Embed):
                module.dtype = jnp.float64
        out = model(items, labels, offset, query_only=query_only, return_attention=return_attention)
        logits, att = out if return_attention else (out, jnp.zeros(()))
        return jnp.sum(jnp.sin(3 * logits)) + jnp.sum(jnp.sin(5 * att)), out

    with jax.enable_x64(True):
        params, items = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, items))
        (_, out_fast), g_fast = jax.value_and_grad(loss, has_aux=True)(params, fast_graphdef, items)
        (_, out_plain), g_plain = jax.value_and_grad(loss, has_aux=True)(params, graphdef, items)
    for a, b in zip(jax.tree.leaves(out_fast), jax.tree.leaves(out_plain), strict=True):
        assert a.shape == b.shape and a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    leaves = jax.tree.leaves(g_fast)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    for a, b in zip(leaves, jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_the_switch_picks_the_path():
    """model.fast_paths chooses the class a run builds; both have the same parameters."""
    st = static_part(TaskSpec(L=L, D=D))
    assert type(build_model(ModelConfig(), st, jax.random.key(0))) is FastTransformer
    assert type(build_model(ModelConfig(fast_paths=False), st, jax.random.key(0))) is Transformer


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
