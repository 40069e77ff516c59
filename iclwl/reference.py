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

``evaluate_reference(cfg)`` runs both on every member's probe sets (the very sequences a run of ``cfg`` is
evaluated on: same eval keys) and returns rows with the schema of metrics.jsonl plus ``predictor``::

    python -m iclwl.reference experiment=none task=chan2024 --out reference.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_gen import ConfigError, TaskParams, TaskStatic, Universe
from data_gen.universe import labels_of
from iclwl.analysis import describe
from iclwl.compose import ComposeError, compose
from iclwl.config import Config, members
from iclwl.context import answer_rows, cosine, label_mixture, visible
from iclwl.measures import ROW_KEY, SEED_COORDS, is_measurement
from iclwl.probing import ProbeMetrics, evaluate_member, probe_list
from iclwl.rows import probe_rows
from iclwl.training import MemberInputs, ensemble_static, member_inputs, shared_universe

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


# ------------------------------------------------------------------------------------------------ evaluation


def reference_metrics(cfg: Config, name: str) -> ProbeMetrics:
    """Probe metrics (M, P) of predictor ``name`` for every member of ``cfg``, on the run's own probe sets."""
    st = ensemble_static(cfg)
    _, mem = member_inputs(cfg)

    def one(shared: Universe | None, mem: MemberInputs) -> ProbeMetrics:
        uni = mem.universe if mem.universe is not None else shared
        return evaluate_member(st, cfg.model, cfg.probes, uni, make_predictor(name, st, uni, mem.task), mem.task,
                               mem.eval_key)  # fmt: skip

    return jax.device_get(jax.jit(jax.vmap(one, in_axes=(None, 0)))(shared_universe(cfg, st), mem))


def evaluate_reference(cfg: Config) -> list[dict[str, Any]]:
    """Rows of both predictors: the schema of metrics.jsonl (step 0, as they never train) plus ``predictor``."""
    names, coords = probe_list(cfg.probes, ensemble_static(cfg)), members(cfg)
    rows = []
    for predictor in PREDICTORS:  # the rows a run writes at step 0 (run.probe_rows), tagged with the predictor
        rows += [{**r, "predictor": predictor} for r in probe_rows(0, reference_metrics(cfg, predictor), names, coords)]
    return rows


def format_reference(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one line per predictor and setting (seeds averaged), one column per probe."""
    probes = list(dict.fromkeys(r["probe"] for r in rows))
    fixed = {*ROW_KEY, "predictor", *SEED_COORDS}  # with the measurements; what is left are the swept coordinates
    acc: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        setting = describe(tuple((k, v) for k, v in r.items() if k not in fixed and not is_measurement(k, v)))
        acc[(r["predictor"], setting)][r["probe"]].append(r["acc"])
    lines = ["| predictor | setting | " + " | ".join(probes) + " |", "|---|---|" + "---|" * len(probes)]
    for (predictor, setting), by_probe in acc.items():
        cells = [f"{np.mean(by_probe[p]):.3f}" if p in by_probe else "" for p in probes]
        lines.append(f"| {predictor} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m iclwl.reference", description="Score the pure ICL and pure "
                                     "IWL reference predictors on the probe sets of a run's config.")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (task=chan2024 ...)")
    parser.add_argument("--out", type=Path, help="also write the rows here (JSON lines, the metrics.jsonl schema)")
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.parent.is_dir():
        print(f"error: --out = {args.out}: its directory {args.out.parent} does not exist", file=sys.stderr)
        sys.exit(2)
    try:
        rows = evaluate_reference(compose(args.overrides))
    except (ConfigError, ComposeError) as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_reference(rows))
    if args.out is not None:
        try:
            args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        except OSError as e:
            print(f"error: --out = {args.out}: {e.strerror}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()
