"""One ensemble over several processes: a multi-host TPU slice, several GPU nodes, or processes on one machine.

JAX's multi-controller runtime runs the same program in every process; each process holds the shards of the
global arrays that live on its own devices. ``start`` joins the processes (``jax.distributed.initialize``) when
``train.distributed`` asks for it:

- ``auto`` (the default): when the run is one of several tasks of a SLURM step (``srun`` with ``SLURM_NTASKS`` > 1),
  one host of a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` lists several hosts), or when ``train.coordinator``
  is set;
- ``on``: always (JAX detects the cluster, or reads ``train.coordinator``, ``train.num_processes``,
  ``train.process_id``);
- ``off``: never; every process is a run of its own.

Then the member axis is laid over every device of every process (``jax.devices()``). Process 0 alone writes the
record (metrics, config, plots, W&B); every process takes part in each checkpoint, writing the shards it holds
(Orbax's multi-host saving), and in each evaluation, whose numbers are gathered to every process. A stop request
(SIGTERM) that reaches any process stops all of them at the same chunk boundary.

The helpers below do the same as their one-process forms when only one process runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from data_gen import ConfigError
from iclwl.config import TrainConfig


def cluster_detected() -> str | None:
    """The multi-process cluster this process is part of, if any: 'SLURM' or 'TPU slice'."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        return "SLURM"
    if len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "TPU slice"
    return None


def wanted(t: TrainConfig) -> bool:
    """Whether ``train.distributed`` asks this process to join others."""
    if t.distributed == "auto":
        return t.coordinator is not None or cluster_detected() is not None
    return t.distributed == "on"


def start(t: TrainConfig) -> None:
    """Join the other processes of the run (before JAX runs anything), when ``train.distributed`` asks for it."""
    if not wanted(t) or jax.distributed.is_initialized():
        return
    explicit = {}
    if t.coordinator is not None:
        explicit = {"coordinator_address": t.coordinator, "num_processes": t.num_processes,
                    "process_id": t.process_id}  # fmt: skip
    try:
        jax.distributed.initialize(**explicit)
    except (ValueError, RuntimeError) as e:  # no cluster found, or the coordinator cannot be reached
        why = str(e).strip().rstrip(".")
        raise ConfigError("train.distributed", t.distributed, f"could not join the other processes: {why}; set "
                          "train.coordinator, train.num_processes and train.process_id, or "
                          "train.distributed=off") from None  # fmt: skip


def is_primary() -> bool:
    """Process 0, the one that writes the record."""
    return jax.process_index() == 0


def put(tree: Any, sharding: Sharding) -> Any:
    """Host values (the same in every process) -> global arrays laid out by ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _put(x, sharding), tree)


def _put(x: Any, sharding: Sharding) -> jax.Array:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # keys travel as their data
        data = np.asarray(jax.random.key_data(x))
        return jax.random.wrap_key_data(_put(data, sharding), impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(tree: Any) -> Any:
    """Global arrays -> NumPy arrays in every process (each process gathers the shards it does not hold)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), tree)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds in any process (every process must call this at the same point)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.array([flag])).any())


def barrier(name: str) -> None:
    """Wait until every process gets here."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def same_path(path: Path) -> Path:
    """Process 0's ``path`` in every process (their Hydra run directories may differ by a timestamp)."""
    if jax.process_count() == 1:
        return path
    raw = np.zeros(4096, np.uint8)
    encoded = str(path.absolute()).encode()
    raw[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    raw = multihost_utils.broadcast_one_to_all(raw)
    return Path(bytes(np.asarray(raw)).rstrip(b"\0").decode())
