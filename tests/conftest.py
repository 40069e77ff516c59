"""Tests run on the CPU, with W&B off, whatever the machine has."""

import os
import shutil
import tempfile

import pytest

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["WANDB_MODE"] = "disabled"
# XLA's backend optimisations off: the tests' programs are tiny and run few steps, so compiling them is most of
# their time, and at level 0 it takes about half as long. Every check here compares runs made with the same flags
# or asserts properties that hold at any level (the processes tests start inherit the flag).
FAST_COMPILE = "--xla_backend_optimization_level=0"
# One CPU device, in this process and in the train.py processes tests start, unless a test asks for more: runs
# would otherwise split the host one device per core (train.cpu_devices), and how many depends on the machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
if FAST_COMPILE not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + FAST_COMPILE
# Tests that run train.py several times with one config (kill and resume, sharded vs not) would compile the same
# programs in every process: JAX's persistent compilation cache, in a directory of this session, shares them
# (train.compile_cache=auto reads this variable; it caches every program, however fast it compiled).
CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="iclwl-test-jax-cache-"))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    if "PYTEST_XDIST_WORKER" in os.environ:  # a worker ends while others still use the directory: the controller cleans
        return
    if os.path.basename(CACHE).startswith("iclwl-test-jax-cache-"):  # ours, not a directory the user gave
        shutil.rmtree(CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A finished run of the tiny config of tests/test_checkpoints.py, which the fault tests compare with."""
    from test_checkpoints import tiny

    from iclwl.run import run

    out = tmp_path_factory.mktemp("ref")
    cfg = tiny()
    run(cfg, out)
    return cfg, out
