"""The reference command: the pure ICL and pure IWL predictors (``iclwl.models.reference``) through the probes.

``evaluate_reference(cfg)`` runs both on every member's probe sets (the very sequences a run of ``cfg`` is
evaluated on: same eval keys) and returns rows with the schema of metrics.jsonl plus ``predictor``::

    iclwl-reference experiment=none task=chan2024 --out reference.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax
import numpy as np

from data_gen import ConfigError, Universe
from iclwl.cli.compose import ComposeError, compose
from iclwl.config import Config, members
from iclwl.models.reference import PREDICTORS, make_predictor
from iclwl.probes.evaluate import ProbeMetrics, evaluate_member, probe_list
from iclwl.record.markdown import markdown_table
from iclwl.record.measures import ROW_KEY, SEED_COORDS, describe, is_measurement
from iclwl.record.rows import probe_rows
from iclwl.training.program import MemberInputs, ensemble_static, member_inputs, shared_universe


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
    rows = [(predictor, setting, *(f"{np.mean(by_probe[p]):.3f}" if p in by_probe else "" for p in probes))
            for (predictor, setting), by_probe in acc.items()]  # fmt: skip
    return markdown_table(("predictor", "setting", *probes), rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="iclwl-reference", description="Score the pure ICL and pure "
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
