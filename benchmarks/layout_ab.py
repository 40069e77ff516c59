"""Same-process A/B of where members run: the automatic placement against fixed layouts.

This host's speed drifts by ±20% from one 100-step call to the next, more between processes, so two layouts timed
in separate runs cannot be told apart below about 20%. Here every variant is built in one process (split into
``--cpu-devices`` JAX devices) and their timed calls alternate, round after round; the script prints each variant's
median member-steps/s and the median over rounds of its ratio to the first variant of its ensemble size, which a
drift reaches alike.

    python benchmarks/layout_ab.py --settings chan2024 default reddy2023 --members 1 9 16   # auto vs every layout
    python benchmarks/layout_ab.py --settings chan2024 --variants 9:auto 9x1:map 9x1:vmap 9x2:vmap

Variants:
- ``M:auto``: M members placed by the step-size rule (``iclwl.training.sharding.place``, ``train.placement=rule``);
- ``M:measure``: M members placed as ``train.placement=measure`` places them (``iclwl.training.trial``: the
  candidate layouts timed at the start, the fastest taken; the measurement is made in this process, before the
  rounds);
- ``MxN:loop``: M members over the first N devices (padded to a multiple of N), the members of a device run by
  ``loop`` (``map`` or ``vmap``), batches not split (``train.split_batch=false``);
- ``MxN:loop:batch``: the same with ``train.split_batch=true``: when members are fewer than devices, each member's
  batch is split over them.
Without ``--variants``, each ensemble size of ``--members`` gets ``auto`` and every fixed layout. ``1x1`` in a
process of several devices is one of them (the cores are still shared by their threads); ``--cpu-devices 1`` gives
a process with one device that uses every core, which is what ``train.cpu_devices=1`` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from typing import NamedTuple

import jax
from train_throughput import SETTINGS, LibraryRun

from iclwl.config import Config, validate_config
from iclwl.training.groups import fit_groups
from iclwl.training.program import ensemble_static, member_inputs, shared_universe
from iclwl.training.sharding import use_cpu_devices


class Variant(NamedTuple):
    members: int
    devices: int | None  # None: all, placed automatically
    loop: str
    split_batch: bool | None

    @property
    def name(self) -> str:
        if self.devices is None:
            return f"{self.members}:{self.loop}"
        return f"{self.members}x{self.devices}:{self.loop}" + (":batch" if self.split_batch else "")


def variant(text: str) -> Variant:
    parts = text.split(":")
    try:
        if len(parts) == 2 and parts[1] in ("auto", "measure"):
            return _checked(Variant(int(parts[0]), None, parts[1], None), text)
        members, devices = (int(x) for x in parts[0].split("x"))
        if len(parts) in (2, 3) and parts[1] in ("map", "vmap") and parts[2:] in ([], ["batch"]):
            return _checked(Variant(members, devices, parts[1], len(parts) == 3), text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"variant {text!r}: expected M:auto, M:measure, MxN:map, MxN:vmap or "
                                     "MxN:vmap:batch")  # fmt: skip


def _checked(v: Variant, text: str) -> Variant:
    if v.members < 1 or (v.devices is not None and v.devices < 1):
        raise argparse.ArgumentTypeError(f"variant {text!r}: M and N must be >= 1")
    return v


def grid(members: list[int], n_devices: int) -> list[Variant]:
    """For each M: auto, measure, then every fixed layout (1 and all devices, map and vmap, batch split where
    M < N)."""
    out = []
    for M in members:
        out += [Variant(M, None, "auto", None), Variant(M, None, "measure", None)]
        for N in sorted({1, n_devices}):
            for loop in ("map", "vmap"):
                if M >= N or N == 1:  # fewer members than devices, batches whole: the layout of M devices
                    out.append(Variant(M, N, loop, False))
                if M < N:
                    out.append(Variant(M, N, loop, True))
    return out


def measured(cfg: Config, M: int) -> tuple[str, bool]:
    """The member loop and batch split ``train.placement=measure`` chooses for M members (printed with its times)."""
    train = dataclasses.replace(cfg.train, seeds=tuple(range(M)), placement="measure")
    c = validate_config(dataclasses.replace(cfg, train=train))
    st = ensemble_static(c)
    groups = fit_groups(c, st, shared_universe(c, st), *member_inputs(c))
    print(f"{M}:measure: {groups.describe()}", flush=True)
    return groups.placement.loop, groups.layout.mesh.shape["batch"] > 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["chan2024"], choices=list(SETTINGS))
    ap.add_argument("--members", nargs="+", type=int, default=[1, 9], help="ensemble sizes (without --variants)")
    ap.add_argument("--variants", nargs="+", type=variant, help="instead of every layout of --members")
    ap.add_argument("--rounds", type=int, default=5, help="timed calls of each variant, alternating")
    ap.add_argument("--member-steps", type=int, default=800,
                    help="member-steps per timed call (steps = this / M, at least 10)")  # fmt: skip
    ap.add_argument("--cpu-devices", type=int, default=0, help="JAX devices of this process (0: one per core)")
    args = ap.parse_args()
    use_cpu_devices(args.cpu_devices)
    devices = jax.local_devices()
    variants = args.variants or grid(args.members, len(devices))
    for v in variants:
        if v.devices is not None and v.devices > len(devices):
            ap.error(f"variant {v.name}: this process has {len(devices)} device(s) (--cpu-devices)")

    print(f"{len(devices)} {devices[0].platform} device(s); {args.rounds} alternating rounds of about "
          f"{args.member_steps} member-steps a call")  # fmt: skip
    print()
    print("| setting | variant | placement | member-steps/s (median) | vs first of its M (median of rounds) |")
    print("|---|---|---|---|---|")
    for name in args.settings:
        cfg = SETTINGS[name]
        runs = []
        for v in variants:
            loop, split = (v.loop, v.split_batch) if v.loop != "measure" else measured(cfg, v.members)
            train = dataclasses.replace(cfg.train, member_loop=loop, split_batch=split)
            use = None if v.devices is None else devices[: v.devices]
            runs.append(LibraryRun(dataclasses.replace(cfg, train=train), v.members, use))
        steps = [max(10, args.member_steps // v.members) for v in variants]
        for run, n in zip(runs, steps, strict=True):
            run.call(n)  # compiles
        rates = [[] for _ in runs]
        for _ in range(args.rounds):
            for r, run, n in zip(rates, runs, steps, strict=True):
                r.append(run.members * n / run.call(n))
        first = {}
        for v, r in zip(variants, rates, strict=True):
            first.setdefault(v.members, r)
        for v, run, r in zip(variants, runs, rates, strict=True):
            ratio = statistics.median(a / b for a, b in zip(r, first[v.members], strict=True))
            print(f"| {name} | {v.name} | {run.where} | {statistics.median(r):.1f} | {ratio:.3f}× |", flush=True)


if __name__ == "__main__":
    main()
