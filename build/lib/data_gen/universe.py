"""The class universe: prototypes, exemplars, the frequency ranking and the label map, all from the task's own key.

Class ids ``0 .. n_classes - n_holdout - 1`` are training classes and the last ``n_holdout`` ids are held out for
the ICL probes. Class ``c``'s prototype is drawn from ``fold_in(key, c)``, so it never moves when other settings
(burstiness, Zipf alpha, p_relevant, even the number of classes) change. Training classes are visited through a
fixed random ranking ``order``: rank 0 is the most frequent class under Zipf, and ``K`` active classes are the
first ``K`` ranks. A class's fixed exemplars (Gaussian noise draws or drawings) are all stored; with
``probe_exemplars = P`` the first E - P are training's and the last P the probes' (``sequences`` picks).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from data_gen.errors import ConfigError
from data_gen.omniglot import load_omniglot, transformed
from data_gen.spec import TaskParams, TaskStatic, transforms

_PROTO, _EXEMPLAR, _ORDER, _DATASET, _CHARACTERS = range(5)  # sub-streams of the task key


class Universe(NamedTuple):
    prototypes: jax.Array  # (n_classes, D); for image items the mean of the class's training drawings
    exemplar_noise: jax.Array  # (n_classes, E, D) standard normal; E = 0 when items get fresh noise or are images
    images: jax.Array  # (n_classes, E, D) drawings in [0, 1] for image items; (n_classes, 0, D) otherwise
    order: jax.Array  # (max_classes,) int32: rank -> training class id
    dataset_key: jax.Array  # raw key data of the finite training set


def draw_prototypes(st: TaskStatic, key: jax.Array, ids: jax.Array) -> jax.Array:
    """Prototypes of the classes ``ids`` (any shape) from ``key``: (..., D)."""
    eta = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (st.D,)))(ids.reshape(-1))
    if st.prototype == "gaussian":  # mu ~ N(0, I/D)
        mu = eta / jnp.sqrt(st.D)
    else:  # unit norm
        mu = eta / jnp.linalg.norm(eta, axis=-1, keepdims=True)
    return mu.reshape(*ids.shape, st.D)


def character_images(st: TaskStatic) -> jax.Array:
    """Image items: (n_classes, exemplars, D) drawings in [0, 1].

    Characters are visited in the order of a permutation ``perm`` from the task's key; with T transforms a
    character (``augment``), class c is transform c mod T of character ``perm[c // T]``. The holdout classes (the
    last ones) are therefore whole characters, a random but fixed subset, and validation keeps the training/holdout
    boundary on a character boundary, so no transform of a holdout character is ever trained on.
    """
    chars = load_omniglot(st.image_path, st.image_size)
    C, E = chars.images.shape[:2]
    T = len(transforms(st.augment))
    if st.n_classes > C * T:
        per = f" x {T} transforms = {C * T} classes" if T > 1 else ""
        raise ConfigError("task.n_classes", st.n_classes, f"the images at {st.image_path} hold {C} characters{per}")
    if st.exemplars > E:
        raise ConfigError("task.exemplars", st.exemplars, f"the characters at {st.image_path} have {E} drawings")
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(st.seed), _CHARACTERS), C))
    drawings = chars.images[perm[: -(-st.n_classes // T)], : st.exemplars]  # (chars used, E, side, side)
    pixels = transformed(drawings, st.augment).reshape(-1, st.exemplars, st.D)[: st.n_classes]
    return jnp.asarray(pixels.astype(np.float32) / np.float32(255))


def universe_bytes(st: TaskStatic) -> int:
    """Bytes the universe of ``st`` holds once built (float32 and int32 arrays: prototypes, exemplar noise or
    drawings, ranking); building it takes about twice as much for a moment."""
    return 4 * (st.n_classes * st.D * (1 + st.exemplars) + 3 * st.max_classes)


def make_universe(st: TaskStatic) -> Universe:
    key = jax.random.key(st.seed)
    ids = jnp.arange(st.n_classes)
    images = character_images(st) if st.items == "omniglot" else jnp.zeros((st.n_classes, 0, st.D), jnp.float32)
    if st.items == "omniglot":  # what training shows of a class: the mean of its training drawings
        protos = images[:, : st.exemplars - st.probe_exemplars].mean(1)
    else:
        protos = draw_prototypes(st, jax.random.fold_in(key, _PROTO), ids)
    noise = jax.vmap(
        lambda i: jax.random.normal(
            jax.random.fold_in(jax.random.fold_in(key, _EXEMPLAR), i),
            (0 if st.items == "omniglot" else st.exemplars, st.D),
        )
    )(ids)
    # each class's place in the frequency ranking comes from its own priority, so the ranking of the training
    # classes keeps its order when n_holdout (or n_classes) changes
    rank_priority = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, _ORDER), i)))(
        jnp.arange(st.max_classes)
    )
    return Universe(
        prototypes=protos,
        exemplar_noise=noise,
        images=images,
        order=jnp.argsort(rank_priority).astype(jnp.int32),
        dataset_key=jax.random.key_data(jax.random.fold_in(key, _DATASET)),
    )


def rank_weights(st: TaskStatic, p: TaskParams) -> jax.Array:
    """Unnormalised sampling weight of each rank (max_classes,); ranks >= K weigh 0."""
    r = jnp.arange(st.max_classes)
    active = r < p.K
    if st.frequency == "zipf":
        w = (r + 1.0) ** -p.alpha
    else:
        n_high = p.n_high.astype(jnp.float32)
        w = jnp.where(r < p.n_high, p.p_high / n_high, (1.0 - p.p_high) / (p.K - n_high))
    return jnp.where(active, w, 0.0)


def head_size(st: TaskStatic, p: TaskParams) -> jax.Array:
    """Number of top ranks that form the high-frequency (common) group.

    two_group: the n_high classes. zipf: the fewest top ranks that hold half of the mass (for alpha = 0 that is
    half of the classes).
    """
    if st.frequency == "two_group":
        return p.n_high
    w = rank_weights(st, p)
    cdf = jnp.cumsum(w) / jnp.sum(w)
    return jnp.sum(cdf < 0.5) + 1


def labels_of(st: TaskStatic, classes: jax.Array, sense: jax.Array) -> jax.Array:
    """The fixed label map: class k's j-th sense carries label (polysemy * k + j) mod n_labels.

    With polysemy = 1 this is k mod n_labels ('modulo'); validation makes it injective for 'identity'.
    """
    return (st.polysemy * classes + sense) % st.n_labels


def class_ranks(st: TaskStatic, uni: Universe) -> jax.Array:
    """(max_classes,) int32: the frequency rank of every training class id (the inverse of ``uni.order``)."""
    return jnp.zeros(st.max_classes, jnp.int32).at[uni.order].set(jnp.arange(st.max_classes, dtype=jnp.int32))


def label_groups(st: TaskStatic, uni: Universe, p: TaskParams) -> jax.Array:
    """(2, n_labels) bool: which first-sense labels (``labels_of`` with sense 0) the active training classes of
    each frequency group carry. Row 0 is the high-frequency group and row 1 the low one in two-group tasks; other
    tasks are one group (row 0; row 1 is empty)."""
    ranks = jnp.arange(st.max_classes)
    group = (ranks >= p.n_high).astype(jnp.int32) if st.frequency == "two_group" else jnp.zeros_like(ranks)
    base = labels_of(st, uni.order, jnp.zeros_like(uni.order))
    table = jnp.zeros((2, st.n_labels), jnp.int32).at[group, base].max((ranks < p.K).astype(jnp.int32))
    return table > 0


def trained_labels(st: TaskStatic, uni: Universe, p: TaskParams) -> jax.Array:
    """(n_labels,) bool: the labels that training sequences show. A random per-sequence labelling shows them all;
    a fixed map only those of the K active classes (every sense)."""
    if st.label_map == "random":
        return jnp.ones(st.n_labels, bool)
    base = label_groups(st, uni, p).any(0)  # (n_labels,)
    return jnp.any(jnp.stack([jnp.roll(base, j) for j in range(st.polysemy)]), axis=0)


def flipped_labels(st: TaskStatic, uni: Universe, p: TaskParams, classes: jax.Array, sense: jax.Array) -> jax.Array:
    """The icl_flip label of sense ``sense`` of each training class in ``classes`` (any shape).

    A class's labels move to those of the next class of its own frequency group: among the first-sense labels
    that the group's active classes carry (``label_groups``), the one that follows the class's own, cyclically,
    skipping labels whose block of ``polysemy`` senses overlaps the class's own block. So the flipped label is
    always one that training shows and never one the class owns. Chan et al. 2024, identity labels 0-4 (high)
    and 5-9 (low): label l -> l + 1 within its group (4 -> 0, 9 -> 5). Reddy 2023, k mod 32 labels with every
    label in use: l -> l + 1 mod 32. A group whose classes all carry one label block (a single high-frequency
    class, say) has nothing to move to: its classes take the next label of the whole label map instead.
    """
    n, P = st.n_labels, st.polysemy
    present = label_groups(st, uni, p)  # (2, n)
    rank = class_ranks(st, uni)[jnp.clip(classes, 0, st.max_classes - 1)]
    group = (rank >= p.n_high).astype(jnp.int32) if st.frequency == "two_group" else jnp.zeros_like(rank)
    own = labels_of(st, classes, jnp.zeros_like(classes))[..., None]  # (..., 1) the class's first sense
    gap = (jnp.arange(n) - own) % n  # (..., n) how far forward each label lies
    disjoint = (gap >= P) & (gap <= n - P)  # that label's block shares no label with the class's block

    def following(candidates):  # the nearest candidate forward, and whether there is one
        return jnp.argmin(jnp.where(candidates, gap, 2 * n), axis=-1), jnp.any(candidates, axis=-1)

    in_group, found = following(present[group] & disjoint)
    in_map, found_any = following(present.any(0) & disjoint)
    base = jnp.where(found, in_group, jnp.where(found_any, in_map, (own[..., 0] + P) % n))
    return (base + sense) % n


def shares_label(st: TaskStatic, a: jax.Array, b: jax.Array) -> jax.Array:
    """Whether classes a and b have a label in common under the fixed map."""
    d = (st.polysemy * (a - b)) % st.n_labels
    return (d < st.polysemy) | (d > st.n_labels - st.polysemy)


def make_items(st: TaskStatic, mu: jax.Array, eta: jax.Array, scale: jax.Array) -> jax.Array:
    """Items from prototypes (..., D) and standard-normal noise (..., D) at noise level eps or sigma."""
    if st.noise == "none":
        return mu
    if st.noise == "reddy":  # (mu + eps * eta) / sqrt(1 + eps^2), eta ~ N(0, I/D)
        return (mu + scale * eta / jnp.sqrt(st.D)) / jnp.sqrt(1.0 + scale**2)
    return mu + scale * eta  # mu + sigma * N(0, I)
