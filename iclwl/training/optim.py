"""The optimizer: Optax transforms chained from the config, with a weight-decay mask by module kind.

Singh et al. (2025) found that where weight decay acts (all weights, MLPs only, attention only) decides
whether transient ICL survives, so the mask is a first-class option.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from iclwl.config import OptimConfig


class OptimParams(NamedTuple):
    """The optimizer settings that may differ per member (arrays, so a sweep over them compiles once)."""

    lr: jax.Array
    weight_decay: jax.Array


def schedule(cfg: OptimConfig, total_steps: int, lr=None) -> optax.Schedule:
    lr = cfg.lr if lr is None else lr
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, cfg.warmup_steps, total_steps, end_value=lr * cfg.final_lr_fraction
        )
    warmup = max(cfg.warmup_steps, 1)  # warmup_rsqrt: linear warm-up, then lr * sqrt(warmup / step)
    return lambda step: lr * jax.numpy.minimum(step / warmup, jax.numpy.sqrt(warmup / jax.numpy.maximum(step, 1)))


def decay_mask(cfg: OptimConfig, params) -> object:
    """A pytree of bools over ``params``: which leaves weight decay acts on."""

    def keep(path, _) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if cfg.decay_mask == "all":
            return True
        return ("mlp" if cfg.decay_mask == "mlp" else "attn") in names

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig, total_steps: int, params, hyper: OptimParams | None = None):
    """clip -> (L2) -> adam / momentum -> (decoupled decay) -> -lr.

    ``hyper`` (a member's lr and weight decay, possibly traced) replaces ``cfg.lr`` and ``cfg.weight_decay``;
    whether a decay step exists at all is decided by ``cfg.weight_decay > 0``, so the state has one structure.
    """
    lr, wd = (cfg.lr, cfg.weight_decay) if hyper is None else hyper
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    decay = optax.add_decayed_weights(wd, mask=decay_mask(cfg, params)) if cfg.weight_decay else None
    if decay is not None and cfg.name != "adamw":  # coupled L2: the penalty's gradient enters the moments
        parts.append(decay)
    if cfg.name in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2))
    else:
        parts.append(optax.trace(decay=cfg.momentum))
    if decay is not None and cfg.name == "adamw":
        parts.append(decay)
    parts.append(optax.scale_by_learning_rate(schedule(cfg, total_steps, lr)))
    return optax.chain(*parts)
