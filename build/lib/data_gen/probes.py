"""Probe sets: fixed evaluation draws that separate in-context from in-weight learning.

Each probe is the task's own generator with a few settings overridden; it is drawn from an evaluation key
that training never uses, always with fresh sequences, no novel classes and no label noise.

============== ===================================================================================== ============
probe          what it holds                                                                         solved by
============== ===================================================================================== ============
in_dist        sequences from the training distribution                                              either
icl_novel      holdout classes, labelled at random inside each sequence with labels that training      ICL only
               shows, relevant context
icl_flip       training classes, every label moved to the next label of its class's frequency group   ICL only
               (``universe.flipped_labels``), relevant context; the moved label is the target, so
               memory scores 0
iwl_no_support training classes; no context item shares the query's class or its label              IWL only
ciwl           as iwl_no_support, but one context item (of another class) carries the query's label  IWL / CIWL
shots_k        training classes, exactly k context items of the query's class (k = 0 .. L)            accuracy vs shots
distance_d     training classes, one relevant item, d pairs before the query (d = 1 .. L)            recency
============== ===================================================================================== ============

"Relevant context" follows the task: the burst form with p_bursty = 1 or, for tasks with p_relevant set,
p_relevant = 1 with the task's L_relevant rule. When the task reserves exemplars for the probes
(``probe_exemplars`` > 0), every probe on training classes shows only those: unseen exemplars of trained classes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from data_gen.sequences import Batch, Draw, sample_batch, without_training_noise
from data_gen.spec import TaskParams, TaskStatic
from data_gen.universe import Universe

PROBES = ("in_dist", "icl_novel", "icl_flip", "iwl_no_support", "ciwl")


def _relevant(st: TaskStatic, p: TaskParams) -> tuple[TaskStatic, TaskParams]:
    if st.relevance:
        return st, p._replace(p_bursty=jnp.zeros_like(p.p_bursty), p_relevant=jnp.ones_like(p.p_relevant))
    return st, p._replace(p_bursty=jnp.ones_like(p.p_bursty))


def _exact(st: TaskStatic, p: TaskParams, k: int, **static) -> tuple[TaskStatic, TaskParams]:
    """Non-bursty contexts holding exactly k items of the query's class."""
    st = dataclasses.replace(st, relevance=True, exact_relevant=True, **static)
    p = p._replace(
        p_bursty=jnp.zeros_like(p.p_bursty),
        p_relevant=jnp.full_like(p.p_relevant, float(k > 0)),
        L_relevant=jnp.full_like(p.L_relevant, max(k, 1)),
    )
    return st, p


def probe_task(name: str, st: TaskStatic, p: TaskParams) -> tuple[Draw, TaskStatic, TaskParams]:
    """The draw, static part and parameters of probe ``name``."""
    draw, st, p = _probe_task(name, st, without_training_noise(p))
    return dataclasses.replace(draw, exemplars="probe"), st, p


def _probe_task(name: str, st: TaskStatic, p: TaskParams) -> tuple[Draw, TaskStatic, TaskParams]:
    if name == "in_dist":
        return Draw(), st, p
    if name == "icl_novel":
        return Draw(pool="holdout", labels="random"), *_relevant(st, p)
    if name == "icl_flip":
        return Draw(labels="flip"), *_relevant(st, p)
    if name == "iwl_no_support":
        return Draw(exclude_query_label=True), *_exact(st, p, 0)
    if name == "ciwl":
        return Draw(exclude_query_label=True, ciwl=True), *_exact(st, p, 0)
    family, _, value = name.rpartition("_")
    if family == "shots" and value.isdigit() and int(value) <= st.L:
        return Draw(), *_exact(st, p, int(value))
    if family == "distance" and value.isdigit() and 1 <= int(value) <= st.L:
        st, p = _exact(st, p, 1, placement="distance")
        return Draw(), st, p._replace(distance=jnp.full_like(p.distance, int(value)))
    raise ValueError(f"unknown probe {name!r}; known: {', '.join(probe_names(st, families=True))}")


def probe_names(st: TaskStatic, families: bool = False) -> list[str]:
    """The probes that make sense for this task (icl_flip needs a fixed label map)."""
    names = [n for n in PROBES if not (n == "icl_flip" and st.label_map == "random")]
    if families:
        names += [f"shots_{k}" for k in range(st.L + 1)] + [f"distance_{d}" for d in range(1, st.L + 1)]
    return names


def probe_batch(name: str, st: TaskStatic, uni: Universe, p: TaskParams, key: jax.Array, n: int) -> Batch:
    """``n`` sequences of probe ``name``. The same key gives the same set, so evaluations are comparable."""
    draw, st_, p_ = probe_task(name, st, p)
    return sample_batch(st_, uni, p_, key, n, draw)
