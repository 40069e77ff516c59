"""Runs that survive: exact resume, preemption, non-finite steps, damaged checkpoints, refused resumes."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_training import TINY_MODEL, TINY_TASK

from data_gen import ConfigError, make_universe
from iclwl import run as run_module
from iclwl.config import (
    CheckpointConfig,
    Config,
    LoggingConfig,
    OptimConfig,
    ProbeConfig,
    TrainConfig,
    from_dict,
    validate_config,
)  # fmt: skip
from iclwl.record.checkpoints import CheckpointError, Checkpoints
from iclwl.run import NonFiniteLoss, ensemble_static, run
from iclwl.training.preemption import Preempted
from iclwl.training.program import Program, compiled, member_inputs

ROOT = Path(__file__).resolve().parents[1]


def tiny(**changes) -> Config:
    cfg = Config(
        task=TINY_TASK,
        model=TINY_MODEL,
        train=TrainConfig(steps=60, batch_size=16, chunk_steps=7, seeds=(0, 1)),
        probes=ProbeConfig(n_eval=64, n_log=4, every=20, mechanisms=False),
        logging=LoggingConfig(progress=False, plot=False),
        checkpoint=CheckpointConfig(keep=3),
    )
    return validate_config(dataclasses.replace(cfg, **changes))


def final_params(out: Path, cfg: Config):
    """The parameters of the newest checkpoint of a finished run."""
    st = ensemble_static(cfg)
    ens = compiled(Program.of(cfg, st))
    init, _ = member_inputs(cfg)
    like = {"state": jax.eval_shape(ens.init, init), "data_keys": None, "eval_keys": None}
    like["data_keys"] = like["eval_keys"] = jax.ShapeDtypeStruct((len(cfg.train.seeds), 2), jnp.uint32)
    ck = Checkpoints(out / "checkpoints", cfg.checkpoint, set())
    restored = ck.restore_latest(like, lambda meta: None)
    ck.close()
    return restored.step, restored.tree["state"].params


class StopAfter:
    """Stands in for StopRequests: reports a SIGTERM after ``n`` looks, as if it arrived during chunk n + 1 (the run
    looks once after each chunk)."""

    def __init__(self, n: int):
        self.n, self.looks = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    @property
    def signum(self):
        self.looks += 1
        return signal.SIGTERM if self.looks > self.n else None


def assert_same_run(a: Path, b: Path, cfg: Config) -> None:
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    step_a, pa = final_params(a, cfg)
    step_b, pb = final_params(b, cfg)
    assert step_a == step_b == cfg.train.steps
    jax.tree.map(np.testing.assert_array_equal, pa, pb)


@pytest.mark.parametrize("stops", [[1], [3, 2, 2]])
def test_preempted_and_resumed_run_equals_uninterrupted(reference, tmp_path, monkeypatch, stops):
    cfg, ref = reference
    for n in stops:  # each stop lands mid-interval or on an evaluation step, depending on n
        monkeypatch.setattr(run_module, "StopRequests", lambda n=n: StopAfter(n))
        with pytest.raises(Preempted) as e:
            run(cfg, tmp_path)
        assert e.value.exit_code == 128 + signal.SIGTERM
        assert (tmp_path / "checkpoints" / str(e.value.step)).is_dir()
    monkeypatch.undo()
    run(cfg, tmp_path)
    assert_same_run(ref, tmp_path, cfg)


def test_damaged_checkpoint_falls_back_to_the_previous(reference, tmp_path):
    cfg, ref = reference
    run(cfg, tmp_path)
    latest = tmp_path / "checkpoints" / str(cfg.train.steps)
    biggest = max((f for f in latest.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    with pytest.warns(UserWarning, match=f"checkpoint at step {cfg.train.steps} is unreadable"):
        run(cfg, tmp_path)  # resumes from the one before, trains the rest again
    assert (tmp_path / "checkpoints_unreadable" / str(cfg.train.steps)).is_dir()
    assert_same_run(ref, tmp_path, cfg)


def test_no_readable_checkpoint_is_one_clear_error(reference, tmp_path):
    cfg, _ = reference
    run(cfg, tmp_path)
    for step_dir in (tmp_path / "checkpoints").iterdir():
        for f in step_dir.rglob("*"):
            if f.is_file() and "ocdbt" in str(f):
                f.write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="none of the checkpoints"):
        run(cfg, tmp_path)


def test_resume_refuses_a_config_that_changes_the_checkpoint(reference, tmp_path):
    cfg, _ = reference
    run(cfg, tmp_path)
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_model=32))
    with pytest.raises(ConfigError, match=r"model\.d_model=16 -> 32"):
        run(wider, tmp_path)
    faster = dataclasses.replace(cfg, optim=OptimConfig(lr=3e-3))
    with pytest.raises(ConfigError, match=r"optim\.lr=0\.001 -> 0\.003"):
        run(faster, tmp_path)
    assert not (tmp_path / "checkpoints_unreadable").exists(), "a refused resume must not touch the checkpoints"


def test_resume_allows_more_steps_and_continues(reference, tmp_path):
    cfg, _ = reference
    run(cfg, tmp_path)
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=80))
    run(longer, tmp_path)
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    steps = sorted({int(r.split('"step": ')[1].split(",")[0]) for r in rows})
    assert steps[-1] == 80 and len(rows) == len(set(rows)), "no duplicated rows"


def test_resume_in_another_directory_via_train_resume(reference, tmp_path, monkeypatch):
    cfg, ref = reference
    monkeypatch.setattr(run_module, "StopRequests", lambda: StopAfter(2))
    with pytest.raises(Preempted):
        run(cfg, tmp_path / "run")
    monkeypatch.undo()
    elsewhere = tmp_path / "hydra_dir"
    cont = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=str(tmp_path / "run")))
    run(cont, elsewhere)
    assert not (elsewhere / "metrics.jsonl").exists()
    assert_same_run(ref, tmp_path / "run", cfg)


def test_non_finite_member_stops_alone_and_keeps_its_last_good_state():
    cfg = tiny()
    st = ensemble_static(cfg)
    ens, uni = compiled(Program.of(cfg, st)), make_universe(st)
    init, mem = member_inputs(cfg)
    clean = ens.init(init)
    ref, _ = ens.chunk(uni, clean, mem, jnp.int32(0), jnp.int32(5), n=7)
    ref = jax.device_get(ref)

    state = ens.init(init)
    state, _ = ens.chunk(uni, state, mem, jnp.int32(0), jnp.int32(3), n=7)
    good = jax.device_get(state.params)
    poison = jax.tree.map(lambda x: x.at[1].multiply(jnp.inf) if x.dtype == jnp.float32 else x, state.opt_state)
    state = state._replace(opt_state=poison)  # member 1's next update is inf
    state, out = ens.chunk(uni, state, mem, jnp.int32(3), jnp.int32(5), n=7, trace=True)
    h = jax.device_get(state.health)
    assert list(h.alive) == [True, False] and int(h.bad_step[1]) == 4 and int(h.bad_step[0]) == -1
    assert list(np.asarray(out.trained)[:2, 1]) == [False, False] and np.asarray(out.trained)[:2, 0].all()
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda a: a[1], good),
                 jax.tree.map(lambda a: a[1], jax.device_get(state.params)))  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda a: a[0], ref.params),
                 jax.tree.map(lambda a: a[0], jax.device_get(state.params)))  # fmt: skip


def test_huge_learning_rate_stops_the_run_and_keeps_a_loadable_checkpoint(tmp_path, capsys):
    cfg = tiny(optim=OptimConfig(name="sgd", lr=1e30, momentum=0.0),
               train=TrainConfig(steps=60, batch_size=16, chunk_steps=7, seeds=(0, 1)),
               probes=ProbeConfig(n_eval=64, n_log=0, every=1, mechanisms=False))  # fmt: skip
    with pytest.raises(NonFiniteLoss, match="every member stopped"):
        run(cfg, tmp_path)
    err = capsys.readouterr().err
    assert (
        "member 0 (seed=0): non-finite loss, parameters or optimizer state at step" in err
        and "member 1 (seed=1)" in err
    )
    _, params = final_params(tmp_path, cfg)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_unwritable_output_dir_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="output dir"):
        run(tiny(), blocker / "run")


def test_provenance_names_code_versions_and_devices(reference):
    _, out = reference
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("git_commit", "git_dirty", "versions", "backend", "devices", "xla_flags", "command"):
        assert key in prov, key
    assert {"jax", "flax", "optax", "orbax.checkpoint"} <= set(prov["versions"])


# ---------------------------------------------------------------------------------------- real processes


def _train(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


ARGS = ["experiment=none", "task.n_classes=72", "task.n_holdout=8", "task.D=8", "model.d_model=16",
        "train.steps=600", "train.chunk_steps=10", "probes.n_eval=32", "probes.n_log=4", "probes.every=50",
        "probes.mechanisms=false", "probes.names=[icl_novel,iwl_no_support]",
        "logging.progress=false", "logging.plot=false"]  # fmt: skip


def _checkpoints(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _saving(run_dir: Path) -> bool:
    """Whether a checkpoint is being written (Orbax's temporary directory of a step exists)."""
    d = run_dir / "checkpoints"
    return d.exists() and any(".orbax-checkpoint-tmp" in p.name for p in d.iterdir())


def test_sigkill_three_times_then_resume_equals_uninterrupted_and_sigterm_saves(tmp_path):
    """The first kill lands while a checkpoint is being written in the background, the others at random times
    after a new checkpoint; a SIGTERM saves and stops; the rerun equals the uninterrupted run."""
    ref = _train([*ARGS, "hydra.run.dir=ref"], tmp_path)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    rng = random.Random(0)
    run_dir = tmp_path / "run"
    for i, kill in enumerate((signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM)):
        before = _checkpoints(run_dir)
        proc = _train([*ARGS, "hydra.run.dir=run"], tmp_path)
        deadline = time.time() + 300
        if i == 0:  # during a save: after one checkpoint is complete, while a later one is written
            while not (_checkpoints(run_dir) and _saving(run_dir)) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.002)
            assert proc.poll() is None and time.time() < deadline, "no save in flight was seen before the run ended"
        else:
            while _checkpoints(run_dir) == before and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)  # until this process has saved something new
            time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(kill)
        code = proc.wait(timeout=120)
        if kill == signal.SIGTERM and code != 0:  # 0: it finished before the signal came
            assert code == 143, proc.stderr.read()[-2000:]
            assert "stopped by SIGTERM at step" in proc.stderr.read()
    final = _train([*ARGS, "hydra.run.dir=run"], tmp_path)
    assert final.wait(timeout=600) == 0, final.stderr.read()[-2000:]
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()
    cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
    assert_same_run(tmp_path / "ref", run_dir, cfg)
