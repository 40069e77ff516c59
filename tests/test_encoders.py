"""Item encoders: a ResNet over image items trains with the transformer; random features are fixed; both causal."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_gen import ConfigError
from iclwl.config import ModelConfig, validate_config
from iclwl.models.transformer import Transformer

L, SIDE, V = 4, 8, 7


def make(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg, SIDE * SIDE, V, L, rngs=nnx.Rngs(0))


def inputs(B: int = 3):
    k1, k2 = jax.random.split(jax.random.key(1))
    return jax.random.uniform(k1, (B, L + 1, SIDE * SIDE)), jax.random.randint(k2, (B, L + 1), 0, V)


@pytest.mark.parametrize("kind", ["resnet", "random"])
@pytest.mark.parametrize("tokens", ["interleaved", "concat"])
def test_encoded_items_keep_the_model_causal(kind, tokens):
    model = make(ModelConfig(encoder=kind, encoder_width=8, tokens=tokens))
    items, labels = inputs()
    base = model(items, labels)
    assert base.shape == (3, L + 1, V)
    for j in range(L + 1):
        changed = model(items.at[:, j].add(0.5), labels)
        np.testing.assert_allclose(changed[:, :j], base[:, :j], atol=1e-5)
        assert not np.allclose(changed[:, j], base[:, j]), "the item's own prediction must see it"


def test_the_resnet_is_trained_and_random_features_are_not():
    items, labels = inputs()

    def grads(cfg):
        graphdef, params = nnx.split(make(cfg), nnx.Param)
        loss = lambda p: nnx.merge(graphdef, p)(items, labels)[:, -1].sum()
        return params, jax.grad(loss)(params)

    params, g = grads(ModelConfig(encoder="resnet", encoder_width=8, encoder_stages=2))
    enc = [x for path, x in jax.tree_util.tree_leaves_with_path(g) if "encoder" in jax.tree_util.keystr(path)]
    assert len(enc) > 0 and all(np.isfinite(x).all() for x in enc) and any(np.abs(x).sum() > 0 for x in enc)
    stem = params["encoder"]["stem"]["kernel"]
    assert stem.shape == (3, 3, 1, 8)
    params, _ = grads(ModelConfig(encoder="random", encoder_width=16))
    assert "encoder" not in params  # no parameters: nothing to train
    a = make(ModelConfig(encoder="random", encoder_width=16)).encoder(items)
    b = Transformer(ModelConfig(encoder="random", encoder_width=16), SIDE * SIDE, V, L, rngs=nnx.Rngs(9)).encoder(items)
    np.testing.assert_array_equal(a, b)  # the same features whatever the model's seed
    assert a.shape == (3, L + 1, 16) and float(jnp.min(a)) >= 0


def test_a_resnet_needs_square_images():
    from test_training import tiny

    cfg = tiny()  # D = 8: not a square
    with pytest.raises(ConfigError) as e:
        validate_config(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder="resnet")))
    assert e.value.field == "model.encoder"
