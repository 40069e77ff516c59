"""``model.arch`` -> the module a run trains.

Every arch has the transformer's constructor, ``Arch(cfg, item_dim, n_labels, context_len, rngs=...)``, and call
signature, ``model(items, labels, offset, query_only=...) -> logits``, so training and probes never ask which one.
The transformer runs as ``FastTransformer`` (the same parameters and numbers, fewer FLOPs) unless
``model.fast_paths=false``.
"""

from __future__ import annotations

import jax
from flax import nnx

from data_gen import TaskStatic
from iclwl.config import ModelConfig
from iclwl.models.fast_paths import FastTransformer
from iclwl.models.gated import Gated
from iclwl.models.lstm import LSTM
from iclwl.models.transformer import Transformer

ARCHS = {"transformer": Transformer, "gated": Gated, "lstm": LSTM}


def build_model(cfg: ModelConfig, st: TaskStatic, key: jax.Array) -> nnx.Module:
    """A freshly initialised model of ``cfg.arch`` for the task's item dimension, labels and context length."""
    arch = FastTransformer if cfg.arch == "transformer" and cfg.fast_paths else ARCHS[cfg.arch]
    return arch(cfg, st.D, st.n_labels, st.L, rngs=nnx.Rngs(key))
