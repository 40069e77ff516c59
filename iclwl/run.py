"""One run, start to finish: build the ensemble, train it chunk by chunk, write the record.

The host does only bookkeeping: it calls the compiled chunk, pulls its metrics once, writes rows, updates the
progress bar. Everything else (batches, steps, probes) happens on the device.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from data_gen import ConfigError, TaskStatic, dynamic_part, make_universe, static_part
from iclwl.config import Config, member_tasks, members
from iclwl.plots import plot_run
from iclwl.probing import ProbeMetrics, probe_list
from iclwl.records import MetricsFile, format_table, provenance, read_metrics, summarise, write_config
from iclwl.training import Program, compiled, streams


def eval_schedule(total: int, n_log: int, every: int) -> np.ndarray:
    """Steps after which the probes run: 0, n_log log-spaced steps, every ``every`` steps, and the last."""
    every = every or max(total // 10, 1)
    log = np.round(np.geomspace(1, total, n_log)) if n_log else []
    steps = np.unique(np.concatenate([[0, total], log, np.arange(every, total + 1, every)]).astype(np.int64))
    return steps[(steps >= 0) & (steps <= total)]


def ensemble_static(cfg: Config) -> TaskStatic:
    """The compiled-in task of all members; refuses sweeps that would change it."""
    statics = [static_part(t) for t in member_tasks(cfg)]
    novel = any(s.novel for s in statics)
    base = dataclasses.replace(statics[0], novel=novel)
    for s, m in zip(statics, members(cfg), strict=True):
        if dataclasses.replace(s, novel=novel) != base:
            raise ConfigError("sweep", m, "this member changes a compiled-in property of the task (e.g. sets "
                              "p_relevant or L_relevant where the task leaves them unset)")  # fmt: skip
    return base


def _rows(step: int, probes: ProbeMetrics, names: list[str], coords: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for m, coord in enumerate(coords):
        for p, name in enumerate(names):
            correct, count = probes.group_correct[m, p], probes.group_count[m, p]
            group_acc = [float(correct[g] / count[g]) if count[g] else None for g in range(2)]
            rows.append(
                {"step": step, "member": m, "probe": name, "acc": float(probes.acc[m, p]),
                 "loss": float(probes.loss[m, p]), "acc_common": group_acc[0], "acc_rare": group_acc[1], **coord}
            )  # fmt: skip
    return rows


def _train_rows(step: int, loss: np.ndarray, acc: np.ndarray, coords: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"step": step, "member": m, "probe": "train", "acc": float(acc[m]), "loss": float(loss[m]), **coord}
        for m, coord in enumerate(coords)
    ]


def run(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    """Train the ensemble of ``cfg``; write metrics.jsonl, config.json, provenance.json, summary.md and
    curves.png under ``out_dir``. Returns the summary table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    st = ensemble_static(cfg)
    uni = make_universe(st)
    coords = members(cfg)
    names = probe_list(cfg.probes, st)
    task = jax.tree.map(lambda *xs: jnp.stack(xs), *[dynamic_part(t) for t in member_tasks(cfg)])
    keys = [streams(c["seed"]) for c in coords]
    init_keys, data_keys, eval_keys = (jnp.stack([getattr(k, f) for k in keys]) for f in ("init", "data", "eval"))
    total = cfg.train.steps
    schedule = eval_schedule(total, cfg.probes.n_log, cfg.probes.every)
    ens = compiled(Program.of(cfg, st))

    write_config(out_dir / "config.json", cfg)
    (out_dir / "provenance.json").write_text(json.dumps(provenance(), indent=2) + "\n")
    metrics = MetricsFile(out_dir / "metrics.jsonl")
    state = ens.init(init_keys)
    metrics.write(_rows(0, jax.device_get(ens.evaluate(uni, state.params, task, eval_keys)), names, coords))

    bar = tqdm(total=total, disable=not cfg.logging.progress, unit="step", dynamic_ncols=True)
    t, chunk, losses, accs = 0, cfg.train.chunk_steps, [], []
    for target in schedule[1:]:
        while t < target:
            stop = min(t + chunk, int(target))
            state, out = ens.chunk(uni, state, task, data_keys, jnp.int32(t), jnp.int32(stop), n=chunk)
            out = jax.device_get(out)  # the one host sync of the chunk
            losses.append(out.loss[out.trained])
            accs.append(out.acc[out.trained])
            bar.update(stop - t)
            t = stop
        probes = jax.device_get(ens.evaluate(uni, state.params, task, eval_keys))
        loss, acc = np.concatenate(losses).mean(0), np.concatenate(accs).mean(0)
        metrics.write(_train_rows(t, loss, acc, coords) + _rows(t, probes, names, coords))
        losses, accs = [], []
        bar.set_postfix(_postfix(loss, probes, names), refresh=False)
    bar.close()
    metrics.close()
    return _finish(cfg, out_dir, coords, st)


def _postfix(loss: np.ndarray, probes: ProbeMetrics, names: list[str]) -> dict[str, str]:
    post = {"loss": f"{loss.mean():.3f}"}
    for short, name in (("icl", "icl_novel"), ("iwl", "iwl_no_support")):
        if name in names:
            post[short] = f"{probes.acc[:, names.index(name)].mean():.2f}"
    return post


def _finish(cfg: Config, out_dir: Path, coords: list[dict[str, Any]], st: TaskStatic) -> list[dict[str, Any]]:
    rows = read_metrics(out_dir / "metrics.jsonl")
    keys = list(coords[0])
    table = summarise(rows, keys)
    text = format_table(table)
    (out_dir / "summary.md").write_text(text + "\n")
    print(text)
    if cfg.logging.plot:
        plot_run(rows, keys, out_dir / "curves.png", chance=1.0 / st.n_labels, title=cfg.name)
    print(f"outputs: {out_dir}")
    return table
