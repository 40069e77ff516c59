"""One ensemble over two processes (JAX's multi-process runtime on this machine, a localhost coordinator, one CPU
device each): the metrics of one process with two devices, written once, by process 0; a stop request to one
process stops both at the same chunk; two processes resume exactly, and so does one process from their
checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_COMPILE

ROOT = Path(__file__).resolve().parents[1]
STEPS = 300
ARGS = ["experiment=none", "task.n_classes=72", "task.n_holdout=8", "task.D=8", "task.L=4", "model.d_model=16",
        "model.n_heads=1", "model.n_layers=1", f"train.steps={STEPS}", "train.chunk_steps=10", "train.batch_size=16",
        "train.seeds=[0,1]", "probes.n_eval=32", "probes.n_log=0", "probes.every=20", "logging.progress=false",
        "logging.plot=false", "wandb.mode=disabled"]  # fmt: skip


def _env() -> dict[str, str]:
    """The tests' environment without their one-device XLA flag: train.cpu_devices decides."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_pair(run_dir: Path) -> list[subprocess.Popen]:
    """Both processes of one run in ``run_dir`` (its own coordinator port), logs beside it."""
    port, procs = _free_port(), []
    for i in range(2):
        log = open(run_dir.with_name(f"{run_dir.name}.p{i}.log"), "a")  # noqa: SIM115  (closed with the process)
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, "train.cpu_devices=1",
                                       f"train.coordinator=localhost:{port}", "train.num_processes=2",
                                       f"train.process_id={i}", f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
                                      env=_env(), stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def log_of(run_dir: Path, i: int) -> str:
    return run_dir.with_name(f"{run_dir.name}.p{i}.log").read_text()


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end and all(p.poll() is None for p in procs), f"{path} never appeared"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """One process with two CPU devices: a member on each, as the two processes place them."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *ARGS, "train.cpu_devices=2",
                          f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, env=_env(), capture_output=True,
                         text=True, timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 member(s) on 2 device(s)" in out.stdout
    return rows(run_dir)


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)  # process 1 wrote nothing: no row twice
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys() and all(g[k] == w[k] for k in ("step", "member", "probe"))
        for k, v in w.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-6, abs=1e-7), (g["step"], g["member"], g["probe"], k)
            else:
                assert g[k] == v


def test_two_processes_train_one_ensemble_and_process_0_writes(reference, tmp_path):
    run_dir = tmp_path / "run"
    procs = start_pair(run_dir)
    assert wait_all(procs) == [0, 0], log_of(run_dir, 0)[-3000:] + log_of(run_dir, 1)[-3000:]
    assert_same_rows(rows(run_dir), reference)
    assert json.loads((run_dir / "provenance.json").read_text())["processes"] == 2
    assert "outputs:" in log_of(run_dir, 0) and "outputs:" not in log_of(run_dir, 1)  # the summary: process 0's
    assert (run_dir / f"checkpoints/{STEPS}/iclwl_digest.json").is_file()


def test_a_stop_request_to_one_process_stops_both_and_killed_ones_resume_exactly(reference, tmp_path):
    run_dir = tmp_path / "run"
    procs = start_pair(run_dir)
    wait_for(run_dir / "checkpoints/20/iclwl_digest.json", procs)
    procs[1].send_signal(signal.SIGTERM)  # as a scheduler preempting one host
    assert wait_all(procs) == [128 + signal.SIGTERM] * 2
    stopped = {line for i in range(2) for line in log_of(run_dir, i).splitlines() if "stopped by SIGTERM" in line}
    assert len(stopped) == 1, stopped  # the same step in both
    step = int(stopped.pop().split("at step ")[1].split(";")[0])
    procs = start_pair(run_dir)  # rerun: resumes there; then both are killed hard at its next checkpoint
    saves = [s for s in range(20, STEPS, 20) if s > step]
    wait_for(run_dir / f"checkpoints/{saves[0]}/iclwl_digest.json", procs)
    assert all(p.poll() is None for p in procs), "the rerun ended before it could be killed"
    for p in procs:
        p.kill()
    wait_all(procs)
    assert log_of(run_dir, 0).count("resuming at step") == 1
    # the last rerun is one process with two devices: a checkpoint of two processes is read into another layout
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *ARGS, "train.cpu_devices=2",
                           f"hydra.run.dir={run_dir}"], cwd=run_dir.parent, env=_env(), capture_output=True,
                          text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0 and "resuming at step" in done.stdout, done.stderr[-3000:]
    assert int(done.stdout.split("resuming at step ")[1].split()[0]) >= saves[0]
    assert_same_rows(rows(run_dir), reference)
