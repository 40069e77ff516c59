"""Same-process A/B of where members run: ensemble sizes on one device or split over the host's CPU devices.

This host's speed drifts by ±20% from one 100-step call to the next, more between processes, so two layouts timed
in separate runs cannot be told apart below about 20%. Here every variant is built in one process (split into
``--cpu-devices`` JAX devices) and their timed calls alternate, round after round; the script prints each variant's
median member-steps/s and the median over rounds of its ratio to the first variant, which a drift reaches alike.

    python benchmarks/layout_ab.py --settings reddy2023 --variants 1x1 1x2 8x1 8x2 --rounds 7

A variant ``MxN`` is M members on the first N devices, placed as ``train.py`` places them (``iclwl.sharding.Layout``:
members split over the devices, a member's batch too when members are fewer). ``1x1`` is one member on one device;
with ``--cpu-devices 1`` a process has a single device that uses every core, which is what ``train.cpu_devices=1``
runs; ``1x1`` in a process of several devices is one of them (the cores are still shared by their threads).
"""

from __future__ import annotations

import argparse
import statistics

import jax
from train_throughput import SETTINGS, LibraryRun

from iclwl.sharding import use_cpu_devices


def variant(text: str) -> tuple[int, int]:
    try:
        members, devices = (int(part) for part in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected MxN, e.g. 8x2") from None
    if members < 1 or devices < 1:
        raise argparse.ArgumentTypeError(f"variant {text!r}: M and N must be >= 1")
    return members, devices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["reddy2023"], choices=list(SETTINGS))
    ap.add_argument("--variants", nargs="+", type=variant, default=[(1, 1), (1, 2), (8, 1), (8, 2)],
                    help="MxN: M members on N devices; ratios are to the first")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=7, help="timed calls of each variant, alternating")
    ap.add_argument("--chunk", type=int, default=100, help="steps per timed call")
    ap.add_argument("--cpu-devices", type=int, default=0, help="JAX devices of this process (0: one per core)")
    args = ap.parse_args()
    use_cpu_devices(args.cpu_devices)
    devices = jax.local_devices()
    for M, N in args.variants:
        if N > len(devices):
            ap.error(f"variant {M}x{N}: this process has {len(devices)} device(s) (--cpu-devices)")

    print(f"{len(devices)} {devices[0].platform} device(s); {args.rounds} alternating rounds of {args.chunk} steps")
    print()
    print("| setting | M | devices | placement | member-steps/s (median) | vs first (median of rounds) |")
    print("|---|---|---|---|---|---|")
    for name in args.settings:
        runs = [LibraryRun(SETTINGS[name], M, devices[:N]) for M, N in args.variants]
        for run in runs:
            run.call(args.chunk)  # compiles
        rates = [[] for _ in runs]
        for _ in range(args.rounds):
            for r, run in zip(rates, runs, strict=True):
                r.append(run.members * args.chunk / run.call(args.chunk))
        for (M, N), run, r in zip(args.variants, runs, rates, strict=True):
            ratio = statistics.median(a / b for a, b in zip(r, rates[0], strict=True))
            print(f"| {name} | {M} | {N} | {run.where} | {statistics.median(r):.1f} | {ratio:.3f}× |", flush=True)


if __name__ == "__main__":
    main()
