"""One run, start to finish: build the ensemble, train it chunk by chunk, write the record.

The host does only bookkeeping: it calls the compiled chunk, pulls the members' health once, writes rows, saves
checkpoints, updates the progress bar. Everything else (batches, steps, probes) happens on the device.

A run continues from the newest readable checkpoint in its directory: metrics rows written after that checkpoint
are dropped, and since batch t is a function of (seed, t), the continued run is the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from data_gen import ConfigError, TaskStatic
from iclwl import analysis
from iclwl.checkpoints import CheckpointError, Checkpoints, checkpoint_steps, resume_conflicts
from iclwl.config import Config, member_config, members, static_knobs
from iclwl.groups import check_universes_fit, fit_groups
from iclwl.measures import SOURCES
from iclwl.mechanisms import headline, per_head
from iclwl.plots import plot_settings
from iclwl.preemption import Preempted, StopRequests
from iclwl.probing import ProbeMetrics, probe_list
from iclwl.records import MetricsFile, format_table, provenance, read_metrics, truncate_metrics, write_config
from iclwl.rundir import check_target, owned, prepare, writing
from iclwl.sharding import use_cpu_devices
from iclwl.training import Health, Meter, Program, compiled, ensemble_static, member_inputs, shared_universe
from iclwl.wandb_sink import WandbSink, require_wandb


def eval_schedule(total: int, n_log: int, every: int) -> np.ndarray:
    """Steps after which the probes run: 0, n_log log-spaced steps, every ``every`` steps, and the last."""
    every = every or max(total // 10, 1)
    log = np.round(np.geomspace(1, total, n_log)) if n_log else []
    steps = np.unique(np.concatenate([[0, total], log, np.arange(every, total + 1, every)]).astype(np.int64))
    return steps[(steps >= 0) & (steps <= total)]


def probe_rows(step: int, probes: ProbeMetrics, names: list[str], coords: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for m, coord in enumerate(coords):
        for p, name in enumerate(names):
            correct, count = probes.group_correct[m, p], probes.group_count[m, p]
            group_acc = [float(correct[g] / count[g]) if count[g] else None for g in range(2)]
            rows.append(
                {"step": step, "member": m, "probe": name, "acc": float(probes.acc[m, p]),
                 "loss": float(probes.loss[m, p]), "acc_common": group_acc[0], "acc_rare": group_acc[1],
                 **_mechanism_fields(probes, m, p),
                 **{k: float(v[m, p]) for k, v in probes.measures.items()}, **coord}
            )  # fmt: skip
    return rows


def _mechanism_fields(probes: ProbeMetrics, m: int, p: int) -> dict[str, Any]:
    """The fields of records.MECHANISM_SCALARS and MECHANISM_LISTS for member m, probe p (none when off)."""
    fields: dict[str, Any] = {}
    if probes.sources is not None:
        fields |= {f"src_{s}": float(probes.sources[m, p, i]) for i, s in enumerate(SOURCES)}
    if probes.attention is not None:  # the transformer's; other archs have no attention weights
        lh = {k: np.asarray(v[m, p]) for k, v in probes.attention._asdict().items()}  # (layers, H) each
        fields |= {**headline(lh), **{f"{k}_lh": per_head(v) for k, v in lh.items()}}
    return fields


def _train_rows(step: int, meter: Meter, health: Health, coords: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean training loss and accuracy over the steps each member took since the last evaluation."""
    rows = []
    for m, coord in enumerate(coords):
        n = int(meter.steps[m])
        loss, acc = (float(meter.loss[m] / n), float(meter.acc[m] / n)) if n else (None, None)
        rows.append({"step": step, "member": m, "probe": "train", "acc": acc, "loss": loss,
                     "stopped_at": None if health.alive[m] else int(health.bad_step[m]), **coord})  # fmt: skip
    return rows


class NonFiniteLoss(Exception):
    """Every member has stopped on a non-finite step; the message says where their last good states are."""


