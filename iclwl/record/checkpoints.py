"""Checkpoints of a run: the whole ensemble state at chosen steps, with what a resume needs to trust it.

A checkpoint is an Orbax step directory under ``<run dir>/checkpoints`` with two items: ``state`` (parameters,
optimizer state, health and training meters of every member, plus the members' data and eval keys) and ``meta``
(JSON: step, resolved config, member coordinates, provenance). Orbax writes a step into a temporary directory and
renames it when complete, so a crash mid-write never replaces a good checkpoint. A SHA-256 digest of the
step's files, written right after the commit, finds a truncated or damaged file before Orbax reads it; a step
without its digest (the process stopped between the commit and the digest) is unverified and never used.
Nothing is unpickled.

A save does not stall training: the state is copied to the host and checked there, then Orbax writes it in the
background (its asynchronous saving) and a thread of ours writes the digest as soon as Orbax has committed the
step. The next save, ``wait`` and ``close`` first wait for that, so at most one save is in flight, and a write
that failed in the background ends the run there with a ``RunIOError``.

A checkpoint that cannot be read or verified (truncated, corrupt, no digest) is moved aside to
``checkpoints_unreadable/`` with a warning and the previous one is used; with none left the run stops with one
line saying so. A failed write (disk full, read-only, permission) raises ``RunIOError``, leaving the older
checkpoints as they were; Orbax removes the half-written step at the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from iclwl.config import CheckpointConfig, Config, flatten
from iclwl.record.rundir import RunIOError
from iclwl.training.distributed import any_process, barrier, is_primary


class CheckpointError(Exception):
    """A run directory's checkpoints cannot be used: say which and why, in one line."""


class Restored(NamedTuple):
    step: int
    tree: Any  # what was saved: {"state": TrainState, "data_keys": ..., "eval_keys": ...}
    meta: dict[str, Any]


# Settings that decide what a checkpoint means; a resume may change anything else (steps, probes, logging, ...).
DIGEST = "iclwl_digest.json"  # beside Orbax's files in each step directory
MEANING = (
    "task",
    "model",
    "optim",
    "sweep",
    "train.batch_size",
    "train.seeds",
    "train.data_seeds",
    "train.context_loss",
)


