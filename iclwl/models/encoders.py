"""Item encoders: what turns an item vector into the features the transformer's input projection reads.

- ``linear``: nothing; the input projection reads the item itself (Gaussian items, or raw pixels).
- ``resnet``: a small residual CNN over image items (``D = side^2`` pixels), trained end to end with the
  transformer, as Chan et al. 2022 did for Omniglot: a 3x3 stem, then stages of two residual blocks each, every
  stage after the first halving the resolution and doubling the channels, then global average pooling.
- ``random``: fixed random features, for speed: a random projection of the pixels followed by a ReLU. The weights
  come from a constant key inside the call, so they are the same for every member and never trained (XLA folds
  them into the program as a constant).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

RANDOM_FEATURES_KEY = 20220614  # any fixed value: the random-feature encoder is part of the model, not of a seed


class ResidualBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), strides=stride, rngs=rngs)
        self.norm1 = nnx.GroupNorm(c_out, num_groups=min(8, c_out), rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=min(8, c_out), rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), strides=stride, rngs=rngs) if stride > 1 or c_in != c_out else None

    def __call__(self, x: jax.Array) -> jax.Array:  # (N, H, W, C_in) -> (N, H / stride, W / stride, C_out)
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return jax.nn.relu(h + (x if self.skip is None else self.skip(x)))


class ResNetEncoder(nnx.Module):
    """(..., side^2) pixels -> (..., width * 2^(stages-1)) features."""

    def __init__(self, side: int, width: int, stages: int, *, rngs: nnx.Rngs):
        self.side = side
        self.stem = nnx.Conv(1, width, (3, 3), rngs=rngs)
        blocks, c = [], width
        for s in range(stages):
            c_out = width * 2**s
            blocks += [ResidualBlock(c, c_out, 2 if s > 0 else 1, rngs=rngs), ResidualBlock(c_out, c_out, 1, rngs=rngs)]
            c = c_out
        self.blocks = nnx.List(blocks)
        self.out_dim = c

    def __call__(self, items: jax.Array) -> jax.Array:
        lead = items.shape[:-1]
        x = items.reshape(-1, self.side, self.side, 1)  # (N, side, side, 1)
        x = jax.nn.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return x.mean(axis=(1, 2)).reshape(*lead, self.out_dim)  # global average pool


class RandomFeatures(nnx.Module):
    """(..., D) -> (..., width): ReLU of a fixed random projection (no parameters)."""

    def __init__(self, item_dim: int, width: int):
        self.item_dim, self.out_dim = item_dim, width

    def __call__(self, items: jax.Array) -> jax.Array:
        w = jax.random.normal(jax.random.key(RANDOM_FEATURES_KEY), (self.item_dim, self.out_dim))
        return jax.nn.relu(items @ (w / math.sqrt(self.item_dim)))


class Identity(nnx.Module):
    def __init__(self, item_dim: int):
        self.out_dim = item_dim

    def __call__(self, items: jax.Array) -> jax.Array:
        return items


def make_encoder(kind: str, item_dim: int, width: int, stages: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The encoder ``kind`` for items of ``item_dim`` values; its ``out_dim`` is what the transformer reads."""
    if kind == "resnet":
        return ResNetEncoder(math.isqrt(item_dim), width, stages, rngs=rngs)
    if kind == "random":
        return RandomFeatures(item_dim, width)
    return Identity(item_dim)
