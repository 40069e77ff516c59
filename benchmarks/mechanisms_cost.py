"""What ``probes.mechanisms`` and ``probes.ablations`` cost: one evaluation of every member, with and without the
mechanistic measures (and with ``--ablations``, with the zero- and mean-ablation of every head on top).

    python benchmarks/mechanisms_cost.py [overrides ...] [--calls 20] [--ablations]

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
    p.add_argument("--ablations", action="store_true", help="also time probes.ablations=zero and =mean")
    args = p.parse_args()
    base = composed(args.overrides)
    st = ensemble_static(base)
    uni = make_universe(st)
    init, mem = member_inputs(base)
    variants = {"off": {"mechanisms": False, "ablations": "off"}, "on": {"mechanisms": True, "ablations": "off"}}
    if args.ablations:
        variants |= {f"on + ablations={how}": {"mechanisms": True, "ablations": how} for how in ("zero", "mean")}
    evaluate, first = {}, {}
    for name, changes in variants.items():
        cfg = dataclasses.replace(base, probes=dataclasses.replace(base.probes, **changes))
        ens = compiled(Program.of(cfg, st))
        state = ens.init(init)
        evaluate[name] = lambda ens=ens, state=state: ens.evaluate(uni, state.params, mem)
        t0 = time.perf_counter()
        jax.block_until_ready(evaluate[name]())
        first[name] = time.perf_counter() - t0
    # alternate them, so that a busy machine slows all alike
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.calls):
        for name in variants:
            t0 = time.perf_counter()
            jax.block_until_ready(evaluate[name]())
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) for name, t in times.items()}
    n = base.train.chunk_steps
    state = ens.init(init)
    jax.block_until_ready(ens.chunk(uni, state, mem, jnp.int32(0), jnp.int32(n), n=n)[0])  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(ens.chunk(uni, ens.init(init), mem, jnp.int32(0), jnp.int32(n), n=n)[0])
    chunk_s = time.perf_counter() - t0
    evals = len(eval_schedule(base.train.steps, base.probes.n_log, base.probes.every))
    print(f"config: {base.name}, {len(init)} member(s), n_eval {base.probes.n_eval}, tokens {base.model.tokens}, "
          f"backend {jax.default_backend()}, {args.calls} alternating calls each")  # fmt: skip
    print("\n| mechanisms | first call (compile + run) s | evaluation ms (median) | x off |\n|---|---|---|---|")
    for name in variants:
        print(f"| {name} | {first[name]:.2f} | {1e3 * median[name]:.1f} | {median[name] / median['off']:.2f} |")
    train_s = chunk_s * base.train.steps / n
    for name in list(variants)[1:]:
        extra = median[name] - median["off"]
        print(f"\n{name}: added per evaluation {1e3 * extra:.1f} ms ({100 * extra / median['off']:+.0f}%); over the "
              f"run's {evals} evaluations and {base.train.steps} steps: {evals * extra:.2f} s added to about "
              f"{train_s + evals * median['off']:.1f} s")  # fmt: skip
    print(f"\na chunk of {n} training steps: {1e3 * chunk_s:.0f} ms")


if __name__ == "__main__":
    main()