class Checkpoints:
    def __init__(self, directory: Path, cfg: CheckpointConfig, forever: set[int]):
        self.directory = directory.absolute()
        keep = [policies.LatestN(cfg.keep)] + ([policies.CustomSteps(sorted(forever))] if forever else [])
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=True,  # written in the background; ``_commit`` waits for it
            preservation_policy=policies.AnyPreservationPolicy(keep),
            cleanup_tmp_directories=True,  # half-written steps of a killed run
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self._pending: threading.Thread | None = None  # the save in flight: waits for Orbax, writes the digest
        self._failed: RunIOError | None = None

    def save(self, step: int, tree: Any, meta: dict[str, Any]) -> None:
        """Start saving ``tree`` as step ``step``; returns once it is on the host and checked (``wait``: done)."""
        # One process: host copies first, so the check and Orbax's writers run nothing on the devices
        # (iclwl/training/sharding.py says why eager reductions over sharded arrays are avoided). Several: each
        # process checks and writes the shards it holds (Orbax's multi-host saving).
        if jax.process_count() == 1:
            tree = jax.device_get(tree)
        if not _learned_finite(tree["state"]):  # the step guards this already; never overwrite good with bad
            raise CheckpointError(f"checkpoint at step {step}: the parameters or optimizer state hold non-finite "
                                  "values; not written")  # fmt: skip
        self.wait()
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave({**meta, "step": step}))
        try:
            self.manager.save(step, args=args, force=True)
        except Exception as e:
            raise _write_error(e, self.directory / str(step), step) from None
        self._pending = threading.Thread(target=self._commit, args=(step,), name=f"checkpoint-{step}", daemon=True)
        self._pending.start()

    def _commit(self, step: int) -> None:
        step_dir = self.directory / str(step)
        try:
            self.manager.wait_until_finished()
            if not is_primary():  # every process's shards are committed; process 0 vouches for them
                return
            tmp = step_dir / (DIGEST + ".tmp")
            tmp.write_text(json.dumps(_digest(step_dir), indent=1))
            os.replace(tmp, step_dir / DIGEST)  # a digest is whole or absent
        except Exception as e:
            self._failed = _write_error(e, step_dir, step)

    def wait(self) -> None:
        """Until the save in flight is committed and verified; raises its ``RunIOError`` if it failed."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

    def restore_latest(self, like: Any, check: Callable[[dict[str, Any]], None]) -> Restored | None:
        """The newest readable checkpoint (``like``: abstract tree of the state), or None if there is none.
        ``check(meta)`` runs before any array is read and may refuse the checkpoint by raising."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                _verify(self.directory / str(step))
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # any failure to read means: do not trust this step
                self._set_aside(step, e)
                continue
            check(dict(meta))  # a refusal is the user's to fix, not damage: leave the checkpoint where it is
            try:
                got = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like)))
                if not _learned_finite(got["state"]["state"]):
                    raise ValueError("non-finite parameters or optimizer state")
                return Restored(step, got["state"], dict(meta))
            except Exception as e:
                self._set_aside(step, e)
        if steps:
            raise CheckpointError(f"checkpoint: none of the checkpoints in {self.directory} could be read "
                                  f"(steps {sorted(steps)}; moved to {self._aside_dir()})")  # fmt: skip
        return None

    def _aside_dir(self) -> Path:
        return self.directory.parent / "checkpoints_unreadable"

    def _set_aside(self, step: int, error: Exception) -> None:
        src = self.directory / str(step)
        dst = self._aside_dir() / str(step)
        warnings.warn(f"checkpoint at step {step} is unreadable ({type(error).__name__}: {str(error)[:200]}); "
                      f"moved to {dst}, trying the previous one", stacklevel=2)  # fmt: skip
        if is_primary():  # with several processes, all of them judged the same files the same way
            dst.parent.mkdir(exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            shutil.move(src, dst)
        barrier(f"checkpoint-set-aside-{step}")
        self.manager.reload()

    def close(self) -> None:
        """Wait for the save in flight and release Orbax's resources. Never raises: a run that ends by an error
        keeps that error (call ``wait`` first to learn whether the last save succeeded)."""
        try:
            self.wait()
            self.manager.close()
        except Exception as e:  # closing after a failed write must not hide why the run ended
            warnings.warn(f"closing the checkpoints in {self.directory}: {e}", stacklevel=2)


def _write_error(e: Exception, step_dir: Path, step: int) -> RunIOError:
    if isinstance(e, OSError):
        return RunIOError(f"{e.filename or step_dir}: {e.strerror or e}; checkpoint at step {step} not written")
    # Orbax's and TensorStore's writers report a full disk in their own types
    cause = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    return RunIOError(f"{step_dir}: {cause}; checkpoint at step {step} not written")


def _learned_finite(state: Any) -> bool:
    """Whether a TrainState's parameters and optimizer state are finite. Its health may hold the non-finite loss
    of the step that stopped a member (which kept its last good state): that is a record, not damage."""
    leaves = [x for x in jax.tree.leaves((state.params, state.opt_state)) if np.issubdtype(x.dtype, np.inexact)]
    return not any_process(not all(_finite(x) for x in leaves))


def _finite(x: Any) -> bool:
    """Whether the part of ``x`` this process holds is finite (all of it, for host arrays)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return all(np.isfinite(np.asarray(shard.data)).all() for shard in x.addressable_shards)
    return bool(np.isfinite(np.asarray(x)).all())


def _digest(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file Orbax wrote for a step, so damage is found before Orbax reads a byte."""
    files = sorted(f for f in step_dir.rglob("*") if f.is_file() and not f.name.startswith(DIGEST))
    return {str(f.relative_to(step_dir)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _verify(step_dir: Path) -> None:
    path = step_dir / DIGEST
    if not path.exists():  # the process stopped between Orbax's commit and the digest: nothing vouches for it
        raise ValueError("it has no digest (the run stopped before the checkpoint was verified)")
    want, have = json.loads(path.read_text()), _digest(step_dir)
    for name, digest in want.items():
        if have.get(name) != digest:
            raise ValueError(f"{name} is {'missing' if name not in have else 'changed since it was written'}")


def resume_conflicts(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Settings that differ between the checkpoint's config and ``cfg`` and would change its meaning.

    A setting added to the schema after the checkpoint was written (``model.arch``) counts at its default there.
    """
    now = flatten(json.loads(json.dumps(dataclasses.asdict(cfg))))
    before = {**flatten(json.loads(json.dumps(dataclasses.asdict(Config())))), **flatten(saved)}
    keys = sorted(set(now) | set(before))
    meaning = [k for k in keys if any(k == m or k.startswith(m + ".") for m in MEANING)]
    return [f"{k}={before.get(k)!r} -> {now.get(k)!r}" for k in meaning if before.get(k) != now.get(k)]
