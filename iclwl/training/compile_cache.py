"""JAX's persistent compilation cache, on by default: a second run of the same programs loads them from disk.

``train.compile_cache`` chooses the directory:

- ``auto`` (default): ``$JAX_COMPILATION_CACHE_DIR`` when set (the SLURM launcher sets it to a directory every
  node sees), else ``$XDG_CACHE_HOME/iclwl/jax`` (``~/.cache/iclwl/jax``);
- ``off``: no persistent cache (each process compiles again);
- any other value: that directory.

Every program is cached, however quickly it compiled (a tiny model's programs compile in well under JAX's
default threshold of one second, and there are several of them). The directory is bounded (least recently used
entries go first) unless ``JAX_COMPILATION_CACHE_MAX_SIZE`` says otherwise. Like the CPU device count, the cache
applies when set before the process compiles anything; ``iclwl.run`` sets it first.

The initialisation, the training chunk and the evaluation are kept there as compiled executables of their own
(``iclwl.training.stored``: ``iclwl-program-*.bin``, bounded apart from JAX's entries), so a second run neither
traces nor compiles them. So is what costs a trace or a measurement to find
(``remembered``: the FLOP count of a member's step that placement reads, and the layout ``train.placement``
measured fastest), so a second run of a program does not trace or time it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from data_gen import ConfigError

MAX_BYTES = 2 * 2**30  # least recently used entries are dropped beyond this


def cache_dir(setting: str) -> Path | None:
    """The directory ``setting`` names (None: off)."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "iclwl" / "jax"


def use_compile_cache(setting: str) -> Path | None:
    """Point JAX's persistent cache at ``cache_dir(setting)`` (made if missing); returns it. A directory that
    cannot be made or written is refused here, naming ``train.compile_cache``, before anything compiles."""
    where = cache_dir(setting)
    if where is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
        writable = os.access(where, os.W_OK | os.X_OK)
        why = "permission denied"
    except OSError as e:
        writable, why = False, e.strerror
    if not writable:
        raise ConfigError("train.compile_cache", setting, f"must be 'auto', 'off' or a writable directory "
                          f"({where}: {why})")  # fmt: skip
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return where


def remembered(name: str, key: object, compute: Callable[[], Any]) -> Any:
    """``compute()`` (a JSON value), kept in ``<cache dir>/iclwl-<name>.json`` under ``key`` (its repr, with JAX's
    version and backend): a later call with an equal key reads it instead. Computed every time when the cache is
    off."""
    where = jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
    if not where:
        return compute()
    path = Path(where) / f"iclwl-{name}.json"
    text = f"{key!r} jax {jax.__version__} {jax.default_backend()}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or a file cut short: start again
        table = {}
    if digest in table:
        return table[digest]
    value = compute()
    table[digest] = value
    try:  # whole or not at all; two processes writing at once lose an entry, not the file
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written costs a trace next time, nothing else
    return value
