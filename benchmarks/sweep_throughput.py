"""Sweeps inside one program: member-steps/s against the number of members M, and a whole grid both ways.

Part 1 trains M members (seeds) of a setting in one program (split into groups automatically when they do not
fit the device's memory, as ``train.py`` does) and prints member-steps/s against M; M = 1 is what one run per
member gets. Part 2 finishes a whole grid (Chan 2024: 8 values of N x 2 seeds) three ways and prints wall
times: as one program (``train.py`` with ``sweep.N=[...]``), as a Hydra multirun of one run per member in one
process (``-m``; runs of equal programs share their compiled code), and as separate processes, one per member,
each with its own start-up and compilation (what a cluster array job does, one after another here).

    python benchmarks/sweep_throughput.py                       # both parts
    python benchmarks/sweep_throughput.py --part members --members 1 4 16 --settings chan2024
    python benchmarks/sweep_throughput.py --part grid --grid-steps 5000

Settings: 'default' = the default model and task (conf/model/small, conf/task/bursty, batch 64);
'chan2024' = the Chan et al. 2024 model (2 blocks, 1 head, d = 64) on its task (L = 1), batch 32.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from data_gen import make_universe
from data_gen.presets import preset
from iclwl.config import Config, ModelConfig, OptimConfig, TrainConfig, validate_config
from iclwl.run import ensemble_static
from iclwl.training.groups import fit_groups
from iclwl.training.program import member_inputs
from iclwl.training.sharding import use_cpu_devices

ROOT = Path(__file__).resolve().parents[1]
CHAN_MODEL = ModelConfig(n_layers=2, n_heads=1, d_model=64, mlp_ratio=4.0)
SETTINGS = {
    "default": Config(train=TrainConfig(batch_size=64, steps=100_000)),
    "chan2024": Config(
        task=preset("chan2024"),
        model=CHAN_MODEL,
        optim=OptimConfig(lr=3e-4),
        train=TrainConfig(batch_size=32, steps=100_000),
    ),
}
N_VALUES = [2**k for k in range(6, 21, 2)]  # 2^6 .. 2^20, 8 values
GRID_ARGS = ["experiment=none", "task=chan2024", "model=chan2024", "optim.lr=0.0003", "train.batch_size=32",
             "logging.progress=false", "logging.plot=false", "checkpoint.enabled=false"]  # fmt: skip


def member_steps_per_s(cfg: Config, M: int, member_steps: int, repeats: int) -> dict:
    """Time chunks of training of M members; each timed call does about ``member_steps`` member-steps."""
    n = max(5, member_steps // M)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=tuple(range(M)), chunk_steps=n))
    cfg = validate_config(cfg)
    st = ensemble_static(cfg)
    init, mem = member_inputs(cfg)
    t = time.perf_counter()
    groups = fit_groups(cfg, st, make_universe(st), init, mem)  # compiles (and measures memory)
    groups.train(0, n, n)
    jax.block_until_ready(groups.states)
    compile_s = time.perf_counter() - t
    times = []
    for r in range(repeats):
        t0 = n * (r + 1)
        t = time.perf_counter()
        groups.train(t0, t0 + n, n)
        jax.block_until_ready(groups.states)
        times.append(time.perf_counter() - t)
    return {"ms": M * n / statistics.median(times), "compile_s": compile_s, "groups": groups.count}


def part_members(settings: list[str], Ms: list[int], member_steps: int, repeats: int) -> None:
    print("| setting | M | groups | member-steps/s | vs M = 1 | compile + first chunk s |")
    print("|---|---|---|---|---|---|")
    for name in settings:
        base = None
        for M in Ms:
            r = member_steps_per_s(SETTINGS[name], M, member_steps, repeats)
            base = base or (r["ms"] if M == 1 else None)
            ratio = f"{r['ms'] / base:.1f}x" if base else "-"
            print(f"| {name} | {M} | {r['groups']} | {r['ms']:.0f} | {ratio} | {r['compile_s']:.1f} |", flush=True)


def timed(cmd: list[str], cwd: str) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t


def part_grid(steps: int, seeds: list[int]) -> None:
    train = [sys.executable, str(ROOT / "train.py"), *GRID_ARGS, f"train.steps={steps}"]
    n_list = ",".join(map(str, N_VALUES))
    seed_list = ",".join(map(str, seeds))
    M = len(N_VALUES) * len(seeds)
    with tempfile.TemporaryDirectory() as tmp:
        one = timed([*train, f"sweep.N=[{n_list}]", f"train.seeds=[{seed_list}]", "hydra.run.dir=one"], tmp)
        seed_choices = ",".join(f"[{s}]" for s in seeds)  # one job per (N, seed)
        multi = timed([*train[:2], "-m", *train[2:], f"task.N={n_list}", f"train.seeds={seed_choices}",
                       "hydra.sweep.dir=multi"], tmp)  # fmt: skip
        separate = sum(timed([*train, f"task.N={n}", f"train.seeds=[{s}]", f"hydra.run.dir=sep/{n}_{s}"], tmp)
                       for n in N_VALUES for s in seeds)  # fmt: skip
    print(f"| way ({M} members: N in {N_VALUES[0]}..{N_VALUES[-1]} x {len(seeds)} seeds, {steps} steps) "
          "| wall s | vs one program |")  # fmt: skip
    print("|---|---|---|")
    for way, s in (("one program (sweep.N=[...])", one), ("Hydra multirun, one process (-m task.N=...)", multi),
                   ("separate processes, one per member", separate)):  # fmt: skip
        print(f"| {way} | {s:.1f} | {s / one:.1f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["members", "grid", "both"], default="both")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--members", nargs="+", type=int, default=[1, 4, 16, 64, 256])
    ap.add_argument("--member-steps", type=int, default=4000, help="member-steps per timed call")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    ap.add_argument("--grid-steps", type=int, default=5000)
    ap.add_argument("--grid-seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--cpu-devices", type=int, default=0,
                    help="JAX devices to split a CPU host into for part 1 (0: one per core, as train.py)")  # fmt: skip
    args = ap.parse_args()
    use_cpu_devices(args.cpu_devices)  # part 1 places members as train.py does
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPU core(s)\n")  # fmt: skip
    if args.part in ("members", "both"):
        part_members(args.settings, args.members, args.member_steps, args.repeats)
        print()
    if args.part in ("grid", "both"):
        part_grid(args.grid_steps, args.grid_seeds)


if __name__ == "__main__":
    main()
