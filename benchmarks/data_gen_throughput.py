"""Throughput of the data_gen sampler inside jax.jit: sequences generated per second, per published preset.

    python benchmarks/data_gen_throughput.py [--calls 200] [--repeats 5]

Each setting is compiled first (timed on its own), then timed over ``--calls`` calls, each with its own step key
(folded in inside the compiled function, as a training loop does); that is repeated ``--repeats`` times and the
median reported. Runs on the CPU unless JAX_PLATFORMS says otherwise. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp

import data_gen as dg
from data_gen.presets import preset

SETTINGS = [("reddy2023", 128), ("chan2024", 32), ("chan2024", 128), ("chan2022", 128)]


def measure(name: str, batch: int, calls: int, repeats: int) -> dict:
    spec = dg.validate(preset(name))
    st, p = dg.static_part(spec), dg.dynamic_part(spec)
    uni = jax.block_until_ready(dg.make_universe(st))
    key = jax.random.key(0)

    def step(uni: dg.Universe, p: dg.TaskParams, i: jax.Array) -> dg.Batch:
        return dg.sample_batch(st, uni, p, jax.random.fold_in(key, i), batch)

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(uni, p, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(uni, p, jnp.int32(0)))  # warm-up call

    steps = [jnp.int32(i) for i in range(1, calls + 1)]
    per_repeat = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = [compiled(uni, p, i) for i in steps]
        jax.block_until_ready(out)
        per_repeat.append(time.perf_counter() - t0)
    median = statistics.median(per_repeat)
    return dict(
        preset=name,
        batch=batch,
        L=st.L,
        D=st.D,
        compile_s=compile_s,
        ms_per_call=1e3 * median / calls,
        seq_per_s=calls * batch / median,
        spread=(min(per_repeat) / median, max(per_repeat) / median),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls timed in one repeat (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported (default 5)")
    args = parser.parse_args()
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be >= 1")

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}; {args.calls} calls x {args.repeats} repeats, median\n"
    )
    print("| preset | batch | L | D | compile (s) | ms / call | sequences / s | min, max / median |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, batch in SETTINGS:
        r = measure(name, batch, args.calls, args.repeats)
        lo, hi = r["spread"]
        print(
            f"| {r['preset']} | {r['batch']} | {r['L']} | {r['D']} | {r['compile_s']:.2f} | {r['ms_per_call']:.3f} "
            f"| {r['seq_per_s']:,.0f} | {lo:.2f}, {hi:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