def run(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    """Train the ensemble of ``cfg``; write metrics.jsonl, config.json, provenance.json, checkpoints/,
    summary.md and curves.png under ``out_dir`` (or under ``cfg.train.resume``, continuing that run).
    Returns the summary table.

    The directory is checked before anything in it is touched (``iclwl.rundir``) and owned by this process while
    it trains; a failed write ends the run with a ``RunIOError`` naming the path and the cause."""
    resume = cfg.train.resume is not None
    out_dir = Path(cfg.train.resume) if resume else out_dir
    check_target(out_dir, resume)
    prepare(out_dir)
    require_wandb(cfg.wandb)  # a W&B mode without the package: refused before anything compiles
    with owned(out_dir):
        return _run(cfg, out_dir)


def _run(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    use_cpu_devices(cfg.train.cpu_devices)  # before JAX runs anything
    st = ensemble_static(cfg)
    coords = members(cfg)
    names = probe_list(cfg.probes, st)
    total = cfg.train.steps
    evals = eval_schedule(total, cfg.probes.n_log, cfg.probes.every)
    saves, forever = checkpoint_steps(cfg.checkpoint, total, evals)
    check_universes_fit(cfg, st)  # before member_inputs builds them
    init_keys, mem = member_inputs(cfg)
    ckpts = Checkpoints(out_dir / "checkpoints", cfg.checkpoint, forever) if cfg.checkpoint.enabled else None
    fresh = {"state": jax.eval_shape(compiled(Program.of(cfg, st)).init, init_keys),  # what a checkpoint holds
             "data_keys": jax.random.key_data(mem.data_key),
             "eval_keys": jax.random.key_data(mem.eval_key)}  # fmt: skip

    def check(meta: dict[str, Any]) -> None:
        conflicts = resume_conflicts(meta["config"], cfg)
        if conflicts:
            raise ConfigError("train.resume", str(out_dir), "the checkpoint was made with other settings that "
                              f"change its meaning: {'; '.join(conflicts)}")  # fmt: skip

    restored = ckpts.restore_latest(fresh, check) if ckpts else None
    if restored is not None and not np.array_equal(restored.tree["data_keys"], fresh["data_keys"]):
        raise CheckpointError(f"checkpoint at step {restored.step}: its data keys are not this run's seeds'")
    ens = fit_groups(cfg, st, shared_universe(cfg, st), init_keys, mem)
    if ens.count > 1 or ens.layout.mesh.size > 1:
        print(ens.describe())
    origin = provenance()
    metrics_path = out_dir / "metrics.jsonl"
    if restored is not None:
        ens.load(restored.tree["state"])
        t = restored.step
        with writing(metrics_path):
            dropped = truncate_metrics(metrics_path, t)
        print(f"resuming at step {t} from {ckpts.directory / str(t)}" + (f"; dropped {dropped} metrics rows "
              "written after it" if dropped else ""))  # fmt: skip
    else:
        if metrics_path.exists():  # a run directory's own rows, of an earlier start that left no checkpoint
            metrics_path.unlink()
        t = 0
    with writing(out_dir):  # after the resume check: a refused config leaves the record alone
        write_config(out_dir / "config.json", cfg)
        (out_dir / "provenance.json").write_text(json.dumps(origin, indent=2) + "\n")
        metrics = MetricsFile(metrics_path)
    effective = [member_config(cfg, i) for i in range(len(coords))] if cfg.wandb.mode != "disabled" else []
    sink = WandbSink(cfg.wandb, effective, origin, coords, out_dir, cfg.name, None, start_step=t,
                     static=static_knobs(cfg))  # fmt: skip

    def record(rows: list[dict[str, Any]]) -> None:
        with writing(metrics_path):
            metrics.write(rows)  # the record; W&B only mirrors it
        sink.write(rows)

    if t == 0:
        record(probe_rows(0, ens.evaluate(), names, coords))

    def save(step: int) -> None:
        if ckpts is not None:
            meta = {"config": dataclasses.asdict(cfg), "members": coords, "provenance": origin}
            ckpts.save(step, {**fresh, "state": ens.state()}, meta)

    bar = tqdm(total=total, initial=t, disable=not cfg.logging.progress, unit="step", dynamic_ncols=True)
    health = ens.health()
    alive = np.asarray(health.alive)
    with closing(sink):  # W&B's runs are finished however the run ends
        try:
            with StopRequests() as stop:
                for target in np.union1d(evals, saves):
                    if target <= t:
                        continue
                    while t < target:
                        end = min(t + cfg.train.chunk_steps, int(target))
                        ens.train(t, end, n=cfg.train.chunk_steps)
                        health = ens.health()  # the one host sync of the chunk
                        bar.update(end - t)
                        t = end
                        alive, dead = _report_failures(alive, health, coords)
                        if dead:  # the members keep their last good states: save them, then stop
                            save(t)
                            raise NonFiniteLoss(_all_stopped(health, t if ckpts is not None else None))
                        if stop.signum is not None and t < target:  # at the target: evaluate first
                            save(t)
                            raise Preempted(stop.signum, t)
                    if target in evals:
                        probes, meter = ens.evaluate(), ens.meter()
                        record(_train_rows(t, meter, health, coords) + probe_rows(t, probes, names, coords))
                        ens.reset_meters()
                        bar.set_postfix(_postfix(meter, probes, names), refresh=False)
                    if target in saves or stop.signum is not None:
                        save(t)
                    if stop.signum is not None:
                        raise Preempted(stop.signum, t)
        finally:
            bar.close()
            metrics.close()
            if ckpts is not None:
                ckpts.close()
        table = _finish(cfg, out_dir, coords, st)
        sink.publish(table, {"curves": out_dir / "curves.png"} if cfg.logging.plot else {}, t)
    return table


def _report_failures(alive: np.ndarray, health, coords: list[dict[str, Any]]) -> tuple[np.ndarray, bool]:
    """Print each member that stopped since the last look; returns who is alive and whether none is."""
    now = np.asarray(health.alive)
    for m in np.flatnonzero(alive & ~now):
        print(f"member {m} ({_coord_text(coords[m])}): non-finite loss, parameters or optimizer state at step "
              f"{int(health.bad_step[m])} (loss {float(health.bad_loss[m])}); this member stopped and keeps "
              "its last good parameters and optimizer state", file=sys.stderr)  # fmt: skip
    return now, not now.any()


def _all_stopped(health, saved_at: int | None) -> str:
    where = (f"the checkpoint at step {saved_at} holds each member's last good state" if saved_at is not None
             else "no checkpoint was written (checkpoint.enabled=false)")  # fmt: skip
    return (f"every member stopped on a non-finite step (first at step {int(health.bad_step.min())}); {where}. "
            "Lower optim.lr or set optim.clip_norm.")  # fmt: skip


def _coord_text(coord: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in coord.items())


def _postfix(meter: Meter, probes: ProbeMetrics, names: list[str]) -> dict[str, str]:
    post = {"loss": f"{(meter.loss / np.maximum(meter.steps, 1)).mean():.3f}"}
    for short, name in (("icl", "icl_novel"), ("iwl", "iwl_no_support")):
        if name in names:
            post[short] = f"{probes.acc[:, names.index(name)].mean():.2f}"
    return post


def _finish(cfg: Config, out_dir: Path, coords: list[dict[str, Any]], st: TaskStatic) -> list[dict[str, Any]]:
    rows = read_metrics(out_dir / "metrics.jsonl")
    keys = list(coords[0])
    sweep = analysis.of_run(rows, keys, st.n_labels)
    table = analysis.summarise(sweep, analysis.probes_of(sweep), drop_threshold=0.1, level=None)
    text = format_table(table)
    with writing(out_dir / "summary.md"):
        (out_dir / "summary.md").write_text(text + "\n")
    print(text)
    if cfg.logging.plot:
        with writing(out_dir / "curves.png"):
            probes = [p for p in analysis.probes_of(sweep) if not p.startswith(analysis.FAMILIES)]
            plot_settings(analysis.curves(sweep, probes), probes, sweep.chance, out_dir / "curves.png", cfg.name)
    print(f"outputs: {out_dir}")
    return table
