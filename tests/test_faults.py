"""Faults that must cost nothing (docs/runs.md): a diverging member, an unverified or damaged checkpoint, a second
process, a wrong directory, non-finite or oversized settings, a failed write, bad input to every command."""

import dataclasses
import errno
import json
import math
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import jax
import numpy as np
import pytest
from test_checkpoints import ROOT, assert_same_run, final_params, tiny

from data_gen import ConfigError
from iclwl.config import Config, SweepConfig, from_dict, schema_dict
from iclwl.record import checkpoints as checkpoints_module
from iclwl.record.files import MetricsFile, read_metrics
from iclwl.record.rundir import LOCK, RunDirError, RunIOError
from iclwl.run import NonFiniteLoss, run

# ------------------------------------------------------------------------------------------ a diverging member


def test_diverging_member_freezes_and_the_healthy_one_equals_its_run_without_it(tmp_path, capsys):
    """lr 1e6 makes member 1 non-finite within a few steps: it keeps its last good parameters and optimizer
    state, checkpoints go on being written, and member 0 ends exactly as in a run whose member 1 is healthy
    (lr 2e-3: the same compiled program, so the numbers are equal to the bit)."""
    seeds = dataclasses.replace(tiny().train, seeds=(0,))
    bad = tiny(sweep=SweepConfig(lr=(1e-3, 1e6)), train=seeds)
    run(bad, tmp_path / "bad")
    assert "member 1 (seed=0, lr=1000000.0): non-finite" in capsys.readouterr().err
    run(tiny(sweep=SweepConfig(lr=(1e-3, 2e-3)), train=seeds), tmp_path / "good")
    rows = read_metrics(tmp_path / "bad" / "metrics.jsonl")
    healthy = [r for r in rows if r["member"] == 0]
    assert healthy == [r for r in read_metrics(tmp_path / "good" / "metrics.jsonl") if r["member"] == 0]
    stopped = [r["stopped_at"] for r in rows if r["member"] == 1 and r["probe"] == "train"]
    at = next(s for s in stopped if s is not None)
    assert 1 <= at <= 20 and stopped[stopped.index(at) :] == [at] * (len(stopped) - stopped.index(at))
    step, params = final_params(tmp_path / "bad", bad)  # the last step was checkpointed, and loads
    assert step == bad.train.steps and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_every_member_stopping_saves_their_last_good_states_first(tmp_path):
    huge = tiny(optim=dataclasses.replace(tiny().optim, name="sgd", lr=1e30, momentum=0.0))
    with pytest.raises(NonFiniteLoss, match=r"the checkpoint at step \d+ holds each member's last good state"):
        run(huge, tmp_path / "a")
    off = dataclasses.replace(huge, checkpoint=dataclasses.replace(huge.checkpoint, enabled=False))
    with pytest.raises(NonFiniteLoss, match=r"no checkpoint was written \(checkpoint.enabled=false\)"):
        run(off, tmp_path / "b")


