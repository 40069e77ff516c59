"""An ensemble as consecutive groups of members: one group per compiled call, as many groups as memory needs.

Members never interact, so training them a group at a time gives the numbers of one program holding all of
them. Every group has the same size (the last one is padded with copies of its last member, whose results are
dropped), so one compilation serves every group. Within each chunk of steps the groups run one after another;
evaluations, checkpoints and metrics always see the whole ensemble in member order.

How big a group may be is measured, not guessed: the training chunk and the evaluation are compiled for the
candidate size (that compilation is reused when the run starts), XLA reports the bytes each needs per device,
and they are compared with the memory the devices have free. A grid that does not fit is split and the run
says so.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np

from data_gen import ConfigError, TaskStatic, Universe
from data_gen.universe import universe_bytes
from iclwl.config import Config, member_data_seeds
from iclwl.training import trial
from iclwl.training.compile_cache import remembered
from iclwl.training.distributed import to_host
from iclwl.training.program import Health, MemberInputs, Meter, Program, TrainState, compiled, zero_meter
from iclwl.training.sharding import needs_step_flops, place

GiB = 2**30


class Groups:
    """The whole ensemble of ``cfg`` in groups of ``size`` members, each group's state on the devices."""

    def __init__(self, cfg: Config, st: TaskStatic, uni: Universe, init_keys: jax.Array, mem: MemberInputs,
                 size: int, devices: list | None = None, step_flops: float | None = None):  # fmt: skip
        t = cfg.train
        self.placement = place(size, t.batch_size, step_flops, t.member_loop, t.split_batch, devices)
        self.M, self.size, self.layout = len(init_keys), self.placement.size, self.placement.layout
        self.chunk_steps = t.chunk_steps
        self.count = math.ceil(self.M / self.size)
        loop = dataclasses.replace(t, member_loop=self.placement.loop)
        self.ens = compiled(Program.of(dataclasses.replace(cfg, train=loop), st, self.layout.mesh))
        self.uni = self.layout.put_replicated(uni)
        # member indices of each group; the last group repeats its last member to keep the size
        self.index = [np.minimum(np.arange(g * self.size, (g + 1) * self.size), self.M - 1)
                      for g in range(self.count)]  # fmt: skip
        take = (lambda tree, i: tree) if self.whole else _take  # one group of every member: the inputs as they are
        self.mems = [self.layout.put_members(take(mem, i)) for i in self.index]
        self.states = [self.ens.init(self.layout.put_members(take(init_keys, i))) for i in self.index]

    @property
    def whole(self) -> bool:
        """One group holding every member, in order, with no padding."""
        return self.count == 1 and self.size == self.M

    # ---- whole-ensemble views (host side, member order, padding dropped)
    def _join(self, parts: list[Any]) -> Any:
        if self.whole:
            return to_host(parts[0])
        return jax.tree.map(lambda *xs: np.concatenate(xs)[: self.M], *to_host(parts))

    def state(self) -> TrainState:
        """The ensemble's state as one tree with M members (what a checkpoint holds): on the host, or with several
        processes the global arrays themselves, each process holding its shards (one group, no padding)."""
        if jax.process_count() > 1:
            return self.states[0]
        return self._join(self.states)

    def load(self, state: TrainState) -> None:
        if jax.process_count() > 1:  # restored as global arrays, laid out as this group's state
            self.states = [state]
            return
        self.states = [self.layout.put_members(jax.tree.map(lambda x, i=i: np.asarray(x)[i], state))
                       for i in self.index]  # fmt: skip

    def health(self) -> Health:
        return self._join([s.health for s in self.states])

    def meter(self) -> Meter:
        return self._join([s.meter for s in self.states])

    # ---- work
    def train(self, t: int, stop: int, n: int) -> None:
        """Steps t+1 .. stop of every member (``n``: the compiled chunk length)."""
        self.states = [self.ens.chunk(self.uni, s, m, np.int32(t), np.int32(stop), n=n)[0]
                       for s, m in zip(self.states, self.mems, strict=True)]  # fmt: skip

    def evaluate(self, t: int = 0):
        """Every probe of every member after t steps."""
        return self._join([self.ens.evaluate(self.uni, s.params, m, t)
                           for s, m in zip(self.states, self.mems, strict=True)])  # fmt: skip

    def reset_meters(self) -> None:
        self.states = [s._replace(meter=self.layout.put_members(zero_meter(self.size))) for s in self.states]

    def describe(self) -> str:
        if self.count == 1:
            return f"placement: {self.placement.describe(self.M)}"
        return (f"placement: {self.M} members as {self.count} consecutive groups of {self.size}, each "
                f"{self.placement.describe(self.size)}")  # fmt: skip

    def bytes_needed(self, chunk_steps: int) -> int | None:
        """Bytes per device of the larger of the training chunk and the evaluation, as XLA compiled them
        (None where the backend does not say). Compiling here is not wasted: the run reuses the programs."""
        s, m, t = self.states[0], self.mems[0], np.int32(0)  # as ``train`` passes it: one program
        programs = [self.ens.chunk.compiled(self.uni, s, m, t, t, n=chunk_steps),
                    self.ens.evaluate_jit.compiled(self.uni, s.params, m, t)]  # fmt: skip
        sizes = []
        for program in programs:
            stats = program.memory_analysis()
            if stats is None:
                return None
            sizes.append(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
                         + stats.temp_size_in_bytes)  # fmt: skip
        self.evaluation_dominates = sizes[1] > sizes[0]  # which setting a refusal names
        return max(sizes)


