"""Probes of one member, on the device: accuracy and loss on every probe set, split by frequency group, and
(``probes.mechanisms``) the attention measures and prediction sources of ``iclwl.probes.mechanisms``.

Probe sets come from the member's eval stream (``fold_in(eval_key, probe index)``), so each evaluation sees the
same sequences and training never draws them. The list of probes is fixed per run (``probe_list``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from data_gen import Batch, TaskParams, TaskStatic, Universe, probe_batch, probe_names
from data_gen.errors import ConfigError
from data_gen.universe import labels_of
from iclwl.config import ModelConfig, ProbeConfig
from iclwl.models.interventions import Intervention
from iclwl.models.transformer import Transformer, random_offsets
from iclwl.probes.ablations import Ablation, head_ablations
from iclwl.probes.mechanisms import Attention, attention_measures, prediction_sources

ABLATION_STREAM = 1_000_003  # folded into a probe's key for the random heads of ablations (probes.ablation_k)


class ProbeMetrics(NamedTuple):
    acc: jax.Array  # (..., P)
    loss: jax.Array  # (..., P)
    group_correct: jax.Array  # (..., P, 2) correct answers among queries of group 0 (common/high) and 1 (rare/low)
    group_count: jax.Array  # (..., P, 2)
    measures: dict[str, jax.Array]  # (..., P) each: means of the model's ``query_measures`` (the gated model's gate)
    attention: Attention | None = None  # each (..., P, layers, H); None with probes.mechanisms=false
    sources: jax.Array | None = None  # (..., P, 4) answer shares in measures.SOURCES order
    ablation: Ablation | None = None  # (..., P, layers, H) and (..., P); None with probes.ablations=off


def probe_list(probes: ProbeConfig, st: TaskStatic) -> list[str]:
    known = probe_names(st, families=True)
    if probes.names:
        for name in probes.names:
            if name not in known:
                raise ConfigError("probes.names", name, f"unknown probe; this task has {', '.join(known)}")
        return list(probes.names)
    return probe_names(st, families=probes.families)


def memorised_labels(st: TaskStatic, batch: Batch) -> jax.Array:
    """(n, polysemy) the labels the fixed map gives each query's class; -1 where memory has none to give
    (holdout and novel classes, never trained on; label_map='random', where no label is tied to a class)."""
    q = batch.classes[:, -1:]  # (n, 1)
    labels = labels_of(st, q, jnp.arange(st.polysemy)[None, :])  # (n, polysemy)
    trained = (q >= 0) & (q < st.max_classes) & (st.label_map != "random")
    return jnp.where(trained, labels, -1)


def evaluate_member(
    st: TaskStatic,
    model_cfg: ModelConfig,
    probes: ProbeConfig,
    uni: Universe,
    model,
    task: TaskParams,
    key: jax.Array,
    edit: Callable[[jax.Array], Intervention] | None = None,
) -> ProbeMetrics:
    """Every probe of one member; ``edit`` gives the intervention the transformer runs with on a probe set, from its
    (n, L+1) classes (a training-time edit inside its window)."""
    out, sets = [], []
    for i, name in enumerate(probe_list(probes, st)):
        k_batch, k_offset = jax.random.split(jax.random.fold_in(key, i))
        batch = probe_batch(name, st, uni, task, k_batch, probes.n_eval)
        offset = random_offsets(model_cfg, k_offset, probes.n_eval)
        sets.append((batch, offset))
        attention = sources = None
        extra = {"intervention": edit(batch.classes)} if edit is not None else {}
        if probes.mechanisms and isinstance(model, Transformer):  # other models have no attention weights
            logits, weights = model(batch.items, batch.labels, offset, query_only=True, return_attention=True,
                                    **extra)  # fmt: skip
            logits = logits[:, -1]  # (n, n_labels)
            per_layer = functools.partial(attention_measures, classes=batch.classes, tokens=model_cfg.tokens)
            attention = jax.vmap(per_layer)(weights)  # (layers, n, H, T, T) -> each (layers, H)
        else:
            logits = model(batch.items, batch.labels, offset, query_only=True, **extra)[:, -1]  # (n, n_labels)
        if probes.mechanisms:
            pred = jnp.argmax(logits, -1)
            sources = prediction_sources(pred, batch.labels, batch.classes, memorised_labels(st, batch))
        correct = jnp.argmax(logits, -1) == batch.labels[:, -1]  # (n,)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels[:, -1])
        in_group = batch.group[:, None] == jnp.arange(2)  # (n, 2)
        measures = getattr(model, "query_measures", None)  # an optional method: only some archs have one
        means = {k: v.mean() for k, v in measures(batch.items, batch.labels).items()} if measures else {}
        out.append(
            ProbeMetrics(
                acc=correct.mean(),
                loss=loss.mean(),
                group_correct=jnp.sum(in_group & correct[:, None], 0),
                group_count=jnp.sum(in_group, 0),
                measures=means,
                attention=attention,
                sources=sources,
            )
        )
    metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *out)
    if probes.ablations == "off" or not isinstance(model, Transformer):  # reference predictors have no heads
        return metrics
    # the heads ranked by their induction score, averaged over the probe sets that have one
    score = jnp.nanmean(metrics.attention.induction, axis=0) if probes.ablation_k else None
    ablations = []
    for i, (batch, offset) in enumerate(sets):
        T = 2 * batch.labels.shape[1] - 1 if model_cfg.tokens == "interleaved" else batch.labels.shape[1]
        base = edit(batch.classes) if edit is not None else Intervention.none(model_cfg, T)
        k_random = jax.random.fold_in(jax.random.fold_in(key, i), ABLATION_STREAM)
        ablations.append(head_ablations(model, batch, offset, base, probes.ablations, score, probes.ablation_k,
                                        k_random))  # fmt: skip
    return metrics._replace(ablation=jax.tree.map(lambda *xs: jnp.stack(xs), *ablations))