# ------------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_without_digest_is_never_trusted(reference, tmp_path):
    """A flipped byte in the newest checkpoint with its digest removed: the step is set aside as unverified and
    the run resumes from the one before, ending exactly as the uninterrupted run."""
    cfg, ref = reference
    run(cfg, tmp_path)
    latest = tmp_path / "checkpoints" / str(cfg.train.steps)
    (latest / checkpoints_module.DIGEST).unlink()
    data = max((f for f in latest.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="it has no digest"):
        run(cfg, tmp_path)
    assert (tmp_path / "checkpoints_unreadable" / str(cfg.train.steps)).is_dir()
    assert_same_run(ref, tmp_path, cfg)


# -------------------------------------------------------------------------------------------- the run directory


def test_a_second_process_on_a_run_directory_is_refused(reference, tmp_path):
    """Another process holds the directory's lock: the run refuses in one line and writes nothing; once that
    process is killed (no clean exit) the lock is gone and the run trains."""
    cfg, ref = reference
    script = (
        f"import fcntl, os, time\nfd = os.open({str(tmp_path / LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid())\n"
        "print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"in use by another process \(pid {holder.pid}\)"):
            run(cfg, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()
    run(cfg, tmp_path)
    assert_same_run(ref, tmp_path, cfg)


def test_resume_must_name_an_existing_run_directory(tmp_path):
    """A resume into a directory that is not a run's leaves every file in it byte-identical; a missing one is
    refused too, and so is a fresh run in a directory holding a metrics.jsonl that no run wrote."""
    other = tmp_path / "notes"
    other.mkdir()
    (other / "metrics.jsonl").write_text("my own numbers\n")
    (other / "readme.txt").write_text("keep me\n")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    cfg = tiny()
    for target in (other, tmp_path / "missing"):
        resume = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=str(target)))
        with pytest.raises(ConfigError, match=r"train\.resume") as e:
            run(resume, tmp_path / "hydra")
        assert "run directory" in e.value.rule
    with pytest.raises(ConfigError, match=r"holds metrics\.jsonl but no config\.json"):
        run(cfg, other)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    assert not (tmp_path / "missing").exists()


# ----------------------------------------------------------------------------------------------- bad settings


def _float_fields(cls, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out += _float_fields(tp, f"{prefix}{f.name}.")
        elif tp in (float, float | None):
            out.append(f"{prefix}{f.name}")
    return out


FLOATS = _float_fields(Config)


def test_every_number_field_refuses_infinity_and_nan():
    assert {"task.alpha", "task.noise_scale", "optim.lr", "model.mlp_ratio", "train.memory_fraction"} <= set(FLOATS)
    for name in FLOATS:
        for bad in (math.inf, -math.inf, math.nan):
            data = schema_dict()
            group, key = name.split(".")
            data[group][key] = bad
            with pytest.raises(ConfigError) as e:
                from_dict(data)
            assert e.value.field == name and "finite" in e.value.rule, name
    data = schema_dict()
    data["sweep"]["lr"] = [1e-3, math.inf]
    with pytest.raises(ConfigError, match="finite"):
        from_dict(data)


def test_a_class_universe_too_large_for_memory_is_refused_at_once(tmp_path):
    huge = tiny(task=dataclasses.replace(tiny().task, n_classes=10**9))
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
        run(huge, tmp_path)
    assert e.value.field == "task.n_classes" and "GiB" in e.value.rule
    assert time.monotonic() - start < 30 and not (tmp_path / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------------- I/O failures


def test_disk_full_while_checkpointing_is_one_line_and_a_rerun_resumes_exactly(reference, tmp_path, monkeypatch):
    """The third checkpoint's writer finds the disk full: one line naming the path and the cause; the older
    checkpoints and the rows up to the failed save stay; after that the rerun resumes exactly."""
    cfg, ref = reference
    manager = checkpoints_module.ocp.CheckpointManager
    real_save, calls = manager.save, []

    def failing_save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory / f"{step}.orbax-checkpoint-tmp"))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(manager, "save", failing_save)
    with pytest.raises(RunIOError) as e:
        run(cfg, tmp_path)
    assert "No space left on device" in str(e.value) and str(tmp_path / "checkpoints") in str(e.value)
    assert "\n" not in str(e.value)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows and max(r["step"] for r in rows) == calls[-1]
    monkeypatch.undo()
    run(cfg, tmp_path)
    assert_same_run(ref, tmp_path, cfg)


def test_a_save_that_fails_in_the_background_ends_the_run_and_a_rerun_resumes_exactly(reference, tmp_path,
                                                                                        monkeypatch):  # fmt: skip
    """Checkpoints are written in the background: the second one fails after training went on (here: while its
    digest is written). The run ends at its next save with one line naming that checkpoint; the first one stays
    good, and the rerun resumes from it exactly."""
    cfg, ref = reference
    real_digest, calls = checkpoints_module._digest, []

    def failing_digest(step_dir):
        calls.append(step_dir.name)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(step_dir / "state"))
        return real_digest(step_dir)

    monkeypatch.setattr(checkpoints_module, "_digest", failing_digest)
    with pytest.raises(RunIOError) as e:
        run(cfg, tmp_path)
    assert f"checkpoint at step {calls[1]} not written" in str(e.value) and "No space left" in str(e.value)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=f"checkpoint at step {calls[1]} is unreadable .*no digest"):
        run(cfg, tmp_path)
    assert_same_run(ref, tmp_path, cfg)


def test_a_failed_metrics_write_is_one_line_and_a_rerun_resumes_exactly(reference, tmp_path, monkeypatch):
    cfg, ref = reference
    real_write, calls = MetricsFile.write, []

    def failing_write(self, rows):
        calls.append(1)
        if len(calls) == 4:
            self.file.write(json.dumps(rows[0])[:20])  # half a line reached the disk
            self.file.flush()
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_write(self, rows)

    monkeypatch.setattr(MetricsFile, "write", failing_write)
    with pytest.raises(RunIOError, match=r"metrics\.jsonl: Read-only file system"):
        run(cfg, tmp_path)
    read_metrics(tmp_path / "metrics.jsonl")  # still parseable
    monkeypatch.undo()
    run(cfg, tmp_path)
    assert_same_run(ref, tmp_path, cfg)


# --------------------------------------------------------------------------------------------------- commands


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "says"),
    [([str(ROOT / "train.py"), "train.stpes=10"], "config error: Could not override 'train.stpes'"),
     ([str(ROOT / "train.py"), "experiment=no_such"], "Could not find 'experiment/no_such'"),
     ([str(ROOT / "train.py"), "task.alpha=inf"], "task.alpha = inf: must be a finite number"),
     ([str(ROOT / "train.py"), "train.distributed=on"], "train.distributed = 'on': could not join the other"),
     (["-m", "iclwl.cli.reference", "experiment=no_such"], "Could not find 'experiment/no_such'"),
     (["-m", "iclwl.cli.reference", "--out", "no/such/dir/x.jsonl"], "--out = no/such/dir/x.jsonl"),
     (["-m", "iclwl.cli.reproduce", "no_such"], "unknown")],
)  # fmt: skip
def test_bad_input_to_a_command_is_one_line_and_exit_2(tmp_path, args, says):
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_report_reads_rows_holding_lists(tmp_path):
    """A field holding a list (a per-head measure a newer version added, say) is no coordinate: the report runs."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"task": {"n_labels": 4}}))
    rows = [{"step": s, "member": 0, "probe": "icl_novel", "acc": 0.25 * s, "loss": 1.0, "seed": 0,
             "new_per_head": [0.1, 0.2]} for s in range(3)]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = _cli("-m", "iclwl.cli.report", str(run_dir), "--probes", "icl_novel", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| - | icl_novel | 0.500 ± 0.000 |" in done.stdout
