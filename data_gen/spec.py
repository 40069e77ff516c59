"""The task spec: every knob of the generator under the papers' names, and the rules it must obey.

A ``TaskSpec`` is what a config file describes. It splits in two:

* ``TaskStatic``: everything that changes an array shape or the program (L, D, the label vocabulary, the class
  pool, exemplars, the burst form, which optional controls are on). It is hashable and compiled in.
* ``TaskParams``: everything else (probabilities, noise level, Zipf alpha, K, N, ...), as JAX scalars. A leading
  member axis on these arrays gives every member of an ensemble its own setting with one compilation.

``validate`` refuses every impossible combination with a ``ConfigError`` that names field, value and rule, so
nothing reaches JAX that could fail deep inside a trace.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax.numpy as jnp

from data_gen.errors import ConfigError, check_type

Prototype = Literal["gaussian", "unit"]
Noise = Literal["reddy", "additive", "none"]
Items = Literal["gaussian", "omniglot"]
Augment = Literal["none", "rotations", "flips", "both"]
LabelMap = Literal["identity", "modulo", "random"]
BurstForm = Literal["reddy", "chan2022"]
Frequency = Literal["zipf", "two_group"]
Placement = Literal["random", "distance"]


@dataclass(frozen=True)
class StaticFields:
    """The fields of a task that are compiled in, shared by ``TaskSpec`` (which documents them) and ``TaskStatic``."""

    seed: int = 0
    L: int = 8
    D: int = 63
    n_labels: int = 32
    n_classes: int = 576
    n_holdout: int = 64
    prototype: Prototype = "gaussian"
    noise: Noise = "reddy"
    exemplars: int = 0
    probe_exemplars: int = 0
    items: Items = "gaussian"
    image_path: str | None = None
    image_size: int = 28
    augment: Augment = "none"
    label_map: LabelMap = "modulo"
    polysemy: int = 1
    burst_form: BurstForm = "reddy"
    B: int = 2
    shots: int = 3
    ways: int = 2
    frequency: Frequency = "zipf"
    placement: Placement = "random"
    query_all_classes: bool = False

    @property
    def max_classes(self) -> int:
        """Training classes available (the static maximum of K)."""
        return self.n_classes - self.n_holdout


@dataclass(frozen=True)
class TaskSpec(StaticFields):
    """One synthetic ICL/IWL task. Field names follow the papers (see docs/data_gen.md for the mapping).

    Static (shape-changing) fields:
      seed: key of the class universe (prototypes, exemplars, frequency ranking, finite training set).
        Runs that share it share their classes, so "holdout class 3" is the same class in every run of a sweep.
      L: context length, the number of (item, label) pairs before the query.
      D: item dimension.
      n_labels: size of the label vocabulary.
      n_classes: size of the class pool; ``n_holdout`` of them are held out for the ICL probes and never trained on.
      prototype: 'gaussian' (mu ~ N(0, I/D), Reddy 2023) or 'unit' (unit-norm mu, Chan 2024).
      noise: 'reddy' (x = (mu + eps * eta) / sqrt(1 + eps^2), eta ~ N(0, I/D)) or 'additive' (x = mu + sigma * N(0, I)).
      exemplars: 0 draws fresh noise for every item; E >= 1 fixes E exemplars per class (1 = "single").
      probe_exemplars: 0 lets training and probes share every exemplar; P >= 1 reserves the last P exemplars of
        each class for the probes and trains on the first E - P only, so the probes on training classes ask for
        unseen exemplars of known classes (holdout classes, never trained, use all E either way).
      items: 'gaussian' (prototype + noise) or 'omniglot' (a class is a handwritten character, its exemplars
        are drawings, read from ``image_path`` at ``image_size`` pixels; D = image_size^2; noise 'none' or
        'additive' pixel noise; data_gen/omniglot.py).
      augment: image items only: every character also gives its transforms as new classes of their own (Chan
        2022): 'rotations' (4: 0, 90, 180, 270 degrees), 'flips' (2: as drawn and mirrored), 'both' (8: the
        rotations of both) or 'none'. The holdout split is by character, so no transform of a holdout
        character is ever trained on.
      label_map: 'identity' (class k -> label k), 'modulo' (k -> k mod n_labels), 'random' (a fresh random
        labelling in every sequence, which only ICL can solve).
      polysemy: labels per class; each occurrence shows one of them, drawn at random (Chan 2022).
      burst_form: 'reddy' (L/B classes, each B times, the query's among them) or 'chan2022' (a shots x ways
        block holding the query's class, the rest i.i.d. fillers from other classes).
      frequency: 'zipf' (p(rank r) ~ (r + 1)^-alpha; alpha = 0 is uniform) or 'two_group' (n_high classes
        share mass p_high, the rest share 1 - p_high).
      placement: where the query's items sit in the context: 'random', or 'distance' (the nearest at
        ``distance`` pairs before the query, the others right before it).
      query_all_classes: a finite training set (N) asks about every training class: stored sequences 0 .. K-1
        have the classes of ranks 0 .. K-1 as their queries (Chan et al. 2024), the rest draw theirs from the
        class frequencies. Without it, a rare class may never be a query in a small set. Needs N >= K.

    Dynamic fields (may differ per ensemble member): K (training classes, at most n_classes - n_holdout; None
    = all), alpha, p_high, n_high, p_bursty, p_relevant (None: the non-bursty context is plain i.i.d.),
    L_relevant (None: 1..L uniformly when relevant), distance, noise_scale (eps or sigma), N (None = fresh
    sequences every step), p_novel, label_noise.
    """

    K: int | None = None
    alpha: float = 0.0
    p_high: float = 0.9
    n_high: int = 5
    p_bursty: float = 1.0
    p_relevant: float | None = None
    L_relevant: int | None = None
    distance: int = 1
    noise_scale: float = 0.1
    N: int | None = None
    p_novel: float = 0.0
    label_noise: float = 0.0

    @property
    def relevance(self) -> bool:
        """Whether p_relevant controls the non-bursty contexts."""
        return self.p_relevant is not None


DYNAMIC_FIELDS = (
    "K", "alpha", "p_high", "n_high", "p_bursty", "p_relevant", "L_relevant",
    "distance", "noise_scale", "N", "p_novel", "label_noise",
)  # fmt: skip


@dataclass(frozen=True)
class TaskStatic(StaticFields):
    """The compiled-in part of a task: its static fields, and which optional controls the dynamic ones switch on.

    Hashable, so programs take it as a static argument; it holds no dynamic value, so none is compiled in."""

    relevance: bool = False  # p_relevant is set: non-bursty contexts control the query class's presence
    exact_relevant: bool = False  # L_relevant is set
    novel: bool = False  # p_novel > 0: some training sequences use fresh classes


class TaskParams(NamedTuple):
    """The dynamic part of a task, as JAX scalars (or arrays with a leading member axis)."""

    K: jnp.ndarray
    alpha: jnp.ndarray
    p_high: jnp.ndarray
    n_high: jnp.ndarray
    p_bursty: jnp.ndarray
    p_relevant: jnp.ndarray
    L_relevant: jnp.ndarray
    distance: jnp.ndarray
    noise_scale: jnp.ndarray
    N: jnp.ndarray  # 0 means infinite
    p_novel: jnp.ndarray
    label_noise: jnp.ndarray


def static_part(spec: TaskSpec) -> TaskStatic:
    return TaskStatic(
        **{f.name: getattr(spec, f.name) for f in dataclasses.fields(StaticFields)},
        relevance=spec.p_relevant is not None,
        exact_relevant=spec.L_relevant is not None,
        novel=spec.p_novel > 0,
    )


def dynamic_part(spec: TaskSpec) -> TaskParams:
    i32, f32 = jnp.int32, jnp.float32
    return TaskParams(
        K=jnp.asarray(spec.max_classes if spec.K is None else spec.K, i32),
        alpha=jnp.asarray(spec.alpha, f32),
        p_high=jnp.asarray(spec.p_high, f32),
        n_high=jnp.asarray(spec.n_high, i32),
        p_bursty=jnp.asarray(spec.p_bursty, f32),
        p_relevant=jnp.asarray(1.0 if spec.p_relevant is None else spec.p_relevant, f32),
        L_relevant=jnp.asarray(1 if spec.L_relevant is None else spec.L_relevant, i32),
        distance=jnp.asarray(spec.distance, i32),
        noise_scale=jnp.asarray(spec.noise_scale, f32),
        N=jnp.asarray(0 if spec.N is None else spec.N, i32),
        p_novel=jnp.asarray(spec.p_novel, f32),
        label_noise=jnp.asarray(spec.label_noise, f32),
    )


def transforms(augment: Augment) -> tuple[tuple[bool, int], ...]:
    """The classes one character gives under ``augment``, as (mirrored, quarter turns), the drawing itself first."""
    mirrors = (False, True) if augment in ("flips", "both") else (False,)
    turns = range(4) if augment in ("rotations", "both") else range(1)
    return tuple((m, k) for m in mirrors for k in turns)


# ----------------------------------------------------------------------------------------------- validation


def icl_probe_classes(spec: TaskSpec | TaskStatic) -> int:
    """Distinct classes in one sequence of the ICL probes (at most), which the holdout set must supply."""
    if spec.relevance:
        return spec.L + 1
    if spec.burst_form == "reddy":
        return spec.L // max(spec.B, 1)  # B < 1 is refused by its own rule
    return spec.ways + (spec.L - spec.shots * spec.ways)


def _classes_needed(spec: TaskSpec) -> int:
    """Training classes a sequence may need to be distinct from each other."""
    need = 1
    if spec.p_bursty > 0:
        reddy = spec.L // max(spec.B, 1)  # B < 1 is refused by its own rule
        need = reddy if spec.burst_form == "reddy" else spec.ways + int(spec.L > spec.shots * spec.ways)
    if spec.p_bursty < 1 and spec.p_relevant is not None:
        need = max(need, 2)  # irrelevant items come from other classes
    return max(need, 2)  # the no-support probe needs a class other than the query's


def _check_type(spec: TaskSpec) -> None:
    hints = typing.get_type_hints(TaskSpec)
    for f in dataclasses.fields(TaskSpec):
        check_type(f"task.{f.name}", getattr(spec, f.name), hints[f.name])


def validate(spec: TaskSpec) -> TaskSpec:
    """Refuse every impossible setting with a message naming field, value and rule. Returns the spec."""
    _check_type(spec)
    s, K = spec, spec.max_classes if spec.K is None else spec.K
    probe_classes, needed = icl_probe_classes(s), _classes_needed(s)
    per_char = len(transforms(s.augment))
    prob = "a probability must lie in [0, 1]"
    rules: list[tuple[bool, str, str]] = [
        (s.seed >= 0, "seed", "must be >= 0"),
        (s.L >= 1, "L", "the context needs at least one (item, label) pair"),
        (s.D >= 1, "D", "must be >= 1"),
        (s.n_labels >= 2, "n_labels", "needs at least 2 labels"),
        (s.n_classes >= 2, "n_classes", "needs at least 2 classes"),
        (0 <= s.n_holdout < s.n_classes, "n_holdout", f"must be in [0, n_classes) = [0, {s.n_classes})"),
        (s.exemplars >= 0, "exemplars", "must be >= 0 (0 = fresh noise for every item)"),
        (s.polysemy >= 1, "polysemy", "must be >= 1 label per class"),
        (0 <= s.p_bursty <= 1, "p_bursty", prob),
        (0 <= s.p_high <= 1, "p_high", prob),
        (0 <= s.p_novel <= 1, "p_novel", prob),
        (0 <= s.label_noise <= 1, "label_noise", prob),
        (s.p_relevant is None or 0 <= s.p_relevant <= 1, "p_relevant", prob),
        (s.alpha >= 0, "alpha", "the Zipf exponent must be >= 0 (0 = uniform)"),
        (s.noise_scale >= 0, "noise_scale", "must be >= 0"),
        (s.B >= 1, "B", "the burst size must be >= 1"),
        (s.shots >= 1, "shots", "must be >= 1"),
        (s.ways >= 1, "ways", "must be >= 1"),
        (s.burst_form != "reddy" or s.L % max(s.B, 1) == 0, "B", f"Reddy bursts: B must divide L ({s.L})"),
        (s.burst_form != "chan2022" or s.shots * s.ways <= s.L, "shots",
         f"the shots x ways block ({s.shots} x {s.ways}) must fit in the context (L = {s.L})"),
        (s.L_relevant is None or s.p_relevant is not None, "L_relevant", "needs p_relevant to be set"),
        (s.L_relevant is None or 1 <= s.L_relevant <= s.L, "L_relevant", f"must be in [1, L] = [1, {s.L}]"),
        (1 <= s.distance <= s.L, "distance", f"must be in [1, L] = [1, {s.L}]"),
        (s.N is None or s.N >= 1, "N", "a finite training set needs N >= 1 sequences (None = fresh every step)"),
        (not s.query_all_classes or s.N is None or s.N >= K, "N", f"query_all_classes makes each of the K = {K} "
         "training classes the query of one stored sequence: needs N >= K"),
        (1 <= K <= s.max_classes, "K", f"must be in [1, n_classes - n_holdout] = [1, {s.max_classes}]"),
        (K >= needed, "K", f"a sequence of this task needs {needed} distinct training classes"),
        (s.frequency != "two_group" or 1 <= s.n_high < K, "n_high", f"must be in [1, K) = [1, {K})"),
        (s.n_holdout >= probe_classes, "n_holdout", f"the ICL probes need {probe_classes} holdout classes a sequence"),
        (s.n_labels >= probe_classes, "n_labels", f"the ICL probes give each of {probe_classes} classes its own label"),
        (s.label_map != "identity" or s.n_labels >= s.max_classes * s.polysemy, "n_labels",
         f"identity labels need (n_classes - n_holdout) x polysemy = {s.max_classes * s.polysemy} labels"),
        (s.label_map != "modulo" or 2 * s.polysemy <= s.n_labels, "polysemy", f"modulo labels need n_labels "
         f"({s.n_labels}) >= 2 x polysemy: a class's labels and the next class's (icl_flip) must differ"),
        (s.label_map != "random" or s.polysemy == 1, "polysemy", "polysemy needs a fixed label map (identity, modulo)"),
        (s.label_map != "random" or s.n_labels >= s.L + 1, "n_labels",
         f"random labelling gives each class of a sequence its own label: needs L + 1 = {s.L + 1}"),
        (s.probe_exemplars >= 0, "probe_exemplars", "must be >= 0 (0 = training and probes share every exemplar)"),
        (s.probe_exemplars == 0 or s.exemplars >= 1, "probe_exemplars", "splits a finite set of exemplars: needs "
         "exemplars >= 2 (with exemplars = 0 every item is fresh noise, unseen already)"),
        (s.probe_exemplars == 0 or s.probe_exemplars < s.exemplars, "probe_exemplars",
         f"must be below exemplars ({s.exemplars}): training keeps at least one exemplar a class"),
        (s.items == "gaussian" or s.image_path is not None, "image_path", "image items need the data's path: pass "
         "task.image_path=/path/to/omniglot (a directory with Omniglot's images_*.zip files, or their unpacked tree)"),
        (s.items == "gaussian" or s.D == s.image_size**2, "D", f"image items: D = image_size^2 = {s.image_size**2}"),
        (s.items == "gaussian" or s.exemplars >= 1, "exemplars", "image items need >= 1 drawings per character"),
        (s.items == "gaussian" or s.noise != "reddy", "noise", "image items take 'none' or 'additive' pixel noise"),
        (s.items == "gaussian" or s.p_novel == 0, "p_novel", "image items have no fresh classes to draw"),
        (s.items == "omniglot" or s.augment == "none", "augment", "transforms of drawings need image items"),
        (s.max_classes % per_char == 0, "n_holdout", f"with augment={s.augment} a character gives {per_char} "
         f"classes; n_classes - n_holdout = {s.max_classes} must be a multiple of {per_char}, so that no character "
         "has classes both in training and in the holdout set"),
    ]  # fmt: skip
    for ok, name, rule in rules:
        if not ok:
            raise ConfigError(f"task.{name}", getattr(spec, name), rule)
    return spec
