"""Cluster launchers (conf/hydra/launcher/): they compose, the SLURM one writes the batch script we mean, and a
two-job submitit_local multirun trains (slow: run with --runslow). Needs hydra-submitit-launcher (iclwl[slurm])."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=none", "train.steps=10", "train.chunk_steps=10", "probes.n_eval=16", "probes.n_log=0",
        "probes.every=10", "logging.progress=false", "logging.plot=false", "checkpoint.enabled=false",
        "model.n_layers=1", "model.d_model=16"]  # fmt: skip


def train(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    environ = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("launcher,target", [("slurm", "SlurmLauncher"), ("local", "LocalLauncher")])
def test_launcher_configs_compose(launcher, target):
    hydra_cfg = train(f"hydra/launcher={launcher}", "--cfg", "hydra")
    assert hydra_cfg.returncode == 0, hydra_cfg.stderr
    assert f"submitit_launcher.{target}" in hydra_cfg.stdout
    job = train(f"hydra/launcher={launcher}", "--cfg", "job")
    assert job.returncode == 0, job.stderr
    assert "wandb:" in job.stdout and "mode: disabled" in job.stdout


def test_slurm_batch_script_sets_xla_and_the_compilation_cache(tmp_path):
    """With stand-ins for srun and sbatch (which keeps the script and refuses it), nothing is submitted or trained."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" {tmp_path}/script.sh\nexit 1\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    out = train("-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu_test", f"hydra.sweep.dir={tmp_path}/sweep",
                "task.L=4,8", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})  # fmt: skip
    assert out.returncode != 0  # the stand-in sbatch refused
    script = (tmp_path / "script.sh").read_text()
    assert "#SBATCH --array=0-1%" in script and "#SBATCH --partition=gpu_test" in script
    assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --time=240" in script
    setup = script.split("# setup", 1)[1].split("# command", 1)[0]
    assert "export XLA_PYTHON_CLIENT_PREALLOCATE=true" in setup and "export XLA_PYTHON_CLIENT_MEM_FRACTION=" in setup
    assert 'export JAX_COMPILATION_CACHE_DIR="$SLURM_SUBMIT_DIR/.jax_cache"' in setup


@pytest.mark.slow  # two tiny trainings in parallel: about 2 min on the shared 2-core development machine
def test_local_multirun_trains_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    out = train("-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", *TINY, "task.L=4,8",
                env={"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert (sweep / "multirun.yaml").exists()
    for job, length in ((0, 4), (1, 8)):
        assert json.loads((sweep / str(job) / "config.json").read_text())["task"]["L"] == length
        rows = (sweep / str(job) / "metrics.jsonl").read_text().splitlines()
        assert {json.loads(r)["step"] for r in rows} == {0, 10}
    assert any((tmp_path / "cache").iterdir())  # the jobs inherited the cache directory from this environment
