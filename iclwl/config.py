"""Typed, frozen run configuration, and the checks that refuse a bad one before anything compiles.

Hydra composes plain YAML (``conf/``); ``from_dict`` turns the result into these dataclasses, refusing unknown
keys (with a suggestion), wrong types and values that break a rule, each with one line that names the field,
the value and the rule. Derived values are computed where they are used, never written back.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from data_gen import DYNAMIC_FIELDS, ConfigError, TaskSpec, validate
from data_gen.errors import check_type

Arch = Literal["transformer", "gated", "lstm"]


@dataclass(frozen=True)
class ModelConfig:
    """The network that reads ``x1 y1 x2 y2 ... xL yL xq`` (or one token per (item, label) with 'concat').

    arch: 'transformer' (iclwl/models/transformer.py, reads every field); 'gated' (iclwl/models/gated.py, Chan et
    al. 2024: an MLP on the query mixed by a learned gate with a softmax over its similarity to the context items;
    reads d_model); 'lstm' (iclwl/models/lstm.py: the same tokens through stacked LSTMs; reads n_layers, d_model,
    tokens, readout_hidden).
    An arch ignores the fields it does not read, so any experiment preset runs with any arch
    (``experiment=chan2022_bursty model.arch=lstm``: a 12-layer LSTM of width 64; the preset's n_heads is unused).
    """

    arch: Arch = "transformer"
    n_layers: int = 2
    n_heads: int = 2
    d_model: int = 64
    mlp_ratio: float = 4.0  # 0 = attention-only (Reddy 2023, Singh 2025)
    layernorm: Literal["pre", "none"] = "pre"
    pos: Literal["sinusoidal", "learned", "rotary", "none", "onehot"] = "learned"
    max_offset: int = 0  # 'onehot' (Reddy 2023): positions shifted by a random offset in [0, max_offset]
    tokens: Literal["interleaved", "concat"] = "interleaved"
    readout_hidden: tuple[int, ...] = ()  # widths of an MLP readout head; () = linear readout
    encoder: Literal["linear", "resnet", "random"] = (
        "linear"  # item encoder (iclwl/models/encoders.py); resnet/random: images
    )
    encoder_width: int = 32  # resnet: channels of the first stage; random: number of features
    encoder_stages: int = 2  # resnet: stages of two residual blocks, each after the first halving the resolution
    # transformer: the same logits and gradients through cheaper products (iclwl/models/fast_paths.py); false runs
    # the plain forward pass of iclwl/models/transformer.py, for a model changed there
    fast_paths: bool = True


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd
    b1: float = 0.9
    b2: float = 0.999
    schedule: Literal["constant", "warmup_cosine", "warmup_rsqrt"] = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0  # warmup_cosine: lr at the last step, as a fraction of lr
    clip_norm: float = 0.0  # 0 = no gradient clipping
    weight_decay: float = 0.0  # adamw: decoupled; adam, sgd: L2 added to the gradient
    decay_mask: Literal["all", "mlp", "attention"] = "all"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 6000
    batch_size: int = 64
    seeds: tuple[int, ...] = (0,)  # one ensemble member per seed (times the sweep grid)
    # the data seed of each entry of seeds (same length), or () for task.seed everywhere. A data seed is the task's
    # seed for that member: it redraws the prototypes, exemplars, frequency ranking, holdout split and finite
    # training set, as the papers' seeds do; train.seeds alone redraw only the initialisation and batch order.
    # Pairs may repeat a seed or a data seed (seeds=[0,1,0,1] data_seeds=[0,0,1,1] crosses them), not both.
    data_seeds: tuple[int, ...] = ()
    chunk_steps: int = 250  # training steps per compiled call; metrics leave the device once per chunk
    context_loss: bool = False  # also train on every context label, not only the query's
    resume: str | None = None  # a run directory to continue (a run also continues in its own directory)
    max_members: int = 0  # members per compiled program; 0 = as many as fit (measured), the rest in more groups
    memory_fraction: float = 0.9  # of the devices' free memory that one group's programs may use
    # members sharing a device: 'vmap' batches them, 'map' runs them one after another; 'auto' is 'vmap' on
    # accelerators and, on CPU, 'vmap' for models whose step is small and 'map' for larger ones
    # (iclwl.training.sharding.place)
    member_loop: Literal["auto", "vmap", "map"] = "auto"
    # split one member's batch over devices when members are fewer than devices; null = auto: on accelerators yes,
    # on CPU only for large steps (where it pays; for small ones it halved the speed)
    split_batch: bool | None = None
    # how the open choices of member_loop and split_batch are made: 'rule' by the size of a member's step, 'measure'
    # by timing each candidate layout at the start, 'auto' measures where the rule is unsure and the run is long
    # (iclwl.training.trial); a measured choice is kept with the compilation cache for later runs of the program
    placement: Literal["auto", "rule", "measure"] = "auto"
    # CPU only: split the host into this many JAX devices, so members (or one member's batch) get a core each;
    # 0 = one per core, at most 8 (docs/benchmarks.md: on 2 cores, 16 members train 1.6-1.75x the member-steps/s of
    # 16 on one device). Applies when a process first uses JAX (iclwl.training.sharding.use_cpu_devices)
    cpu_devices: int = 0
    # JAX's persistent compilation cache (iclwl/training/compile_cache.py): 'auto' = $JAX_COMPILATION_CACHE_DIR or
    # ~/.cache/iclwl/jax, 'off', or a directory. A second run of the same programs loads them instead of compiling
    compile_cache: str = "auto"
    # one ensemble over several processes (iclwl/training/distributed.py): 'auto' joins them under srun with several
    # tasks, on a multi-host TPU slice, or when coordinator is set; 'on' always; 'off' never
    distributed: Literal["auto", "on", "off"] = "auto"
    coordinator: str | None = None  # "host:port" of process 0, for processes started by hand
    num_processes: int = 0  # with coordinator: how many processes take part
    process_id: int = -1  # with coordinator: this process's index, 0 .. num_processes - 1


@dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints of the whole ensemble under <run dir>/checkpoints; the last one is also written on
    SIGTERM/SIGINT. ``keep`` bounds the rolling ones; the ``log_spaced`` ones are kept for studying dynamics."""

    enabled: bool = True
    every: int = 0  # save every this many steps; 0 = at every evaluation step
    log_spaced: int = 0  # plus this many log-spaced steps, never deleted
    keep: int = 2  # latest checkpoints kept (besides the log-spaced ones)


@dataclass(frozen=True)
class ProbeConfig:
    n_eval: int = 512  # sequences per probe set
    n_log: int = 16  # log-spaced evaluation steps
    every: int = 0  # plus one every this many steps (0 = ten evenly spaced evaluations)
    families: bool = False  # also the shots_k and distance_d families
    names: tuple[str, ...] = ()  # () = every probe that fits the task
    mechanisms: bool = True  # attention measures and prediction sources on every probe set (iclwl/probes/mechanisms.py)
    # each head's worth to each probe (iclwl/probes/ablations.py): 'zero' or 'mean' replaces its output, head by head,
    # at every evaluation and records the accuracy lost; one more forward pass a head and probe set. 'off': none
    ablations: Literal["off", "zero", "mean"] = "off"
    ablation_k: int = 1  # with ablations: the k most inductive heads replaced together, against k random ones; 0 = no


@dataclass(frozen=True)
class InterveneConfig:
    """One attention head edited while the model trains (iclwl/models/interventions.py), the transformer only.

    kind: 'zero' replaces the head's output by zero; 'clamp' makes it attend by ``pattern`` instead of its own
    weights: 'previous_token' (each token to the one before it), 'induction' (each item to the labels of the
    earlier items of its class, the pattern an induction head learns) or 'uniform'. The edit applies to the steps
    that start from step count ``start`` up to ``stop`` (-1: to the end), and, with ``probes``, to the evaluations
    in that window too. Every field is data: ``sweep.intervene_<field>`` makes a grid of edits members of one
    compiled program.
    """

    kind: Literal["none", "zero", "clamp"] = "none"
    layer: int = 0
    head: int = 0
    pattern: Literal["previous_token", "induction", "uniform"] = "previous_token"
    start: int = 0
    stop: int = -1
    probes: bool = True  # the probes inside the window see the edited model (false: always the model as it is)


@dataclass(frozen=True)
class LoggingConfig:
    progress: bool = True
    plot: bool = True


@dataclass(frozen=True)
class WandbConfig:
    """Optional Weights & Biases logging (iclwl/record/wandb_sink.py): one W&B run per member, grouped by the sweep.

    Off by default, so no run needs an account; metrics.jsonl is written either way.
    """

    mode: Literal["online", "offline", "disabled"] = "disabled"  # offline: files to upload later with `wandb sync`
    entity: str | None = None  # None = the account's default entity
    project: str = "iclwl"
    group: str | None = None  # None = <name>-<Hydra sweep dir name> in a multirun, <name>-<run dir name> otherwise
    tags: tuple[str, ...] = ()
    dir: str | None = None  # where the wandb/ folder goes; None = the run directory
    per_member: bool = True  # False: one W&B run for the whole ensemble, metric names prefixed by member


Values = tuple[Any, ...] | None


@dataclass(frozen=True)
class SweepConfig:
    """Dynamic task fields and optimizer settings that differ per member, each a list (None = not swept).

    The members are the product of the lists (``mode='product'``) or their zip (``mode='zip'``), times the seeds
    of ``train.seeds``; one compiled program trains them all. Static fields sweep with Hydra multirun (-m).
    """

    mode: Literal["product", "zip"] = "product"
    K: Values = None
    alpha: Values = None
    p_high: Values = None
    n_high: Values = None
    p_bursty: Values = None
    p_relevant: Values = None
    L_relevant: Values = None
    distance: Values = None
    noise_scale: Values = None
    N: Values = None
    p_novel: Values = None
    label_noise: Values = None
    lr: Values = None  # optim.lr
    weight_decay: Values = None  # optim.weight_decay
    intervene_kind: Values = None  # intervene.kind, and so on
    intervene_layer: Values = None
    intervene_head: Values = None
    intervene_pattern: Values = None
    intervene_start: Values = None
    intervene_stop: Values = None

    def swept(self) -> dict[str, tuple[Any, ...]]:
        return {k: getattr(self, k) for k in SWEEPABLE if getattr(self, k) is not None}


SEED_COORDS = ("seed", "data_seed")  # the coordinates members() gives a member for its seeds
OPTIM_FIELDS = ("lr", "weight_decay")  # the optimizer fields a sweep varies per member
# the intervene fields a sweep varies per member, as sweep (and row) fields: intervene.start -> intervene_start
INTERVENE_FIELDS = ("intervene_kind", "intervene_layer", "intervene_head", "intervene_pattern", "intervene_start",
                    "intervene_stop")  # fmt: skip
SWEEPABLE = (*DYNAMIC_FIELDS, *OPTIM_FIELDS, *INTERVENE_FIELDS)
# the sweepable fields are listed by hand for readability; they must be exactly these
assert {f.name for f in dataclasses.fields(SweepConfig)} - {"mode"} == set(SWEEPABLE)


@dataclass(frozen=True)
class Config:
    task: TaskSpec = field(default_factory=TaskSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    intervene: InterveneConfig = field(default_factory=InterveneConfig)
    name: str = "default"


# ------------------------------------------------------------------------------------------ dict -> dataclass


def _build(path: str, cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path, data, "must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(names)}"
            raise ConfigError(
                f"{path}.{key}".lstrip("."), data[key], f"is not a setting of {path or 'the config'}{hint}"
            )
    kwargs = {k: check_type(f"{path}.{k}".lstrip("."), v, hints[k], _build) for k, v in data.items()}
    return cls(**kwargs)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"task": {"L": 8}}`` -> ``{"task.L": 8}``; lists become tuples so values can be compared and hashed."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def schema_dict() -> dict:
    """Every setting with its default, as plain data: Hydra's base config, so overrides of unknown keys fail."""

    def plain(v):
        return [plain(x) for x in v] if isinstance(v, tuple | list) else v

    return {k: {kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else v
            for k, v in dataclasses.asdict(Config()).items()}  # fmt: skip


def from_dict(data: dict) -> Config:
    """Build and validate a Config from the plain mapping Hydra composed."""
    return validate_config(_build("", Config, data))


# ------------------------------------------------------------------------------------------- members and checks


def seed_coords(cfg: Config) -> list[dict[str, int]]:
    """Each entry of train.seeds with its data seed: ``{"seed": s}``, or ``{"seed": s, "data_seed": d}``."""
    if not cfg.train.data_seeds:
        return [{"seed": s} for s in cfg.train.seeds]
    return [{"seed": s, "data_seed": d} for s, d in zip(cfg.train.seeds, cfg.train.data_seeds, strict=True)]


def members(cfg: Config) -> list[dict[str, Any]]:
    """The ensemble: one mapping of coordinates (seed, data seed when set, swept fields) per member, in a fixed
    order: the sweep grid, each point times the seeds."""
    names, values = list(cfg.sweep.swept()), list(cfg.sweep.swept().values())
    grid = list(zip(*values, strict=True)) if cfg.sweep.mode == "zip" else list(itertools.product(*values))
    return [{**s, **dict(zip(names, point, strict=True))} for point in grid for s in seed_coords(cfg)]


def member_tasks(cfg: Config) -> list[TaskSpec]:
    """Each member's task: the swept fields set, and its data seed as the task's seed."""
    return [dataclasses.replace(cfg.task, **{k: v for k, v in m.items() if k in DYNAMIC_FIELDS},
                                seed=m.get("data_seed", cfg.task.seed)) for m in members(cfg)]  # fmt: skip


def member_data_seeds(cfg: Config) -> list[int]:
    """Each member's data seed (its task's seed): train.data_seeds where given, else task.seed."""
    return [t.seed for t in member_tasks(cfg)]


def member_optims(cfg: Config) -> list[OptimConfig]:
    return [dataclasses.replace(cfg.optim, **{k: float(v) for k, v in m.items() if k in OPTIM_FIELDS})
            for m in members(cfg)]  # fmt: skip


def member_interventions(cfg: Config) -> list[InterveneConfig]:
    """Each member's training-time edit: ``intervene`` with the swept ``intervene_*`` fields set."""
    n = len("intervene_")
    return [dataclasses.replace(cfg.intervene, **{k[n:]: v for k, v in m.items() if k in INTERVENE_FIELDS})
            for m in members(cfg)]  # fmt: skip


def member_config(cfg: Config, i: int) -> dict[str, Any]:
    """The config member ``i`` actually trains with, as plain data: its own task (swept fields, data seed),
    optimizer values and edit in place of the base ones (what a dashboard groups and filters by)."""
    effective = dataclasses.replace(cfg, task=member_tasks(cfg)[i], optim=member_optims(cfg)[i],
                                    intervene=member_interventions(cfg)[i])  # fmt: skip
    return dataclasses.asdict(effective)


# The compiled-in settings of a job that a multirun sweeps with -m (context length, item dimension, model shape):
# W&B's run config holds each at its top level under the last part of its name (task.L -> L).
STATIC_KNOBS = ("task.L", "task.D", "task.n_labels", "task.n_classes", "model.arch", "model.n_layers",
                "model.n_heads", "model.d_model")  # fmt: skip


def static_knobs(cfg: Config) -> dict[str, Any]:
    """The job's ``STATIC_KNOBS``, flat (``{"L": 8, "d_model": 64, ...}``), for the top of a dashboard's run config."""
    knobs = {}
    for path in STATIC_KNOBS:
        group, field = path.split(".")
        knobs[field] = getattr(getattr(cfg, group), field)
    return knobs


def _need(ok: bool, path: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(path, value, rule)


def _validate_distributed(t: TrainConfig) -> None:
    if t.coordinator is None:
        _need(t.num_processes == 0 and t.process_id == -1, "train.coordinator", t.coordinator,
              "train.num_processes and train.process_id are read only with a coordinator (host:port)")  # fmt: skip
        return
    host, _, port = t.coordinator.rpartition(":")
    _need(bool(host) and port.isdigit(), "train.coordinator", t.coordinator, "must be host:port")
    _need(t.distributed != "off", "train.distributed", t.distributed, "is off, but train.coordinator is set")
    _need(t.num_processes >= 1, "train.num_processes", t.num_processes, "must be >= 1 with train.coordinator")
    _need(0 <= t.process_id < t.num_processes, "train.process_id", t.process_id,
          f"must be in 0 .. train.num_processes - 1 ({t.num_processes - 1})")  # fmt: skip


def validate_config(cfg: Config) -> Config:
    validate(cfg.task)
    _validate_seeds(cfg.train)
    if cfg.sweep.mode == "zip":
        lengths = {k: len(v) for k, v in cfg.sweep.swept().items()}
        _need(len(set(lengths.values())) <= 1, "sweep", lengths, "zip mode needs lists of equal length")
    for k, v in cfg.sweep.swept().items():
        _need(len(v) >= 1, f"sweep.{k}", v, "must be a non-empty list")
    for i, spec in enumerate(member_tasks(cfg)):
        try:
            validate(spec)
        except ConfigError as e:
            raise ConfigError(e.field, e.value, f"{e.rule} (member {i}: {members(cfg)[i]})") from None
    for k in OPTIM_FIELDS:
        for v in getattr(cfg.sweep, k) or ():
            _need(isinstance(v, int | float) and not isinstance(v, bool), f"sweep.{k}", v, "values must be numbers")
            _need(math.isfinite(v), f"sweep.{k}", v, "values must be finite numbers")
    for i, o in enumerate(member_optims(cfg)):
        where = f" (member {i}: {members(cfg)[i]})" if cfg.sweep.lr or cfg.sweep.weight_decay else ""
        _need(o.lr > 0, "optim.lr", o.lr, "must be > 0" + where)
        _need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0" + where)
    m, o, t, p = cfg.model, cfg.optim, cfg.train, cfg.probes
    _need(t.steps >= 1, "train.steps", t.steps, "must be >= 1")
    _validate_distributed(t)
    _validate_model(m)
    _need(o.decay_mask == "all" or m.arch != "lstm", "optim.decay_mask", o.decay_mask,
          "an LSTM has no MLP or attention blocks to single out (use all)")  # fmt: skip
    _need(m.encoder != "resnet" or math.isqrt(cfg.task.D) ** 2 == cfg.task.D, "model.encoder", m.encoder,
          f"a ResNet reads square images: task.D ({cfg.task.D}) must be image_size^2")  # fmt: skip
    _need(m.encoder_width >= 1, "model.encoder_width", m.encoder_width, "must be >= 1")
    _need(m.encoder_stages >= 1, "model.encoder_stages", m.encoder_stages, "must be >= 1")
    _need(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    _need(0 <= o.b1 < 1, "optim.b1", o.b1, "must be in [0, 1)")
    _need(0 <= o.b2 < 1, "optim.b2", o.b2, "must be in [0, 1)")
    _need(
        0 <= o.warmup_steps < t.steps, "optim.warmup_steps", o.warmup_steps, f"must be in [0, train.steps = {t.steps})"
    )
    _need(0 <= o.final_lr_fraction <= 1, "optim.final_lr_fraction", o.final_lr_fraction, "must be in [0, 1]")
    _need(o.clip_norm >= 0, "optim.clip_norm", o.clip_norm, "must be >= 0 (0 = off)")
    _need(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _need(t.chunk_steps >= 1, "train.chunk_steps", t.chunk_steps, "must be >= 1")
    _need(t.max_members >= 0, "train.max_members", t.max_members, "must be >= 0 (0 = as many as fit)")
    _need(0 < t.memory_fraction <= 1, "train.memory_fraction", t.memory_fraction, "must be in (0, 1]")
    _need(t.cpu_devices >= 0, "train.cpu_devices", t.cpu_devices, "must be >= 0 (0 = one per core, at most 8)")
    _need(bool(t.compile_cache.strip()), "train.compile_cache", t.compile_cache, "must be 'auto', 'off' or a directory")
    _need(not t.context_loss or m.tokens == "interleaved", "train.context_loss", t.context_loss,
          "needs model.tokens=interleaved (a concat token already shows its label)")  # fmt: skip
    c = cfg.checkpoint
    _need(c.every >= 0, "checkpoint.every", c.every, "must be >= 0 (0 = at every evaluation step)")
    _need(c.log_spaced >= 0, "checkpoint.log_spaced", c.log_spaced, "must be >= 0")
    _need(c.keep >= 1, "checkpoint.keep", c.keep, "must be >= 1 (the latest checkpoint is what a resume reads)")
    _need(t.resume is None or t.resume.strip() != "", "train.resume", t.resume, "must be a run directory or null")
    _need(p.n_eval >= 1, "probes.n_eval", p.n_eval, "must be >= 1")
    _need(p.n_log >= 0, "probes.n_log", p.n_log, "must be >= 0")
    _need(p.every >= 0, "probes.every", p.every, "must be >= 0")
    _validate_ablations(p, m)
    _validate_wandb(cfg.wandb)
    _validate_interventions(cfg)
    return cfg


def _validate_ablations(p: ProbeConfig, m: ModelConfig) -> None:
    if p.ablations == "off":
        return
    _need(m.arch == "transformer", "probes.ablations", p.ablations,
          f"replaces attention heads: needs model.arch=transformer (not {m.arch})")  # fmt: skip
    heads = m.n_layers * m.n_heads
    _need(0 <= p.ablation_k <= heads // 2, "probes.ablation_k", p.ablation_k,
          f"must be in 0 .. {heads // 2}: k top heads and k others of the model's {heads} heads")  # fmt: skip
    _need(p.ablation_k == 0 or p.mechanisms, "probes.ablation_k", p.ablation_k,
          "ranks heads by their induction score: needs probes.mechanisms=true (or ablation_k=0)")  # fmt: skip


def _intervene_path(cfg: Config, f: str) -> str:
    """Where field f of the members' edits is set: ``sweep.intervene_<f>`` when swept, else ``intervene.<f>``."""
    return f"sweep.intervene_{f}" if getattr(cfg.sweep, f"intervene_{f}") else f"intervene.{f}"


def _validate_interventions(cfg: Config) -> None:
    hints = typing.get_type_hints(InterveneConfig)
    for k in INTERVENE_FIELDS:  # swept values are untyped lists: each is checked as the field it sets
        for j, v in enumerate(getattr(cfg.sweep, k) or ()):
            check_type(f"sweep.{k}[{j}]", v, hints[k[len("intervene_") :]])
    m, swept = cfg.model, any(getattr(cfg.sweep, k) for k in INTERVENE_FIELDS)
    for i, (e, coords) in enumerate(zip(member_interventions(cfg), members(cfg), strict=True)):
        if e.kind == "none":
            continue

        where = f" (member {i}: {coords})" if swept else ""

        def need(ok: bool, f: str, rule: str, e=e, where=where) -> None:  # f: the field of the edit
            _need(ok, _intervene_path(cfg, f), getattr(e, f), rule + where)

        need(m.arch == "transformer", "kind", f"edits attention heads: needs model.arch=transformer (not {m.arch})")
        need(0 <= e.layer < m.n_layers, "layer", f"must be in 0 .. model.n_layers - 1 ({m.n_layers - 1})")
        need(0 <= e.head < m.n_heads, "head", f"must be in 0 .. model.n_heads - 1 ({m.n_heads - 1})")
        need(0 <= e.start < cfg.train.steps, "start", f"must be in [0, train.steps = {cfg.train.steps})")
        need(e.stop == -1 or e.stop > e.start, "stop", f"must be -1 (to the end) or > intervene.start ({e.start})")


def _validate_seeds(t: TrainConfig) -> None:
    _need(len(t.seeds) >= 1, "train.seeds", t.seeds, "needs at least one seed")
    _need(all(s >= 0 for s in t.seeds), "train.seeds", t.seeds, "seeds must be >= 0")
    if not t.data_seeds:
        _need(len(set(t.seeds)) == len(t.seeds), "train.seeds", t.seeds, "seeds must differ")
        return
    _need(len(t.data_seeds) == len(t.seeds), "train.data_seeds", t.data_seeds,
          f"needs one data seed per entry of train.seeds ({len(t.seeds)}), or none")  # fmt: skip
    _need(all(d >= 0 for d in t.data_seeds), "train.data_seeds", t.data_seeds, "data seeds must be >= 0")
    pairs = list(zip(t.seeds, t.data_seeds, strict=True))
    _need(len(set(pairs)) == len(pairs), "train.data_seeds", t.data_seeds,
          f"each (seed, data seed) pair must differ; the pairs are {pairs}")  # fmt: skip


def _validate_model(m: ModelConfig) -> None:
    _need(m.n_layers >= 1, "model.n_layers", m.n_layers, "must be >= 1")
    _need(m.d_model >= 1, "model.d_model", m.d_model, "must be >= 1")
    _need(all(h >= 1 for h in m.readout_hidden), "model.readout_hidden", m.readout_hidden, "widths must be >= 1")
    if m.arch != "transformer":  # the rest are settings of the transformer alone, which the others ignore
        return
    _need(m.n_heads >= 1, "model.n_heads", m.n_heads, "must be >= 1")
    _need(m.d_model % m.n_heads == 0, "model.d_model", m.d_model, f"must be divisible by n_heads ({m.n_heads})")
    _need(m.pos != "rotary" or (m.d_model // m.n_heads) % 2 == 0, "model.d_model", m.d_model,
          "rotary positions need an even head dimension")  # fmt: skip
    _need(m.mlp_ratio >= 0, "model.mlp_ratio", m.mlp_ratio, "must be >= 0 (0 = attention-only)")
    _need(m.max_offset >= 0, "model.max_offset", m.max_offset, "must be >= 0")
    _need(m.max_offset == 0 or m.pos == "onehot", "model.max_offset", m.max_offset, "random offsets need pos=onehot")


# W&B refuses these in project and group names (and in run ids, which are made from nothing the user types)
_WANDB_FORBIDDEN = set("/\\#?%:")


def _validate_wandb(w: WandbConfig) -> None:
    _need(w.project.strip() != "" and not _WANDB_FORBIDDEN & set(w.project), "wandb.project", w.project,
          "must be a non-empty name without / \\ # ? % :")  # fmt: skip
    _need(w.entity is None or w.entity.strip() != "", "wandb.entity", w.entity, "must be a name or null")
    _need(w.group is None or 0 < len(w.group.strip()) <= 128, "wandb.group", w.group,
          "must be 1 to 128 characters, or null (derived from the run or sweep)")  # fmt: skip
    _need(all(0 < len(t.strip()) <= 64 for t in w.tags), "wandb.tags", w.tags, "each tag must be 1 to 64 characters")
    _need(w.dir is None or w.dir.strip() != "", "wandb.dir", w.dir, "must be a directory or null (the run directory)")
