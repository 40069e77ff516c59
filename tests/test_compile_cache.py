"""JAX's persistent compilation cache (iclwl/training/compile_cache.py): where ``train.compile_cache`` points it, that
it really stores programs (in a fresh process, since a process reads the setting once), and bad directories."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_gen import ConfigError
from iclwl.training.compile_cache import cache_dir, use_compile_cache

ROOT = Path(__file__).resolve().parents[1]


def test_auto_prefers_the_environment_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir("auto") == tmp_path / "env"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("auto") == tmp_path / "xdg" / "iclwl" / "jax"
    assert cache_dir("off") is None
    assert cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"


def _jit_once(setting: str, cwd: Path) -> subprocess.CompletedProcess:
    code = ("import jax, jax.numpy as jnp\nfrom iclwl.training.compile_cache import use_compile_cache\n"
            f"use_compile_cache({setting!r})\n"
            "print(jax.jit(lambda x: x * 3 + 1)(jnp.arange(4.0)).sum())\n")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env |= {"PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cwd / "xdg"), "JAX_RAISE_PERSISTENT_CACHE_ERRORS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_programs_are_stored_and_off_stores_none(tmp_path):
    out = _jit_once(str(tmp_path / "cache"), tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "22.0"
    assert [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("jit_")]  # a sub-second compile too
    off = _jit_once("off", tmp_path)
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "xdg").exists()


def test_a_directory_that_cannot_be_written_is_refused_naming_the_field(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"train\.compile_cache = .*must be 'auto', 'off' or a writable directory"):
        use_compile_cache(str(blocked / "cache"))


@pytest.fixture
def jax_cache_settings():
    """Restores the two settings of JAX's cache a test changes."""
    import jax

    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir")
    saved = {n: getattr(jax.config, n) for n in names}
    yield jax.config
    for n, v in saved.items():
        jax.config.update(n, v)


def test_remembered_numbers_are_computed_once_per_key(jax_cache_settings, tmp_path):
    from iclwl.training.compile_cache import remembered

    jax_cache_settings.update("jax_enable_compilation_cache", True)
    jax_cache_settings.update("jax_compilation_cache_dir", str(tmp_path))
    calls = []

    def compute(value):
        calls.append(value)
        return value

    assert remembered("flops", ("program", 1), lambda: compute(5.0)) == 5.0
    assert remembered("flops", ("program", 1), lambda: compute(6.0)) == 5.0  # read, not computed
    assert remembered("flops", ("program", 2), lambda: compute(None)) is None
    assert calls == [5.0, None]
    (tmp_path / "iclwl-flops.json").write_text('{"cut sh')  # a file cut short is started again
    assert remembered("flops", ("program", 1), lambda: compute(7.0)) == 7.0
    jax_cache_settings.update("jax_enable_compilation_cache", False)  # off: computed every time
    assert remembered("flops", ("program", 1), lambda: compute(8.0)) == 8.0
    assert calls == [5.0, None, 7.0, 8.0]
