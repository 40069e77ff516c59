"""Interventions on the transformer, exact in float64: an empty intervention changes nothing, zeroing every head
of a layer is removing its attention by hand, a clamped head attends by the given pattern, and the activations add
up to the residual stream."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from iclwl.config import ModelConfig
from iclwl.models.fast_paths import FastTransformer
from iclwl.models.interventions import Intervention, previous_token_pattern
from iclwl.models.transformer import Transformer

L, D, V = 4, 5, 7
T = 2 * L + 1
CONFIGS = [
    ModelConfig(n_layers=2, n_heads=2, d_model=16),  # pre-LayerNorm with MLPs
    ModelConfig(n_layers=2, n_heads=1, d_model=16, mlp_ratio=0.0, layernorm="none", pos="onehot", max_offset=3),
    ModelConfig(n_layers=3, n_heads=4, d_model=16, pos="rotary"),
]


def float64(model: nnx.Module) -> nnx.Module:
    """The model with float64 parameters, its embeddings returning float64 (call inside jax.enable_x64)."""
    graphdef, params = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params))
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Embed):
            module.dtype = jnp.float64
    return model


def inputs(seed: int = 0, B: int = 3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (B, L + 1, D), jnp.float64), jax.random.randint(k2, (B, L + 1), 0, V)


def built(cls: type, cfg: ModelConfig, seed: int):
    """A float64 model of ``cls`` and a batch, both from ``seed`` (call inside jax.enable_x64)."""
    return float64(cls(cfg, D, V, L, rngs=nnx.Rngs(seed))), *inputs(seed)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pos}-{c.layernorm}-H{c.n_heads}")
def test_an_empty_intervention_changes_nothing(cfg):
    with jax.enable_x64(True):
        items, labels = inputs()
        for cls in (Transformer, FastTransformer):
            model = float64(cls(cfg, D, V, L, rngs=nnx.Rngs(0)))
            plain, attention = model(items, labels, return_attention=True)
            same, acts = model(items, labels, intervention=Intervention.none(cfg, T), return_activations=True)
            np.testing.assert_allclose(same, plain, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(acts.attention, attention, rtol=1e-12, atol=1e-12)
            q = model(items, labels, query_only=True, intervention=Intervention.none(cfg, T))
            np.testing.assert_allclose(q[:, 0], plain[:, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pos}-{c.layernorm}-H{c.n_heads}")
def test_the_activations_add_up_to_the_residual_stream(cfg):
    with jax.enable_x64(True):
        model, items, labels = built(Transformer, cfg, 1)
        _, acts = model(items, labels, return_activations=True)
        n, B = cfg.n_layers, items.shape[0]
        assert acts.resid.shape == (n + 1, B, T, cfg.d_model) and acts.head_out.shape == (n, B, T, cfg.n_heads,
                                                                                          cfg.d_model)  # fmt: skip
        np.testing.assert_allclose(acts.resid[1:], acts.resid[:-1] + acts.attn_out + acts.mlp_out, atol=1e-12)
        biases = jnp.stack([block.attn.out.bias.value for block in model.blocks])  # (layers, d)
        np.testing.assert_allclose(acts.head_out.sum(3) + biases[:, None, None], acts.attn_out, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pos}-{c.layernorm}-H{c.n_heads}")
def test_zeroing_every_head_of_a_layer_is_removing_its_attention_by_hand(cfg):
    """Every head of layer 0 zeroed = that layer's output projection set to zero (its bias stays: no head's)."""
    with jax.enable_x64(True):
        model, items, labels = built(Transformer, cfg, 2)
        iv = Intervention.none(cfg, T)
        for h in range(cfg.n_heads):
            iv = iv.ablate(0, h)
        ablated = model(items, labels, intervention=iv)
        assert not np.allclose(ablated, model(items, labels), atol=1e-6), "the layer's heads must matter"
        by_hand = float64(Transformer(cfg, D, V, L, rngs=nnx.Rngs(2)))
        out = by_hand.blocks[0].attn.out
        out.kernel.value = jnp.zeros_like(out.kernel.value)
        np.testing.assert_allclose(ablated, by_hand(items, labels), rtol=1e-12, atol=1e-12)
        # mean-ablation: a head replaced by a vector writes that vector at every token
        fill = jnp.arange(cfg.d_model, dtype=jnp.float64) / cfg.d_model
        _, acts = model(items, labels, intervention=Intervention.none(cfg, T).ablate(0, 0, fill),
                        return_activations=True)  # fmt: skip
        written = acts.head_out[0, :, :, 0]  # (B, T, d)
        np.testing.assert_allclose(written, jnp.broadcast_to(fill, written.shape), atol=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pos}-{c.layernorm}-H{c.n_heads}")
def test_a_clamped_head_attends_by_the_given_pattern(cfg):
    with jax.enable_x64(True):
        model, items, labels = built(FastTransformer, cfg, 3)
        _, free = model(items, labels, return_attention=True)
        layer, head = cfg.n_layers - 1, 0
        pattern = previous_token_pattern(T).astype(jnp.float64)
        logits, acts = model(items, labels, intervention=Intervention.none(cfg, T).clamp_pattern(layer, head, pattern),
                             return_activations=True)  # fmt: skip
        np.testing.assert_allclose(acts.attention[layer, :, head], jnp.broadcast_to(pattern, (3, T, T)), atol=0)
        others = [(i, h) for i in range(cfg.n_layers) for h in range(cfg.n_heads) if (i, h) != (layer, head)]
        for i, h in others:  # heads before it, and beside it, are untouched
            np.testing.assert_allclose(acts.attention[i, :, h], free[i, :, h], atol=1e-12)
        assert not np.allclose(logits, model(items, labels), atol=1e-6)
