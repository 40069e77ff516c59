"""One run, start to finish: build the ensemble, train it chunk by chunk, write the record.

The host does only bookkeeping: it calls the compiled chunk, pulls the members' health once, writes rows, saves
checkpoints, updates the progress bar. Everything else (batches, steps, probes) happens on the device.

A run continues from the newest readable checkpoint in its directory: metrics rows written after that checkpoint
are dropped, and since batch t is a function of (seed, t), the continued run is the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import SingleDeviceSharding
from tqdm import tqdm

from data_gen import ConfigError, TaskStatic
from iclwl.config import Config, member_config, members, static_knobs
from iclwl.probes.evaluate import ProbeMetrics, probe_list
from iclwl.record.checkpoints import CheckpointError, Checkpoints, resume_conflicts
from iclwl.record.files import MetricsFile, format_table, provenance, read_metrics, truncate_metrics, write_config
from iclwl.record.rows import probe_rows, train_rows
from iclwl.record.rundir import RunDirError, check_target, owned, prepare, writing
from iclwl.record.wandb_sink import WandbSink, require_wandb
from iclwl.report import analysis
from iclwl.report.plots import plot_settings
from iclwl.training.compile_cache import use_compile_cache
from iclwl.training.distributed import any_process, is_primary, same_path, start
from iclwl.training.groups import Groups, check_universes_fit, fit_groups
from iclwl.training.preemption import Preempted, StopRequests
from iclwl.training.program import Meter, Program, compiled, ensemble_static, member_inputs, shared_universe
from iclwl.training.schedule import checkpoint_steps, eval_schedule
from iclwl.training.sharding import use_cpu_devices


class NonFiniteLoss(Exception):
    """Every member has stopped on a non-finite step; the message says where their last good states are."""


def run(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    """Train the ensemble of ``cfg``; write metrics.jsonl, config.json, provenance.json, checkpoints/,
    summary.md and curves.png under ``out_dir`` (or under ``cfg.train.resume``, continuing that run).
    Returns the summary table.

    The directory is checked before anything in it is touched (``iclwl.record.rundir``) and owned by this process while
    it trains; a failed write ends the run with a ``RunIOError`` naming the path and the cause."""
    resume = cfg.train.resume is not None
    out_dir = Path(cfg.train.resume) if resume else out_dir
    start(cfg.train)  # with several processes: join them, before JAX runs anything
    use_cpu_devices(cfg.train.cpu_devices)
    use_compile_cache(cfg.train.compile_cache)
    out_dir = same_path(out_dir)  # process 0's: every process works in one directory
    refused = None
    if is_primary():
        try:
            check_target(out_dir, resume)
            prepare(out_dir)
            require_wandb(cfg.wandb)  # a W&B mode without the package: refused before anything compiles
        except Exception as e:
            refused = e
    if any_process(refused is not None):  # every process stops, not only the one that found the problem
        raise refused if refused is not None else RunDirError(f"{out_dir}: refused by process 0 (see its error)")
    with owned(out_dir) if is_primary() else nullcontext():
        return _run(cfg, out_dir)


def _run(cfg: Config, out_dir: Path) -> list[dict[str, Any]]:
    job = Job.build(cfg, out_dir)
    t = job.restore()
    job.open_record(t)
    with closing(job.sink):  # W&B's runs are finished however the run ends
        t = job.train(t)
        table = _finish(cfg, out_dir, job.coords, job.st) if is_primary() else []
        job.sink.publish(table, {"curves": out_dir / "curves.png"} if cfg.logging.plot else {}, t)
    return table


@dataclass
class Job:
    """One run's parts, in the order ``_run`` uses them: built (schedule, member inputs, checkpoints), restored
    (the checkpoint checked, then the members' program made and loaded), recorded (config, provenance, metrics
    file, W&B), trained."""

    cfg: Config
    out_dir: Path
    st: TaskStatic
    coords: list[dict[str, Any]]  # each member's coordinates
    names: list[str]  # the probes
    evals: np.ndarray  # steps after which the probes run
    saves: np.ndarray  # steps after which a checkpoint is written
    ckpts: Checkpoints | None
    fresh: dict[str, Any]  # what a checkpoint holds, as shapes (restore's template)
    inputs: tuple  # (init keys, MemberInputs)
    ens: Groups | None = None  # the members, in one program or several (made by restore)
    origin: dict[str, Any] = field(default_factory=provenance)
    metrics: MetricsFile | None = None
    sink: WandbSink | None = None

    @classmethod
    def build(cls, cfg: Config, out_dir: Path) -> Job:
        st = ensemble_static(cfg)
        program = compiled(Program.of(cfg, st))  # made first: a second run starts loading its programs here
        evals = eval_schedule(cfg.train.steps, cfg.probes.n_log, cfg.probes.every)
        saves, forever = checkpoint_steps(cfg.checkpoint, cfg.train.steps, evals)
        check_universes_fit(cfg, st)  # before member_inputs builds them
        init_keys, mem = member_inputs(cfg)
        ckpts = Checkpoints(out_dir / "checkpoints", cfg.checkpoint, forever) if cfg.checkpoint.enabled else None
        fresh = {"state": program.init.shapes(init_keys),
                 "data_keys": np.asarray(jax.random.key_data(mem.data_key)),
                 "eval_keys": np.asarray(jax.random.key_data(mem.eval_key))}  # fmt: skip
        names = probe_list(cfg.probes, st)
        return cls(cfg, out_dir, st, members(cfg), names, evals, saves, ckpts, fresh, (init_keys, mem))

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def restore(self) -> int:
        """Check the newest readable checkpoint (before anything compiles), make the members' program, load the
        checkpoint into it and drop the rows written after it; the step the run starts from. With several
        processes the program comes first: each process reads the shards its devices hold."""
        # the layout to read into, whatever the layout it was written from (another number of processes)
        if jax.process_count() > 1:
            self.ens = self._fit()
            shardings = jax.tree.map(lambda x: x.sharding, self.ens.state())
        else:
            shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.local_devices()[0]), self.fresh["state"])
        like = {**self.fresh, "state": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                                    self.fresh["state"], shardings)}  # fmt: skip
        restored = self.ckpts.restore_latest(like, self._check) if self.ckpts else None
        if restored is not None and not np.array_equal(restored.tree["data_keys"], self.fresh["data_keys"]):
            raise CheckpointError(f"checkpoint at step {restored.step}: its data keys are not this run's seeds'")
        self.ens = self.ens or self._fit()
        if restored is None:
            if is_primary() and self.metrics_path.exists():  # the rows of an earlier start without a checkpoint
                self.metrics_path.unlink()
            return 0
        self.ens.load(restored.tree["state"])
        dropped = 0
        if is_primary():
            with writing(self.metrics_path):
                dropped = truncate_metrics(self.metrics_path, restored.step)
        print(f"resuming at step {restored.step} from {self.ckpts.directory / str(restored.step)}"
              + (f"; dropped {dropped} metrics rows written after it" if dropped else ""))  # fmt: skip
        return restored.step

    def _fit(self) -> Groups:
        groups = fit_groups(self.cfg, self.st, shared_universe(self.cfg, self.st), *self.inputs)
        print(groups.describe())
        return groups

    def _check(self, meta: dict[str, Any]) -> None:
        conflicts = resume_conflicts(meta["config"], self.cfg)
        if conflicts:
            raise ConfigError("train.resume", str(self.out_dir), "the checkpoint was made with other settings "
                              f"that change its meaning: {'; '.join(conflicts)}")  # fmt: skip

    def open_record(self, t: int) -> None:
        """config.json, provenance.json, the metrics file and W&B; the step-0 evaluation of a fresh start."""
        cfg = self.cfg
        if is_primary():  # the one process that writes the record
            with writing(self.out_dir):  # after the resume check: a refused config leaves the record alone
                write_config(self.out_dir / "config.json", cfg)
                (self.out_dir / "provenance.json").write_text(json.dumps(self.origin, indent=2) + "\n")
                self.metrics = MetricsFile(self.metrics_path)
        wandb = cfg.wandb if is_primary() else dataclasses.replace(cfg.wandb, mode="disabled")
        effective = [member_config(cfg, i) for i in range(len(self.coords))] if wandb.mode != "disabled" else []
        self.sink = WandbSink(wandb, effective, self.origin, self.coords, self.out_dir, cfg.name, None,
                              start_step=t, static=static_knobs(cfg))  # fmt: skip
        if t == 0:
            self.record(probe_rows(0, self.ens.evaluate(), self.names, self.coords))

    def record(self, rows: list[dict[str, Any]]) -> None:
        if self.metrics is None:  # not process 0
            return
        with writing(self.metrics_path):
            self.metrics.write(rows)  # the record; W&B only mirrors it
        self.sink.write(rows)

    def save(self, step: int, wait: bool = False) -> None:
        """Start a checkpoint of step ``step`` (written in the background); ``wait``: until it is written."""
        if self.ckpts is not None:
            meta = {"config": dataclasses.asdict(self.cfg), "members": self.coords, "provenance": self.origin}
            self.ckpts.save(step, {**self.fresh, "state": self.ens.state()}, meta)
            if wait:
                self.ckpts.wait()

    def train(self, t: int) -> int:
        """Chunks from step t to the end, with the evaluations and saves on the way; returns the last step.
        Raises NonFiniteLoss when every member has stopped, Preempted on a stop request (after saving)."""
        cfg, ens = self.cfg, self.ens
        bar = tqdm(total=cfg.train.steps, initial=t, disable=not cfg.logging.progress, unit="step",
                   dynamic_ncols=True)  # fmt: skip
        health = ens.health()
        alive = np.asarray(health.alive)
        try:
            with StopRequests() as stop:
                for target in np.union1d(self.evals, self.saves):
                    if target <= t:
                        continue
                    while t < target:
                        end = min(t + cfg.train.chunk_steps, int(target))
                        ens.train(t, end, n=cfg.train.chunk_steps)
                        health = ens.health()  # the one host sync of the chunk
                        bar.update(end - t)
                        t = end
                        alive, dead = _report_failures(alive, health, self.coords)
                        if dead:  # the members keep their last good states: save them, then stop
                            self.save(t, wait=True)
                            raise NonFiniteLoss(_all_stopped(health, t if self.ckpts is not None else None))
                        # a request to any process stops every one of them at this chunk boundary
                        stopping = any_process(stop.signum is not None)
                        if stopping and t < target:  # at the target: evaluate first
                            self.save(t, wait=True)
                            raise Preempted(stop.signum or signal.SIGTERM, t)
                    if target in self.evals:
                        probes, meter = ens.evaluate(t), ens.meter()
                        self.record(train_rows(t, meter, health, self.coords)
                                    + probe_rows(t, probes, self.names, self.coords))  # fmt: skip
                        ens.reset_meters()
                        bar.set_postfix(_postfix(meter, probes, self.names), refresh=False)
                    if target in self.saves or stopping:
                        self.save(t, wait=stopping)
                    if stopping:
                        raise Preempted(stop.signum or signal.SIGTERM, t)
            if self.ckpts is not None:
                self.ckpts.wait()  # the last checkpoint is written before the run reports success
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.ckpts is not None:
                self.ckpts.close()
        return t


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
    return analysis.describe(tuple(coord.items()))


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
