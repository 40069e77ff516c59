"""Where an ensemble lives: the member axis split over the devices, the batch axis when members are few.

With M members and n devices (every process's, iclwl/training/distributed.py), the mesh has axes ``members`` (size g
= gcd(M, n)) and ``batch`` (n / g). Every leaf of the state and of the member inputs is split along its leading
(member) axis; the class universe is replicated. Inside the step, each member's batch is split along ``batch``
(``with_sharding_constraint``), so 1 member on 8 devices uses all 8 for its batch, and 64 members on 8 devices put 8
members on each. The same code runs on one CPU (a 1 x 1 mesh: nothing moves), several GPUs or a TPU host; XLA
inserts the communication.

A CPU host can be split into several JAX devices (``use_cpu_devices``, ``train.cpu_devices``): with a device per
core, members run on their own cores instead of sharing every small matrix product between threads; it is the
default (``train.cpu_devices=0``). The host never computes on sharded arrays outside the compiled programs: on
2 CPU devices, a series of small eager reductions over member-sharded arrays (the checkpoint's finiteness check,
as it once was) stalled in an all-reduce that one device never joined, and XLA aborted the run after 40 s.
Arrays leave the devices with ``jax.device_get`` and are checked with NumPy.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from iclwl.training.distributed import put


@dataclass(frozen=True)
class Layout:
    mesh: Mesh

    @classmethod
    def for_members(cls, M: int, batch_size: int, devices: list | None = None) -> Layout:
        devices = list(devices or jax.devices())
        g = math.gcd(M, len(devices))
        b = math.gcd(len(devices) // g, batch_size)  # the batch must split evenly too
        return cls(Mesh(np.array(devices[: g * b]).reshape(g, b), ("members", "batch")))

    @property
    def members(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("members"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def put_members(self, tree):
        return put(tree, self.members)

    def put_replicated(self, tree):
        return put(tree, self.replicated)

    def describe(self) -> str:
        g, b = self.mesh.shape["members"], self.mesh.shape["batch"]
        return f"{g * b} device(s): members split {g} way(s), each member's batch {b} way(s)"


# On CPU devices, how big one member's training step is (FLOPs of its forward and backward pass, XLA's count)
# decides how members are placed (``place``); measured on 2 cores (docs/benchmarks.md, benchmarks/layout_ab.py):
# - splitting one member's batch over devices gave 0.43x for the Chan 2024 model (0.04 GFLOP a step), 0.97x for
#   the default one (0.38 GFLOP) and 1.07x for Reddy's (0.37 GFLOP): batches are split only from SPLIT_BATCH_FLOPS
#   (the step size alone cannot tell the last two apart);
# - members sharing a device ran 1.2x faster batched by vmap than one after another for the Chan 2024 model, and
#   0.78-0.88x as fast for the other two: vmap below SMALL_STEP_FLOPS, map above.
SMALL_STEP_FLOPS = 1e8
SPLIT_BATCH_FLOPS = 1e9


@dataclass(frozen=True)
class Placement:
    """Where one program's members run: the layout, the members it holds (padding with copies of the last member
    included, so that every device gets as many) and how the members of a device are looped over."""

    layout: Layout
    size: int
    loop: str  # 'vmap' or 'map'
    why: str  # what decided it, for the line the run prints

    def describe(self, members: int) -> str:
        where = self.layout.describe() if self.layout.mesh.size > 1 else "1 device"
        k = self.size - members
        pad = f" (and {k} cop{'y' if k == 1 else 'ies'} of the last as padding)" if k else ""
        how = "batched by vmap" if self.loop == "vmap" else "one after another (map)"
        return f"{members} member(s){pad} on {where}; members of a device {how} ({self.why})"


def needs_step_flops(member_loop: str, split_batch: bool | None, devices: list | None = None) -> bool:
    """Whether ``place`` reads the step size: on CPU devices, unless both settings are given."""
    cpu = (devices or jax.devices())[0].platform == "cpu"
    return cpu and not _given(member_loop, split_batch)


def _given(member_loop: str, split_batch: bool | None) -> bool:
    return member_loop != "auto" and split_batch is not None


def place(M: int, batch_size: int, step_flops: float | None, member_loop: str = "auto",
          split_batch: bool | None = None, devices: list | None = None) -> Placement:  # fmt: skip
    """The placement of M members (``train.member_loop``, ``train.split_batch``: 'auto' / None are decided here).

    Accelerators: members split over the devices, each member's batch too when members are fewer
    (``Layout.for_members``), members of a device batched by vmap. CPU devices: by the size of a member's step
    (``step_flops``; None: unknown, taken as large): members over as many devices as there are members (padded to a
    multiple of them), a member's batch split only for large steps, vmap for small steps and map otherwise.
    """
    devices = list(devices or jax.devices())
    if devices[0].platform != "cpu":
        loop = "vmap" if member_loop == "auto" else member_loop
        split = True if split_batch is None else split_batch
        return Placement(_layout(M, batch_size, devices, split), M, loop, "accelerator devices")
    known = step_flops is not None
    small, large = known and step_flops < SMALL_STEP_FLOPS, not known or step_flops >= SPLIT_BATCH_FLOPS
    loop = ("vmap" if small else "map") if member_loop == "auto" else member_loop
    split = large if split_batch is None else split_batch
    layout = _layout(M, batch_size, devices, split)
    size = M if split else layout.mesh.shape["members"] * math.ceil(M / layout.mesh.shape["members"])
    if _given(member_loop, split_batch):
        why = "train.member_loop and train.split_batch given"
    else:
        why = f"a member's step: {step_flops / 1e9:.2g} GFLOP" if known else "a member's step: size unknown"
    return Placement(layout, size, loop, why)


def _layout(M: int, batch_size: int, devices: list, split_batch: bool) -> Layout:
    if split_batch:
        return Layout.for_members(M, batch_size, devices)
    g = min(M, len(devices))  # members one program pads to a multiple of g
    return Layout(Mesh(np.array(devices[:g]).reshape(g, 1), ("members", "batch")))


MAX_AUTO_CPU_DEVICES = 8


def use_cpu_devices(n: int) -> None:
    """Split the CPU into ``n`` JAX devices (0: one per core available to this process, at most 8).

    JAX fixes the count when it first runs anything, so this only applies before that; it also leaves alone a
    count chosen already (``jax_num_cpu_devices``, or ``XLA_FLAGS``'s ``--xla_force_host_platform_device_count``).
    An explicit ``n`` that cannot apply is reported, not fatal."""
    want = n or min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                    MAX_AUTO_CPU_DEVICES)  # fmt: skip
    chosen = jax.config.jax_num_cpu_devices != -1 or "host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    if not chosen:
        try:
            jax.config.update("jax_num_cpu_devices", want)
            return
        except RuntimeError:  # JAX is running already
            pass
    if n and len(jax.devices("cpu")) != n:
        warnings.warn(f"train.cpu_devices={n} not applied: this process already has {len(jax.devices('cpu'))} "
                      "CPU device(s) (JAX started, or the count was chosen elsewhere)", stacklevel=2)  # fmt: skip
