"""What ``probes.mechanisms`` costs: one evaluation of every member, with and without the mechanistic measures.

    python benchmarks/mechanisms_cost.py [overrides ...] [--calls 20]

The config is the one ``train.py`` composes (the default experiment unless overrides say otherwise, e.g.
``experiment=none task=reddy2023 model=reddy2023``). Each variant is compiled first (timed on its own), then
``--calls`` evaluations of each are timed, alternating, and the median call reported, beside one training chunk
for scale. Runs on the
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
from iclwl.run import ensemble_static
from iclwl.training.program import Program, compiled, member_inputs
from iclwl.training.schedule import eval_schedule

CONF = Path(__file__).resolve().parents[1] / "conf"


def composed(overrides: list[str]) -> Config:
    ConfigStore.instance().store(name="iclwl_schema", node=schema_dict())
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        data = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    data.pop("hydra", None)
    return from_dict(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("overrides", nargs="*")
    p.add_argument("--calls", type=int, default=20)
    args = p.parse_args()
    base = composed(args.overrides)
    st = ensemble_static(base)
    uni = make_universe(st)
    init, mem = member_inputs(base)
    evaluate, first = {}, {}
    for on in (False, True):
        cfg = dataclasses.replace(base, probes=dataclasses.replace(base.probes, mechanisms=on))
        ens = compiled(Program.of(cfg, st))
        state = ens.init(init)
        evaluate[on] = lambda ens=ens, state=state: ens.evaluate(uni, state.params, mem)
        t0 = time.perf_counter()
        jax.block_until_ready(evaluate[on]())
        first[on] = time.perf_counter() - t0
    # alternate the two, so that a busy machine slows both alike
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.calls):
        for on in (False, True):
            t0 = time.perf_counter()
            jax.block_until_ready(evaluate[on]())
            times[on].append(time.perf_counter() - t0)
    median = {on: statistics.median(t) for on, t in times.items()}
    n = base.train.chunk_steps
    state = ens.init(init)
    jax.block_until_ready(ens.chunk(uni, state, mem, jnp.int32(0), jnp.int32(n), n=n)[0])  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(ens.chunk(uni, ens.init(init), mem, jnp.int32(0), jnp.int32(n), n=n)[0])
    chunk_s = time.perf_counter() - t0
    evals = len(eval_schedule(base.train.steps, base.probes.n_log, base.probes.every))
    print(f"config: {base.name}, {len(init)} member(s), n_eval {base.probes.n_eval}, tokens {base.model.tokens}, "
          f"backend {jax.default_backend()}, {args.calls} alternating calls each")  # fmt: skip
    print("\n| mechanisms | first call (compile + run) s | evaluation ms (median) |\n|---|---|---|")
    for on in (False, True):
        print(f"| {'on' if on else 'off'} | {first[on]:.2f} | {1e3 * median[on]:.1f} |")
    extra = median[True] - median[False]
    train_s = chunk_s * base.train.steps / n
    print(f"\nadded per evaluation: {1e3 * extra:.1f} ms ({100 * extra / median[False]:+.0f}%); a chunk of {n} "
          f"training steps: {1e3 * chunk_s:.0f} ms; over the run's {evals} evaluations and {base.train.steps} "
          f"steps: {evals * extra:.2f} s added to about {train_s + evals * median[False]:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
