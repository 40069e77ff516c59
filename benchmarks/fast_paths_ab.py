"""The transformer's fast paths against its plain forward pass: one member's training steps a second, same process.

    python benchmarks/fast_paths_ab.py --settings reddy2023 default chan2024 --rounds 7
    python benchmarks/fast_paths_ab.py --variant mine=my_package.model:MyTransformer   # a model of your own too

Each variant is a class with the transformer's constructor and call (``iclwl/models/architectures.py``): 'plain' is
``iclwl.models.transformer.Transformer``, 'fast' is ``iclwl.models.fast_paths.FastTransformer`` (what runs use by
default, ``model.fast_paths``). Every variant starts from the same parameters and trains on the same fixed batch
(speed does not depend on the data) with the setting's optimizer, ``--steps`` steps per jitted ``lax.scan`` call.
The calls alternate between variants for ``--rounds`` rounds; the script prints the median steps/s of each, its
ratio to 'fast', and the FLOPs of one step from XLA's cost analysis. One CPU device (``train.cpu_devices=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from train_throughput import SETTINGS

from data_gen import static_part
from iclwl.config import Config
from iclwl.models.fast_paths import FastTransformer
from iclwl.models.transformer import Transformer
from iclwl.training.optim import make_optimizer

VARIANTS = {"fast": FastTransformer, "plain": Transformer}


def load_class(spec: str) -> type:
    """'package.module:Class' -> the class."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def make_chunk(cls: type, cfg: Config, steps: int):
    """A jitted call of ``steps`` training steps of one member of ``cls``, its initial state, and its FLOPs a step."""
    st = static_part(cfg.task)
    graphdef, params = nnx.split(cls(cfg.model, st.D, st.n_labels, st.L, rngs=nnx.Rngs(0)), nnx.Param)
    tx = make_optimizer(cfg.optim, cfg.train.steps, params)
    B, query_only = cfg.train.batch_size, not cfg.train.context_loss
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (B, st.L + 1, st.D))  # (B, L+1, D)
    y = jax.random.randint(ky, (B, st.L + 1), 0, st.n_labels)  # (B, L+1)
    offset = jnp.zeros((B,), jnp.int32) if cfg.model.max_offset else None

    def loss(p):
        logits = nnx.merge(graphdef, p)(x, y, offset, query_only=query_only)  # (B, R, V)
        target = y[:, -1:] if query_only else y
        return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()

    def step(carry, _):
        p, o = carry
        g = jax.grad(loss)(p)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

    chunk = jax.jit(lambda p, o: jax.lax.scan(step, (p, o), None, length=steps)[0], donate_argnums=(0, 1))
    cost = jax.jit(jax.grad(loss)).lower(params).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return chunk, (params, tx.init(params)), float(cost["flops"])


def compare(name: str, variants: dict[str, type], steps: int, rounds: int) -> None:
    cfg = SETTINGS[name]
    runs = {}
    for v, cls in variants.items():
        chunk, state, flops = make_chunk(cls, cfg, steps)
        state = jax.block_until_ready(chunk(*state))  # compile, and one warm-up call
        runs[v] = [chunk, state, flops, []]
    for _ in range(rounds):
        for run in runs.values():
            chunk, state = run[0], run[1]
            t = time.perf_counter()
            run[1] = jax.block_until_ready(chunk(*state))
            run[3].append(steps / (time.perf_counter() - t))
    base = statistics.median(runs["fast"][3])
    print(f"\n{name}: {steps} steps a call, median of {rounds} alternating calls")
    print("| variant | steps/s | vs fast | MFLOP a step |")
    print("|---|---|---|---|")
    for v, (_, _, flops, rates) in runs.items():
        rate = statistics.median(rates)
        print(f"| {v} | {rate:.1f} | {rate / base:.2f}× | {flops / 1e6:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", nargs="+", default=["reddy2023", "default", "chan2024"], choices=list(SETTINGS))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=MODULE:CLASS",
                    help="another model class to time against the two")  # fmt: skip
    args = ap.parse_args()
    variants = dict(VARIANTS)
    for spec in args.variant:
        v, _, target = spec.partition("=")
        if not v or ":" not in target:
            ap.error(f"--variant = {spec!r}: expected NAME=MODULE:CLASS")
        variants[v] = load_class(target)
    print(f"devices: {jax.devices()}")
    for name in args.settings:
        compare(name, variants, args.steps, args.rounds)


if __name__ == "__main__":
    main()
