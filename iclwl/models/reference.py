"""Reference predictors: pure ICL and pure IWL, with the transformer's call signature, through the same probes.

* ``NearestContext`` (pure ICL) answers the label of the context item most similar to the query. Similarity is
  cosine, not a dot product: an item's norm carries noise, not class (Chan 2024's unit prototypes plus sigma = 0.2
  noise in D = 64 have norm about 1.9, mostly noise), and a dot product would prefer long items to similar ones.
  Ties go to the earliest item. It never uses the class universe: only the sequence.
* ``NearestPrototype`` (pure IWL) is the memorised map: the training class (among the K active ones) whose
  prototype is most similar (cosine) to the query, then that class's label under the task's fixed map (all its
  labels, equally, with polysemy). It never reads the context. Under ``label_map='random'`` there is no map to
  memorise and it scores chance.

Neither is trained. Each answers a confident, smoothed one-hot: probabilities ``(1 - EPS) onehot + EPS / V``, so
the loss is about 0 when right and log(V / EPS) when wrong; accuracy is the measure to read.

The command ``iclwl-reference`` (``iclwl.cli.reference``) scores them on the probe sets of a config.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from data_gen import TaskParams, TaskStatic, Universe
from data_gen.universe import labels_of
from iclwl.models.context import answer_rows, cosine, label_mixture, visible

EPS = 1e-3  # probability mass a reference predictor spreads over every label: keeps its loss finite
PREDICTORS = ("nearest_context", "nearest_prototype")


def smoothed_log(probs: jax.Array) -> jax.Array:
    """(..., V) probabilities -> logits of ``(1 - EPS) probs + EPS / V``."""
    return jnp.log((1.0 - EPS) * probs + EPS / probs.shape[-1])


class NearestContext:
    """Pure ICL: the label of the most similar earlier context item (uniform where there is none)."""

    def __init__(self, n_labels: int):
        self.n_labels = n_labels

    def __call__(self, items: jax.Array, labels: jax.Array, offset: jax.Array | None = None, *,
                 query_only: bool = False) -> jax.Array:  # fmt: skip
        """(B, L+1, D) items, (B, L+1) labels -> logits (B, R, V) at the item tokens (R = 1 with query_only)."""
        L = items.shape[1] - 1
        rows = answer_rows(L, query_only)
        see = visible(rows, L)  # (R, L)
        sim = jnp.where(see, cosine(items[:, rows], items[:, :L]), -jnp.inf)  # (B, R, L)
        weights = jax.nn.one_hot(jnp.argmax(sim, axis=-1), L)  # (B, R, L): all on the nearest item
        return smoothed_log(label_mixture(weights, labels[:, :L], see, self.n_labels))


class NearestPrototype:
    """Pure IWL: the label of the nearest training-class prototype, from the query alone."""

    def __init__(self, st: TaskStatic, uni: Universe, task: TaskParams):
        self.st = st
        self.classes = uni.order  # (C,) training class ids by frequency rank
        self.active = jnp.arange(st.max_classes) < task.K  # (C,) the K classes trained on
        self.prototypes = uni.prototypes[uni.order]  # (C, D)

    def __call__(self, items: jax.Array, labels: jax.Array, offset: jax.Array | None = None, *,
                 query_only: bool = False) -> jax.Array:  # fmt: skip
        """(B, L+1, D) items (labels unused) -> logits (B, R, V) at the item tokens (R = 1 with query_only)."""
        rows = answer_rows(items.shape[1] - 1, query_only)
        sim = jnp.where(self.active, cosine(items[:, rows], self.prototypes), -jnp.inf)  # (B, R, C)
        best = self.classes[jnp.argmax(sim, axis=-1)]  # (B, R) class ids
        senses = labels_of(self.st, best[..., None], jnp.arange(self.st.polysemy))  # (B, R, polysemy)
        probs = jax.nn.one_hot(senses, self.st.n_labels).mean(axis=-2)  # (B, R, V)
        return smoothed_log(probs)


def make_predictor(name: str, st: TaskStatic, uni: Universe, task: TaskParams):
    if name == "nearest_context":
        return NearestContext(st.n_labels)
    if name == "nearest_prototype":
        return NearestPrototype(st, uni, task)
    raise ValueError(f"unknown reference predictor {name!r}; known: {', '.join(PREDICTORS)}")
