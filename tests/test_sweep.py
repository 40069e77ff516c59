"""Sweeps inside one program: each member of a grid equals its own single run; sharding changes nothing."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from conftest import FAST_COMPILE
from test_training import tiny, train

from data_gen import ConfigError, make_universe
from iclwl.config import OptimConfig, SweepConfig, members, validate_config
from iclwl.run import ensemble_static
from iclwl.training.program import Ensemble, Program, member_inputs
from iclwl.training.sharding import Layout, place

ROOT = Path(__file__).resolve().parents[1]


def test_p_relevant_lr_seed_grid_equals_single_runs():
    base = tiny(task=dataclasses.replace(tiny().task, p_relevant=0.5))
    grid = validate_config(dataclasses.replace(base, sweep=SweepConfig(p_relevant=(0.2, 0.9), lr=(1e-3, 3e-3))))
    coords = members(dataclasses.replace(grid, train=dataclasses.replace(grid.train, seeds=(0, 1))))
    assert len(coords) == 8
    state, out, probes = train(grid, [0, 1], 20)
    for m, c in enumerate(coords):
        one = dataclasses.replace(base, task=dataclasses.replace(base.task, p_relevant=c["p_relevant"]),
                                  optim=OptimConfig(lr=c["lr"]))  # fmt: skip
        s1, o1, p1 = train(one, [c["seed"]], 20)
        jax.tree.map(
            lambda a, b, m=m: np.testing.assert_allclose(a[m], b[0], rtol=2e-5, atol=2e-6), state.params, s1.params
        )
        np.testing.assert_allclose(out.loss[:, m], o1.loss[:, 0], rtol=2e-5)
        np.testing.assert_allclose(probes.acc[m], p1.acc[0])


def test_optimizer_sweep_values_are_checked():
    try:
        validate_config(dataclasses.replace(tiny(), sweep=SweepConfig(lr=(1e-3, -1.0))))
    except ConfigError as e:
        assert e.field == "optim.lr" and "member" in e.rule
    else:
        raise AssertionError("a negative lr in a sweep must be refused")


def test_layout_splits_members_then_batch():
    devices = list(range(8))
    assert Layout.for_members(8, 64, devices).mesh.shape == {"members": 8, "batch": 1}
    assert Layout.for_members(2, 64, devices).mesh.shape == {"members": 2, "batch": 4}
    assert Layout.for_members(3, 64, devices).mesh.shape == {"members": 1, "batch": 8}
    assert Layout.for_members(1, 6, devices).mesh.shape == {"members": 1, "batch": 2}


class FakeDevice:
    def __init__(self, i: int, platform: str):
        self.id, self.platform = i, platform

    def __repr__(self) -> str:
        return f"{self.platform}:{self.id}"


def test_placement_follows_the_step_size_on_cpu_and_splits_everything_on_accelerators():
    cpu = [FakeDevice(i, "cpu") for i in range(2)]
    small, mid, large = 4e7, 4e8, 2e9
    p = place(9, 32, small, devices=cpu)  # small steps: members over both devices, padded to 10, vmap
    assert (p.size, p.layout.mesh.shape, p.loop) == (10, {"members": 2, "batch": 1}, "vmap")
    assert "(and 1 copy of the last as padding)" in p.describe(9) and "0.04 GFLOP" in p.describe(9)
    p = place(1, 32, small, devices=cpu)  # one small member: one device, its batch whole
    assert (p.size, p.layout.mesh.shape, p.loop) == (1, {"members": 1, "batch": 1}, "vmap")
    p = place(8, 64, mid, devices=cpu)
    assert (p.size, p.layout.mesh.shape, p.loop) == (8, {"members": 2, "batch": 1}, "map")
    p = place(1, 64, large, devices=cpu)  # a large step: its batch is split
    assert (p.size, p.layout.mesh.shape, p.loop) == (1, {"members": 1, "batch": 2}, "map")
    p = place(1, 64, None, devices=cpu)  # size unknown: taken as large
    assert (p.layout.mesh.shape, p.loop) == ({"members": 1, "batch": 2}, "map")
    # the settings decide where given
    p = place(1, 64, small, member_loop="map", split_batch=True, devices=cpu)
    assert (p.layout.mesh.shape, p.loop) == ({"members": 1, "batch": 2}, "map")
    p = place(3, 64, None, member_loop="vmap", split_batch=False, devices=cpu)  # no size needed
    assert (p.size, p.layout.mesh.shape, p.loop) == (4, {"members": 2, "batch": 1}, "vmap")
    assert "train.member_loop and train.split_batch given" in p.describe(3)
    gpus = [FakeDevice(i, "gpu") for i in range(8)]
    p = place(2, 64, small, devices=gpus)
    assert (p.size, p.layout.mesh.shape, p.loop) == (2, {"members": 2, "batch": 4}, "vmap")


def test_step_flops_count_the_batch():
    base = tiny()
    flops = []
    for B in (16, 32):
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, batch_size=B))
        st = ensemble_static(cfg)
        flops.append(Ensemble(Program.of(cfg, st)).step_flops(make_universe(st), member_inputs(cfg)[1]))
    assert flops[0] > 0 and 1.9 < flops[1] / flops[0] < 2.1


ARGS = ["experiment=none", "task.n_classes=72", "task.n_holdout=8", "task.D=8", "model.d_model=16",
        "train.steps=40", "train.chunk_steps=10", "probes.n_eval=32", "probes.n_log=2",
        "probes.mechanisms=false", "probes.names=[icl_novel,iwl_no_support]", "logging.progress=false",
        "logging.plot=false", "checkpoint.enabled=false", "train.batch_size=16"]  # fmt: skip


def _run(tmp: Path, name: str, devices: int | None, *extra: str) -> list[dict]:
    """train.py in a process with ``devices`` CPU devices (None: as many as ``train.cpu_devices`` asks for); its
    stdout (with Hydra's log, where JAX notes each compilation) is kept in the run directory."""
    flags = FAST_COMPILE + ("" if devices is None else f" --xla_force_host_platform_device_count={devices}")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled", "XLA_FLAGS": flags, "JAX_LOG_COMPILES": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *ARGS, *extra, f"hydra.run.dir={name}"], cwd=tmp,
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (tmp / name / "stdout.txt").write_text(out.stdout)
    return [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]


def test_members_split_over_8_host_devices_equal_one_device(tmp_path):
    """Fewer members than devices: 2 members on 8 host devices, each member's batch split 4 ways, give the numbers
    of one device. (Members one to a device are checked on 2 devices below.)"""
    one = _run(tmp_path, "one", 1, "train.seeds=[0,1]")
    few = _run(tmp_path, "few", 8, "train.seeds=[0,1]", "train.split_batch=true")
    assert "members split 2 way(s), each member's batch 4 way(s)" in (tmp_path / "few" / "stdout.txt").read_text()
    assert len(one) == len(few) and {r["seed"] for r in few} == {0, 1}
    for x, y in zip(one, few, strict=True):
        assert (x["step"], x["probe"], x["seed"]) == (y["step"], y["probe"], y["seed"])
        np.testing.assert_allclose(x["loss"], y["loss"], rtol=1e-4)


def test_cpu_devices_splits_the_host_saves_resumes_and_gives_the_same_numbers(tmp_path):
    """train.cpu_devices=2 makes two CPU devices (three members padded to four, two on each), the run says so, and
    its programs compile once (a state laid out otherwise than the chunk's output would compile the chunk again).
    With checkpoints on it saves at every evaluation without stalling (it once stopped in an all-reduce at its
    second save), a resume on two devices goes on from step 20, and the numbers are those of one device; members
    run one after another give the numbers of members batched by vmap (the automatic choice for this model)."""
    args = ("train.seeds=[0,1,2]", "probes.every=10")
    one = _run(tmp_path, "one", 1, *args)
    assert "members of a device batched by vmap" in (tmp_path / "one" / "stdout.txt").read_text()
    two_devices = (*args, "train.cpu_devices=2", "train.member_loop=map", "checkpoint.enabled=true")
    _run(tmp_path, "two", None, *two_devices, "train.steps=20")
    log = (tmp_path / "two" / "stdout.txt").read_text()
    assert "3 member(s) (and 1 copy of the last as padding) on 2 device(s): members split 2 way(s)" in log
    # the state keeps its layout: each program compiles once
    compiles = lambda name: log.count(f"Finished XLA compilation of jit({name})")
    assert compiles("_chunk") == 1 and compiles("_evaluate_member") == 1
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["10", "20"]
    two = _run(tmp_path, "two", None, *two_devices, f"train.resume={tmp_path / 'two'}")  # goes on in its own dir
    assert "resuming at step 20" in (tmp_path / "two" / "stdout.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["30", "40"]
    mapped = _run(tmp_path, "mapped", 1, *args, "train.member_loop=map")
    for other in (two, mapped):
        assert len(one) == len(other)
        for x, y in zip(one, other, strict=True):
            assert (x["step"], x["probe"], x["seed"]) == (y["step"], y["probe"], y["seed"])
            np.testing.assert_allclose(x["loss"], y["loss"], rtol=1e-4)
