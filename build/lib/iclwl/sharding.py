"""Where an ensemble lives: the member axis split over the local devices, the batch axis when members are few.

With M members and n local devices, the mesh has axes ``members`` (size g = gcd(M, n)) and ``batch`` (n / g).
Every leaf of the state and of the member inputs is split along its leading (member) axis; the class universe is
replicated. Inside the step, each member's batch is split along ``batch`` (``with_sharding_constraint``), so
1 member on 8 devices uses all 8 for its batch, and 64 members on 8 devices put 8 members on each. The same
code runs on one CPU (a 1 x 1 mesh: nothing moves), several GPUs or a TPU host; XLA inserts the communication.

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


@dataclass(frozen=True)
class Layout:
    mesh: Mesh

    @classmethod
    def for_members(cls, M: int, batch_size: int, devices: list | None = None) -> Layout:
        devices = list(devices or jax.local_devices())
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
        return jax.device_put(tree, self.members)

    def put_replicated(self, tree):
        return jax.device_put(tree, self.replicated)

    def describe(self) -> str:
        g, b = self.mesh.shape["members"], self.mesh.shape["batch"]
        return f"{g * b} device(s): members split {g} way(s), each member's batch {b} way(s)"


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
