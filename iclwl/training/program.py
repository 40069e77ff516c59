"""Ensemble training: every leaf of the state carries a leading member axis M; one XLA program per chunk.

A run is a function of its seeds. Each member's seed splits once into three named streams:
init (parameters), data (batch t is ``sample_batch(task, fold_in(data, t))``) and eval (the probe sets). The
step counter is the whole data state, so any batch can be regenerated and a resumed run is exact.

``chunk`` is ``jit(members (scan over S steps (train step)))``: the members of a device are batched by ``vmap`` or
run one after another by ``lax.map``, each for the whole chunk (``train.member_loop``; ``iclwl.training.sharding.place``
chooses for 'auto'). S is fixed, so it compiles once, and steps past ``stop`` are skipped (``lax.cond`` on the
unbatched step counter), so a chunk can end exactly at an evaluation step. ``evaluate`` runs every probe for every
member. Metrics leave the device once per call.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_gen import (
    ConfigError,
    TaskParams,
    TaskStatic,
    Universe,
    dynamic_part,
    make_universe,
    sample_batch,
    static_part,
)
from iclwl.config import (
    Config,
    ModelConfig,
    OptimConfig,
    ProbeConfig,
    TrainConfig,
    member_data_seeds,
    member_interventions,
    member_optims,
    member_tasks,
    members,
)
from iclwl.models.architectures import build_model
from iclwl.models.interventions import KINDS, PATTERNS, EditWindow
from iclwl.models.transformer import random_offsets
from iclwl.probes.evaluate import evaluate_member
from iclwl.training.optim import OptimParams, make_optimizer
from iclwl.training.stored import Stored

INIT, DATA, EVAL = 0, 1, 2  # named key streams of a member's seed


class Streams(NamedTuple):
    init: jax.Array
    data: jax.Array
    eval: jax.Array


def streams(seed: int, data_seed: int | None = None) -> Streams:
    """The named streams of a member's seed; a member with a data seed of its own folds it in, so that pairs
    (seed, data seed) that share a seed still start from different parameters and batches."""
    root = jax.random.key(seed)
    if data_seed is not None:
        root = jax.random.fold_in(root, data_seed)
    return Streams(*(jax.random.fold_in(root, s) for s in (INIT, DATA, EVAL)))


class Health(NamedTuple):
    """A member whose step would give a non-finite loss, parameters or optimizer state stops: it keeps its last
    good parameters and optimizer state, and trains no more."""

    alive: jax.Array  # bool
    bad_step: jax.Array  # int32: the step that failed (-1 while alive)
    bad_loss: jax.Array  # float32: the loss of that step


class Meter(NamedTuple):
    """Training loss and accuracy summed over the steps since the last evaluation (reset there)."""

    loss: jax.Array
    acc: jax.Array
    steps: jax.Array  # int32


class TrainState(NamedTuple):
    params: nnx.State
    opt_state: optax.OptState
    health: Health
    meter: Meter


class ChunkOutput(NamedTuple):
    """What a chunk called with ``trace=True`` returns besides the state: every step of every member (tests
    compare members with single runs step by step; a run needs only the state's ``Meter``)."""

    loss: jax.Array  # (S, M) training loss on the query at each step
    acc: jax.Array  # (S, M) training accuracy on the query
    trained: jax.Array  # (S, M) bool: this member took a step (False past ``stop`` and once it has stopped)


def zero_meter(M: int | None = None) -> Meter:
    shape = () if M is None else (M,)
    return Meter(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.int32))


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


