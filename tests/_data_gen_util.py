"""Shared helpers of the data_gen tests: task templates, cached compiled samplers, count and binomial checks.

XLA's CPU backend spends seconds optimising each sampler, far longer than the tests run it, so samplers are
compiled once per static part and batch size (cached here, shared by all test files) with cheap compiler options;
the dynamic knobs are call arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import numpy as np

import data_gen as dg
from data_gen.presets import preset
from data_gen.probes import probe_task

SIGMAS = 5.0  # binomial bounds: a 5-sigma miss happens about once in 1.7 million checks
N_SEQ = 10_000  # sequences a draw

# XLA:CPU options: O1 compiles in ~2 s what the default takes ~6 s for, and runs as fast; O0 compiles in ~1 s and
# runs ~3x slower, the better deal for the small probe batches.
FAST_COMPILE = {"xla_backend_optimization_level": 1, "xla_cpu_use_fusion_emitters": False}
FASTER_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

# Static settings (one compilation each); tests vary the dynamic knobs on top of them.
# 64 training classes + 32 held out, Reddy bursts L=8 B=2, 16 modulo labels (4 classes a label); novel classes on.
IID = dg.TaskSpec(D=2, n_labels=16, n_classes=96, n_holdout=32, p_novel=0.5)
# p_relevant controls the non-bursty contexts; 2 labels a class out of 31 (odd, so label pairs of different
# classes overlap partly: class c has 2c, 2c+1 mod 31, and class c+16 has 2c+1, 2c+2)
RELEVANT = dataclasses.replace(IID, n_labels=31, p_novel=0.0, p_bursty=0.0, p_relevant=0.5, polysemy=2)
EXACT = dataclasses.replace(RELEVANT, L_relevant=3)  # ... and exactly L_relevant relevant items
# Chan 2022 bursts: 3 shots x 2 ways + 2 fillers, identity labels
CHAN22 = preset("chan2022", D=2, n_classes=96, n_holdout=32, n_labels=64, exemplars=0, alpha=1.0, p_bursty=1.0)
CHAN24 = preset("chan2024", D=2)  # two frequency groups (5 + 5 classes), L = 1, additive noise


class FastJit:
    """jax.jit with cheap compiler options, or plain jax.jit where this XLA does not know those options."""

    def __init__(self, fn, options: dict = FAST_COMPILE, **jit_kwargs):
        self.fast = jax.jit(fn, compiler_options=options, **jit_kwargs)
        self.plain, self.use_fast = jax.jit(fn, **jit_kwargs), True

    def __call__(self, *args):
        if self.use_fast:
            try:
                return self.fast(*args)
            except Exception:  # an unknown option: fall back (a genuine error is raised again below)
                self.use_fast = False
        return self.plain(*args)


_make_universe = FastJit(dg.make_universe, FASTER_COMPILE, static_argnums=0)


@functools.cache
def universe(st: dg.TaskStatic) -> dg.Universe:
    return _make_universe(st)


@functools.cache
def sampler(st: dg.TaskStatic, n: int, draw: dg.Draw = dg.TRAIN) -> FastJit:
    """Compiled ``(universe, params, key) -> Batch`` of n sequences."""
    options = FAST_COMPILE if n > 8192 else FASTER_COMPILE
    return FastJit(lambda uni, p, key: dg.sample_batch(st, uni, p, key, n, draw), options)


def split(template: dg.TaskSpec, dynamic: dict) -> tuple[dg.TaskStatic, dg.TaskParams]:
    """Static part of the template, parameters of the template with dynamic knobs changed (validated)."""
    bad = set(dynamic) - set(dg.DYNAMIC_FIELDS)
    assert not bad, f"not dynamic: {bad}"
    spec = dg.validate(dataclasses.replace(template, **dynamic))
    st = dg.static_part(template)
    assert dataclasses.replace(dg.static_part(spec), novel=st.novel) == st  # only the knobs changed
    return st, dg.dynamic_part(spec)


def numpy(batch: dg.Batch) -> dg.Batch:
    return jax.tree.map(np.asarray, batch)


def sample(template: dg.TaskSpec, seed: int = 0, n: int = N_SEQ, **dynamic) -> tuple[dg.Batch, dg.Universe]:
    """n training sequences of ``template`` with dynamic knobs changed, as numpy arrays; and the universe."""
    st, p = split(template, dynamic)
    uni = universe(st)
    return numpy(sampler(st, n)(uni, p, jax.random.key(seed))), uni


def probe(name: str, template: dg.TaskSpec, seed: int = 0, n: int = 4096, **dynamic) -> tuple[dg.Batch, dg.Universe]:
    """n sequences of probe ``name`` (as probe_batch draws them), as numpy arrays; and the universe."""
    st, p = split(template, dynamic)
    draw, st_, p_ = probe_task(name, st, p)
    uni = universe(st)
    return numpy(sampler(st_, n, draw)(uni, p_, jax.random.key(seed))), uni


def rank_of(uni: dg.Universe) -> np.ndarray:
    """Rank of every training class id (the index of the id in ``universe.order``)."""
    order = np.asarray(uni.order)
    ranks = np.empty(order.size, np.int64)
    ranks[order] = np.arange(order.size)
    return ranks


def fixed_labels(classes: np.ndarray, n_labels: int, polysemy: int = 1) -> np.ndarray:
    """(..., polysemy) labels of each class under the fixed map: (polysemy * c + j) mod n_labels."""
    return (polysemy * np.asarray(classes)[..., None] + np.arange(polysemy)) % n_labels


def assert_binomial(hits: int | np.ndarray, n: int, p: float, what: str = "") -> None:
    """``hits`` successes out of ``n`` trials are consistent with rate ``p`` (exactly so when p is 0 or 1)."""
    hits = np.asarray(hits)
    sd = math.sqrt(n * p * (1.0 - p))
    dev = np.abs(hits - n * p)
    assert np.all(dev <= SIGMAS * sd), f"{what}: {hits} of {n}, expected {n * p:.1f} +- {SIGMAS} x {sd:.1f}"


def query_count(b: dg.Batch) -> np.ndarray:
    """Context items of the query's class, per sequence."""
    return (b.classes[:, :-1] == b.classes[:, -1:]).sum(1)


def class_counts(classes: np.ndarray) -> np.ndarray:
    """(n, L) class ids -> (n, L) how often each slot's class occurs in its row."""
    return (classes[:, :, None] == classes[:, None, :]).sum(-1)