def _take(tree: Any, index: np.ndarray) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


def free_bytes(device) -> int | None:
    """Memory a program may still use on ``device``: the accelerator's free memory, or for CPU devices the
    host's available memory shared among them. None where neither is known."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        host = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return host // max(len([d for d in jax.local_devices() if d.platform == device.platform]), 1)


def check_universes_fit(cfg: Config, st: TaskStatic) -> None:
    """Refuse, before anything is allocated, class universes larger than the memory free on the first device
    (the host's for CPU devices): the shared one, or one per member with their own data seeds."""
    seeds = member_data_seeds(cfg)
    copies = 1 if len(set(seeds)) == 1 else len(seeds) + len(set(seeds))  # stacked per member, plus each built once
    need = 2 * copies * universe_bytes(st)  # twice: while building
    device = jax.local_devices()[0]
    have = free_bytes(device)
    if have is not None and device.platform == "cpu":
        have *= len([d for d in jax.local_devices() if d.platform == "cpu"])  # free_bytes gave one device's share
    if have is not None and need > cfg.train.memory_fraction * have:
        what = f"{copies} of them, " if copies > 1 else ""
        raise ConfigError("task.n_classes", cfg.task.n_classes,
                          f"the class universe ({what}n_classes x D x (1 + exemplars) numbers) needs about "
                          f"{need / GiB:.2f} GiB, more than the {cfg.train.memory_fraction * have / GiB:.2f} GiB "
                          "available; lower task.n_classes, task.exemplars or task.D")  # fmt: skip


def fit_groups(cfg: Config, st: TaskStatic, uni: Universe, init_keys: jax.Array, mem: MemberInputs,
               devices: list | None = None, free: int | None = None) -> Groups:  # fmt: skip
    """Groups of the largest size that fits (``train.max_members`` caps it; 0 = as many as fit).

    The candidate size is compiled and measured; if it needs more than ``train.memory_fraction`` of the free
    memory, the size is cut in proportion and measured again. ``free`` overrides the measured free bytes.
    """
    t = cfg.train
    decide = needs_step_flops(t.member_loop, t.split_batch, devices) or t.placement == "measure"
    program = Program.of(cfg, st)
    flops = remembered("step-flops", program, lambda: compiled(program).step_flops(uni, mem)) if decide else None
    if jax.process_count() > 1:  # every process must make the same groups: one, whatever its own free memory
        return _one_group_over_processes(cfg, st, uni, init_keys, mem, devices, flops)
    groups = _fit_memory(cfg, st, uni, init_keys, mem, devices, free, flops)
    return _measured(cfg, st, uni, init_keys, mem, devices, free, flops, program, groups)


def _fit_memory(cfg: Config, st: TaskStatic, uni: Universe, init_keys: jax.Array, mem: MemberInputs,
                devices: list | None, free: int | None, flops: float | None) -> Groups:  # fmt: skip
    M = len(init_keys)
    size, whole = min(cfg.train.max_members or M, M), None
    while True:
        size = math.ceil(M / math.ceil(M / size))  # balanced groups: least padding for this many groups
        groups = Groups(cfg, st, uni, init_keys, mem, size, devices, flops)
        if cfg.train.max_members:
            return groups
        need, budget = groups.bytes_needed(cfg.train.chunk_steps), _budget(cfg, groups, free)
        if need is None or budget is None:
            return groups
        whole = whole or need * M / groups.size
        if need <= budget:
            if groups.count > 1:
                print(f"{M} members in one program would need about {whole / GiB:.2f} GiB per device (XLA's "
                      f"figure), more than {budget / GiB:.2f} GiB ({cfg.train.memory_fraction:g} of the free "
                      f"memory): running them as {groups.count} consecutive groups of {groups.size}")  # fmt: skip
            return groups
        if size == 1:
            field, value, what = (("probes.n_eval", cfg.probes.n_eval, "the evaluation of its probe sets")
                                  if groups.evaluation_dominates else
                                  ("train.batch_size", cfg.train.batch_size, "a training chunk"))  # fmt: skip
            raise ConfigError(field, value, f"one member needs about {need / GiB:.2f} GiB per device for {what}, "
                              f"more than the {budget / GiB:.2f} GiB available; lower train.batch_size or "
                              "probes.n_eval, or use a smaller model")  # fmt: skip
        size = max(1, min(size - 1, int(size * budget / need)))


def _budget(cfg: Config, groups: Groups, free: int | None) -> int | None:
    have = free if free is not None else free_bytes(groups.layout.mesh.devices.flat[0])
    return None if have is None else int(have * cfg.train.memory_fraction)


def _measured(cfg: Config, st: TaskStatic, uni: Universe, init_keys: jax.Array, mem: MemberInputs, devices: list | None,
              free: int | None, flops: float | None, program: Program, groups: Groups) -> Groups:  # fmt: skip
    """``groups``, or the same groups in the layout ``train.placement`` measures fastest (``iclwl.training.trial``)."""
    t = cfg.train
    devices = list(devices or jax.devices())
    size = math.ceil(groups.M / groups.count)  # members of a group, before padding
    found = trial.candidates(groups.placement, size, t.batch_size, devices, t.member_loop, t.split_batch)
    if t.placement == "rule" or len(found) < 2:
        return groups
    if t.placement == "auto":
        seconds = trial.estimated_seconds(flops, size, t.steps * groups.count, len(devices))
        if devices[0].platform != "cpu" or not trial.unsure(flops, found) or seconds < trial.MIN_SECONDS:
            return groups

    def build(c: trial.Candidate) -> Groups:
        choice = dataclasses.replace(t, member_loop=c.loop, split_batch=c.split_batch)
        return Groups(dataclasses.replace(cfg, train=choice), st, uni, init_keys, mem, size, devices, flops)

    def fits(other: Groups) -> bool:
        need, budget = other.bytes_needed(t.chunk_steps), _budget(cfg, other, free)
        return need is None or budget is None or need <= budget

    key = (program, size, t.batch_size, len(devices), devices[0].platform, found)
    best = remembered("placement", key, lambda: _trial_result(build, found, fits))
    chosen = build(trial.Candidate(best["loop"], best["split_batch"]))
    chosen.placement = dataclasses.replace(chosen.placement, why=best["why"])
    return chosen


def _trial_result(build, found, fits) -> dict[str, Any]:
    best, rates = trial.fastest(build, found, fits=fits)
    return {"loop": best.loop, "split_batch": best.split_batch, "why": trial.describe(best, rates)}


def _one_group_over_processes(cfg: Config, st: TaskStatic, uni: Universe, init_keys: jax.Array, mem: MemberInputs,
                              devices: list | None, flops: float | None) -> Groups:  # fmt: skip
    """All members in one program over the devices of every process; refused where that needs padding."""
    M = len(init_keys)
    if 0 < cfg.train.max_members < M:
        raise ConfigError("train.max_members", cfg.train.max_members, f"over {jax.process_count()} processes all "
                          f"{M} members are one program; set 0 (or at least {M})")  # fmt: skip
    groups = Groups(cfg, st, uni, init_keys, mem, M, devices, flops)
    if groups.size != M:
        n = groups.layout.mesh.shape["members"]
        raise ConfigError("train.seeds", list(cfg.train.seeds), f"over {jax.process_count()} processes the {M} "
                          f"members (seeds x sweep) must split evenly over the {n} devices they use; use a "
                          f"multiple of {n} members")  # fmt: skip
    return groups