@dataclass(frozen=True)
class Program:
    """Everything compiled into a run: runs with equal programs share their compiled code (sweeps, tests)."""

    task: TaskStatic
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig  # with seeds blanked: they are data, not program
    probes: ProbeConfig
    mesh: Mesh | None = None  # iclwl.training.sharding.Layout's mesh; None: one device
    edits: bool = False  # some member edits a head while it trains (MemberInputs.edit); the rest is data
    edit_probes: bool = False  # ... and the probes inside its window see the edit too

    @classmethod
    def of(cls, cfg: Config, st: TaskStatic, mesh: Mesh | None = None) -> Program:
        # a member's lr and weight decay are data (MemberInputs.optim); only whether decay exists is compiled in
        decays = any(o.weight_decay > 0 for o in member_optims(cfg))
        optim = dataclasses.replace(cfg.optim, lr=0.0, weight_decay=1.0 if decays else 0.0)
        # a run's loop comes from its placement (iclwl.training.sharding.place, via iclwl.training.groups); a program
        # made without one (tests, FLOP counts) batches its members
        loop = cfg.train.member_loop if cfg.train.member_loop != "auto" else "vmap"
        train = dataclasses.replace(cfg.train, seeds=(), resume=None, max_members=0, memory_fraction=1.0,
                                    member_loop=loop, split_batch=None, placement="auto", cpu_devices=0,
                                    compile_cache="", distributed="off", coordinator=None, num_processes=0,
                                    process_id=-1)  # fmt: skip
        edits = any(e.kind != "none" for e in member_interventions(cfg))
        return cls(st, cfg.model, optim, train, cfg.probes, mesh if mesh is not None and mesh.size > 1 else None,
                   edits, edits and cfg.intervene.probes)  # fmt: skip


def ensemble_static(cfg: Config) -> TaskStatic:
    """The compiled-in task of all members; refuses sweeps that would change it. Its seed is the members' data
    seed when they share one (``make_universe`` of it is their universe), else task.seed: then each member has
    a universe of its own (``member_universes``)."""
    statics = [static_part(t) for t in member_tasks(cfg)]
    novel = any(s.novel for s in statics)
    seeds = {s.seed for s in statics}
    seed = seeds.pop() if len(seeds) == 1 else cfg.task.seed
    base = dataclasses.replace(statics[0], novel=novel, seed=seed)
    for s, m in zip(statics, members(cfg), strict=True):
        if dataclasses.replace(s, novel=novel, seed=seed) != base:
            raise ConfigError("sweep", m, "this member changes a compiled-in property of the task (e.g. sets "
                              "p_relevant or L_relevant where the task leaves them unset)")  # fmt: skip
    return base


class MemberInputs(NamedTuple):
    """What differs between members besides their state; every leaf has a leading member axis."""

    task: TaskParams
    optim: OptimParams
    data_key: jax.Array
    eval_key: jax.Array
    # each member's class universe when the members' data seeds differ; None: every member uses the shared one
    universe: Universe | None = None
    edit: EditWindow | None = None  # each member's training-time edit; None when no member has one


def member_universes(cfg: Config) -> Universe | None:
    """The class universe of every member, stacked along a member axis, when members have different data seeds
    (``train.data_seeds``); None when they all share ``task.seed``'s (the run passes that one separately)."""
    seeds = member_data_seeds(cfg)
    if len(set(seeds)) == 1:
        return None
    st = ensemble_static(cfg)
    built = {d: make_universe(dataclasses.replace(st, seed=d)) for d in dict.fromkeys(seeds)}
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[built[d] for d in seeds])


def shared_universe(cfg: Config, st: TaskStatic) -> Universe | None:
    """The universe every member shares (``st = ensemble_static(cfg)``), or None when each has its own."""
    return make_universe(st) if len(set(member_data_seeds(cfg))) == 1 else None


def member_inputs(cfg: Config) -> tuple[jax.Array, MemberInputs]:
    """The init keys and the inputs of every member of ``cfg``, in ``members(cfg)`` order."""
    keys = [streams(c["seed"], c.get("data_seed")) for c in members(cfg)]
    init, data, ev = (jnp.stack([getattr(k, f) for k in keys]) for f in ("init", "data", "eval"))
    # stacked on the host: the values as they are, with no small programs to compile and load
    task = jax.tree.map(lambda *xs: np.stack(xs), *map(dynamic_part, member_tasks(cfg)))
    optims = member_optims(cfg)
    optim = OptimParams(np.array([o.lr for o in optims], np.float32),
                        np.array([o.weight_decay for o in optims], np.float32))  # fmt: skip
    return init, MemberInputs(task, optim, data, ev, member_universes(cfg), member_edits(cfg))


def member_edits(cfg: Config) -> EditWindow | None:
    """Every member's ``intervene`` as an ``EditWindow`` along a member axis; None when none edits."""
    edits = member_interventions(cfg)
    if all(e.kind == "none" for e in edits):
        return None
    rows = [(KINDS.index(e.kind), e.layer, e.head, PATTERNS.index(e.pattern), e.start, e.stop) for e in edits]
    return EditWindow(*(jnp.array(col, jnp.int32) for col in zip(*rows, strict=True)))


