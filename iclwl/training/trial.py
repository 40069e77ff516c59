"""Placement by measurement: where the step-size rule is unsure, time the layouts it hesitates between.

``iclwl.training.sharding.place`` decides by the FLOPs of one member's step, but two models with steps of the same
size can want different layouts (on 2 CPU cores one Reddy 2023 member, 0.37 GFLOP a step, once trained 1.07x
faster with its batch split over both cores and one default-config member, 0.38 GFLOP, 0.97x), and the fastest
layout moves with the state of the machine (in a later run both gained 1.1x from the split, and the Chan 2024
members 1.13-1.20x from ``map`` over the rule's ``vmap``: docs/benchmarks.md). Near its thresholds the rule is a
guess, so ``train.placement`` can time the candidates instead:

- ``rule``: the step-size rule alone;
- ``measure``: time every candidate layout this ensemble has (member loop ``map`` / ``vmap`` where several members
  share a device, each member's batch split or whole where members are fewer than devices), as far as
  ``train.member_loop`` and ``train.split_batch`` leave them open, and take the fastest;
- ``auto`` (default): measure where the rule is unsure (the step within a factor ``UNSURE`` of a threshold that
  matters for this ensemble) and the training is long enough to pay for compiling the others (``MIN_SECONDS``,
  estimated from the FLOPs); the rule otherwise.

A candidate is timed on its own compiled training chunk: one call that compiles it, then ``ROUNDS`` timed calls
of ``TRIAL_STEPS`` steps, the candidates' calls alternating so that a drift in the host's speed reaches them
alike; the median member-steps/s decides. The result is kept beside the compiled programs
(``compile_cache.remembered``), so later runs of the same program (every job of a sweep over dynamic settings)
place their members without timing. Measurement runs on the devices of one process; with several processes the
rule decides (every process must choose the same).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

from iclwl.training.sharding import SMALL_STEP_FLOPS, SPLIT_BATCH_FLOPS, Layout, Placement

UNSURE = 3.0  # the rule is a guess for steps within this factor of one of its thresholds
MIN_SECONDS = 300.0  # 'auto' measures only training estimated to take longer than this
RATE_GUESS = 5e10  # FLOP/s a CPU device sustains on these models, for that estimate (measured: 20-100 GFLOP/s)
TRIAL_STEPS = 50  # steps of one timed call (the rest of the compiled chunk is skipped)
ROUNDS = 5


@dataclasses.dataclass(frozen=True)
class Candidate:
    loop: str  # 'vmap' or 'map'
    split_batch: bool

    @property
    def name(self) -> str:
        return self.loop + (" batch-split" if self.split_batch else "")


def candidates(rule: Placement, M: int, batch_size: int, devices: list, member_loop: str,
               split_batch: bool | None) -> list[Candidate]:  # fmt: skip
    """The rule's layout first, then the layouts that differ where a choice exists and the settings leave it open."""
    split_now = rule.layout.mesh.shape["batch"] > 1
    loops = [rule.loop]
    if member_loop == "auto" and _members_per_device(M, batch_size, devices) > 1:
        loops.append("map" if rule.loop == "vmap" else "vmap")
    splits = [split_now]
    if split_batch is None and _split_differs(M, batch_size, devices):
        splits.append(not split_now)
    return [Candidate(loop, split) for split in splits for loop in loops]


def _members_per_device(M: int, batch_size: int, devices: list) -> int:
    """At most how many members share a device, in either layout."""
    g = min(Layout.for_members(M, batch_size, devices).mesh.shape["members"], min(M, len(devices)))
    return -(-M // g)


def _split_differs(M: int, batch_size: int, devices: list) -> bool:
    """Whether splitting batches gives another layout than members over devices with padding."""
    return Layout.for_members(M, batch_size, devices).mesh.shape["batch"] > 1


def unsure(step_flops: float | None, found: list[Candidate]) -> bool:
    """Whether the rule's choice among ``found`` is a guess: the step is near the threshold of a dimension that
    has two candidates (unknown steps always are)."""
    if len(found) < 2:
        return False
    if step_flops is None:
        return True
    near = lambda threshold: threshold / UNSURE <= step_flops <= threshold * UNSURE
    loops = len({c.loop for c in found}) > 1
    splits = len({c.split_batch for c in found}) > 1
    return (loops and near(SMALL_STEP_FLOPS)) or (splits and near(SPLIT_BATCH_FLOPS))


def estimated_seconds(step_flops: float | None, M: int, steps: int, devices: int) -> float:
    """A rough guess of the training time, from the FLOPs (infinite when they are unknown)."""
    if step_flops is None:
        return float("inf")
    return steps * M * step_flops / (RATE_GUESS * max(min(M, devices), 1))


def fastest(build: Callable[[Candidate], Any], found: list[Candidate], trial_steps: int = TRIAL_STEPS,
            rounds: int = ROUNDS, fits: Callable[[Any], bool] = lambda _: True,
            ) -> tuple[Candidate, dict[str, float]]:  # fmt: skip
    """Time every candidate (``build`` gives its groups, as ``iclwl.training.groups.Groups``) and return the fastest
    with each one's median member-steps/s. Candidates ``fits`` refuses (memory) are left out; the first is kept."""
    built = {}
    for c in found:
        groups = build(c)
        if c == found[0] or fits(groups):
            built[c] = groups
    for groups in built.values():  # compiles (or loads) each chunk before any timing
        _call(groups, trial_steps)
    times = {c: [] for c in built}
    for _ in range(rounds):
        for c, groups in built.items():
            times[c].append(_call(groups, trial_steps))
    steps = {c: min(trial_steps, g.chunk_steps) for c, g in built.items()}
    rates = {c.name: built[c].M * steps[c] / statistics.median(t) for c, t in times.items()}
    best = max(built, key=lambda c: rates[c.name])
    return best, rates


def _call(groups, steps: int) -> float:
    """Seconds for ``steps`` steps of every member (at most one compiled chunk's)."""
    start = time.perf_counter()
    groups.train(0, min(steps, groups.chunk_steps), n=groups.chunk_steps)
    jax.block_until_ready([s.params for s in groups.states])
    return time.perf_counter() - start


def describe(best: Candidate, rates: dict[str, float]) -> str:
    rest = ", ".join(f"{name} {r:.0f}" for name, r in rates.items())
    return f"measured, member-steps/s: {rest}; fastest {best.name}"
