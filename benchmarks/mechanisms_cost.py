"""What ``probes.mechanisms`` costs: one evaluation of every member, with and without the mechanistic measures.

    python benchmarks/mechanisms_cost.py [overrides ...] [--calls 20]

The config is the one ``train.py`` composes (the default experiment unless overrides say otherwise, e.g.
``experiment=none task=reddy2023 model=reddy2023``). Each variant is compiled first (timed on its own), then
``--calls`` evaluations are timed and the median call reported, beside one training chunk for scale. Runs on the
CPU unless JAX_PLATFORMS says otherwise. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from data_gen import make_universe
from iclwl.config import Config, from_dict, schema_dict
from iclwl.run import ensemble_static, eval_schedule
from iclwl.training import Program, compiled, member_inputs

CONF = Path(__file__).resolve().parents[1] / "conf"


def composed(overrides: list[str]) -> Config:
    ConfigStore.instance().store(name="iclwl_schema", node=schema_dict())
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        data = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    data.pop("hydra", None)
    return from_dict(data)


def timed(fn, calls: int) -> tuple[float, float]:
    """(seconds of the first call, compilation included; median seconds of ``calls`` later calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("overrides", nargs="*")
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()
    base = composed(args.overrides)
    st = ensemble_static(base)
    uni = make_universe(st)
    init, mem = member_inputs(base)
    rows = []
    for on in (False, True):
        cfg = dataclasses.replace(base, probes=dataclasses.replace(base.probes, mechanisms=on))
        ens = compiled(Program.of(cfg, st))
        state = ens.init(init)
        first, median = timed(lambda ens=ens, state=state: ens.evaluate(uni, state.params, mem), args.calls)
        rows.append((on, first, median))
    n = base.train.chunk_steps
    chunk = lambda: ens.chunk(uni, ens.init(init), mem, jnp.int32(0), jnp.int32(n), n=n)[1]
    _, chunk_s = timed(chunk, max(args.calls // 10, 1))
    evals = len(eval_schedule(base.train.steps, base.probes.n_log, base.probes.every))
    print(
        f"config: {base.name}, {len(init)} member(s), n_eval "
        f"{base.probes.n_eval}, tokens {base.model.tokens}, backend {jax.default_backend()}"
    )
    print("\n| mechanisms | first call (compile + run) s | evaluation ms (median) |\n|---|---|---|")
    for on, first, median in rows:
        print(f"| {'on' if on else 'off'} | {first:.2f} | {1e3 * median:.1f} |")
    extra = rows[1][2] - rows[0][2]
    train_s = chunk_s * base.train.steps / n
    print(
        f"\nadded per evaluation: {1e3 * extra:.1f} ms; a chunk of {n} training steps: {1e3 * chunk_s:.0f} ms; "
        f"over the run's {evals} evaluations and {base.train.steps} steps: {evals * extra:.2f} s added to about "
        f"{train_s + evals * rows[0][2]:.1f} s of device time ({100 * evals * extra / train_s:.1f}% of training)"
    )


if __name__ == "__main__":
    main()