def _named(fun, name: str):
    """``fun`` under ``name`` (what JAX's compilation log calls its program)."""
    fun.__name__ = name
    return fun


@functools.lru_cache(maxsize=8)
def compiled(program: Program) -> Ensemble:
    """The compiled pieces of ``program``, shared by every run of equal program in this process: jobs of a Hydra
    multirun that differ only in dynamic settings (seeds, N, p_relevant, lr ...) compile once. Only the 8 most
    recent programs are kept, so a long multirun over static settings does not pile up compiled code."""
    return Ensemble(program)


class Ensemble:
    """The compiled pieces of a program: initialise, train a chunk, evaluate. Get one with ``compiled``."""

    def __init__(self, program: Program):
        self.prog = prog = program
        st = prog.task
        self.make_model = lambda key: build_model(prog.model, st, key)
        # On several devices the state stays split along its member axis from init on: an input laid out otherwise
        # (XLA would make init's output replicated) would compile the chunk a second time at its second call.
        init_out, chunk_out = None, None
        if prog.mesh is not None:
            init_out = NamedSharding(prog.mesh, PartitionSpec("members"))
            chunk_out = (init_out, NamedSharding(prog.mesh, PartitionSpec(None, "members")))
        # jax.jit whose traced programs are kept beside the compiled ones: a second run neither traces nor compiles
        self.init = Stored(_named(jax.vmap(self._init_member), "_init_member"), (program, "init"),
                           out_shardings=init_out)  # fmt: skip
        self.evaluate_jit = Stored(_named(jax.vmap(self._evaluate_member, in_axes=(None, 0, 0, None)),
                                          "_evaluate_member"), (program, "evaluate"))  # fmt: skip
        self.chunk = Stored(self._chunk, (program, "chunk"), static_argnames=("n", "trace"), donate_argnums=(1,),
                            out_shardings=chunk_out)  # fmt: skip
        for stored in (self.init, self.chunk, self.evaluate_jit):  # a second run: loading starts now, side by side
            stored.prefetch()

    @functools.cached_property
    def _abstract(self) -> tuple[nnx.GraphDef, nnx.State]:
        """The model's structure and its state's shapes (traced when a program is, never in a run that loads them)."""
        return nnx.split(nnx.eval_shape(lambda: self.make_model(jax.random.key(0))))

    @property
    def graphdef(self) -> nnx.GraphDef:
        return self._abstract[0]

    @functools.cached_property
    def tx(self) -> optax.GradientTransformation:
        return make_optimizer(self.prog.optim, self.prog.train.steps, self._abstract[1])

    def evaluate(self, uni: Universe | None, params: nnx.State, mem: MemberInputs, t: int = 0):
        """Every probe of every member, after t training steps (which only edits inside their window read)."""
        return self.evaluate_jit(uni, params, mem, np.int32(t))  # as Groups.bytes_needed passes it: one program

    def step_flops(self, uni: Universe | None, mem: MemberInputs) -> float | None:
        """FLOPs of one member's training step (its batch, forward and backward), as XLA counts the traced
        program: nothing is compiled. None where the backend does not count."""
        one = jax.tree.map(lambda x: x[0], mem)
        uni = one.universe if one.universe is not None else uni
        params = nnx.state(nnx.eval_shape(lambda: self.make_model(jax.random.key(0))), nnx.Param)
        grad = jax.jit(jax.grad(self._loss, has_aux=True))
        try:
            cost = grad.lower(params, uni, one.task, one.data_key, one.edit, jnp.int32(0)).cost_analysis()
        except NotImplementedError:
            return None
        cost = cost[0] if isinstance(cost, list) and cost else cost
        return float(cost["flops"]) if cost and cost.get("flops", -1) > 0 else None

    # ---- one member
    def _init_member(self, key: jax.Array) -> TrainState:
        params = nnx.state(self.make_model(key), nnx.Param)
        health = Health(jnp.bool_(True), jnp.int32(-1), jnp.float32(0))
        return TrainState(params, self.tx.init(params), health, zero_meter())

    def _loss(self, params: nnx.State, uni: Universe, task: TaskParams, key: jax.Array, edit: EditWindow | None,
              t: jax.Array):  # fmt: skip
        k_batch, k_offset = jax.random.split(key)
        B = self.prog.train.batch_size
        batch = sample_batch(self.prog.task, uni, task, k_batch, B)
        mesh = self.prog.mesh
        if mesh is not None and mesh.shape["batch"] > 1:  # few members: split each one's batch over devices
            batch = jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, PartitionSpec("batch")))
        model = nnx.merge(self.graphdef, params)
        # only the transformer takes an intervention (the config refuses edits for the other archs)
        extra = {"intervention": edit.at(t, self.prog.model, batch.classes)} if edit is not None else {}
        logits = model(batch.items, batch.labels, random_offsets(self.prog.model, k_offset, B),
                       query_only=not self.prog.train.context_loss, **extra)  # fmt: skip
        targets = batch.labels[:, -logits.shape[1] :]  # (B, R): the query's, or every item's label
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, R)
        acc = jnp.mean(jnp.argmax(logits[:, -1], -1) == targets[:, -1])
        return ce.mean(), (ce[:, -1].mean(), acc)

    def _step_member(self, uni: Universe | None, state: TrainState, mem: MemberInputs, t: jax.Array):
        """Step t + 1 of one member (batch t); a step that is not finite is discarded and stops the member."""
        uni = mem.universe if mem.universe is not None else uni
        key = jax.random.fold_in(mem.data_key, t)
        grads, (loss, acc) = jax.grad(self._loss, has_aux=True)(state.params, uni, mem.task, key, mem.edit, t)
        tx = make_optimizer(self.prog.optim, self.prog.train.steps, state.params, mem.optim)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        h = state.health
        finite = jnp.isfinite(loss) & all_finite(params) & all_finite(opt_state)
        take = h.alive & finite
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(take, new, old),
                                         (params, opt_state), (state.params, state.opt_state))  # fmt: skip
        failed = h.alive & ~finite
        health = Health(take, jnp.where(failed, t + 1, h.bad_step), jnp.where(failed, loss, h.bad_loss))
        m = state.meter
        meter = Meter(m.loss + jnp.where(take, loss, 0), m.acc + jnp.where(take, acc, 0), m.steps + take)
        return TrainState(params, opt_state, health, meter), loss, acc, take

    def _evaluate_member(self, uni: Universe | None, params: nnx.State, mem: MemberInputs, t: jax.Array):
        uni = mem.universe if mem.universe is not None else uni
        model = nnx.merge(self.graphdef, params)
        edit = functools.partial(mem.edit.at, t, self.prog.model) if self.prog.edit_probes else None
        return evaluate_member(self.prog.task, self.prog.model, self.prog.probes, uni, model, mem.task, mem.eval_key,
                               edit)  # fmt: skip

    # ---- all members, many steps
    def _chunk(self, uni: Universe | None, state: TrainState, mem: MemberInputs, t0, stop, n: int,
               trace: bool = False) -> tuple[TrainState, ChunkOutput | None]:  # fmt: skip
        """Train steps t0+1 .. stop (at most n) for every member; with ``trace``, also each step's loss."""

        def member_chunk(s: TrainState, m: MemberInputs):  # one member, every step of the chunk
            def body(carry, _):
                s, t = carry
                active = t < stop
                idle = lambda s: (s, jnp.float32(0), jnp.float32(0), jnp.bool_(False))
                s, loss, acc, took = jax.lax.cond(active, lambda s: self._step_member(uni, s, m, t), idle, s)
                return (s, t + active.astype(t.dtype)), ChunkOutput(loss, acc, took) if trace else None

            (s, _), out = jax.lax.scan(body, (s, t0), None, length=n)
            return s, out

        mesh = self.prog.mesh
        axis = "members" if mesh is not None else None
        if self.prog.train.member_loop == "vmap":
            state, out = jax.vmap(member_chunk, spmd_axis_name=axis)(state, mem)
        else:  # 'map': on each device (g along the member axis) its members one after another, each for the chunk
            M = mem.data_key.shape[0]
            g = mesh.shape["members"] if mesh is not None else 1
            split = lambda x: x.reshape(g, M // g, *x.shape[1:])
            join = lambda x: x.reshape(M, *x.shape[2:])
            per_device = jax.vmap(lambda s, m: jax.lax.map(lambda sm: member_chunk(*sm), (s, m)), spmd_axis_name=axis)
            state, out = jax.tree.map(join, per_device(jax.tree.map(split, state), jax.tree.map(split, mem)))
        return state, jax.tree.map(lambda x: x.T, out)  # (M, S) -> (S, M)
