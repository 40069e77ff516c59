"""Compiled programs kept on disk, so that a second run of a program neither traces, lowers nor compiles it.

JAX's persistent compilation cache (``compile_cache.py``) saves the compiling, but to find an entry there JAX must
first trace the function and lower it: for the training chunk and the evaluation of a small model that is most of
a warm start. ``Stored`` is ``jax.jit`` that keeps the compiled executable itself
(``jax.experimental.serialize_executable``) in the cache directory. Its file is named by a hash of

- the program: its description (``key``) and the code that traces it (the sources of ``iclwl`` and ``data_gen``,
  the versions of JAX, Flax, Optax and NumPy), the devices and backend, and the settings that change what XLA
  compiles (``XLA_FLAGS``, ``LIBTPU_INIT_ARGS``, 64-bit mode, matmul precision);
- the call's signature: the static arguments, the inputs' tree structure, and each input's type and placement.

A later call with the same signature, in this process or another, loads the executable instead of compiling it.

Loading still costs something: XLA rebuilds the program from the HLO kept with it, a tenth to a half second for a
tiny model's chunk or evaluation on a CPU. ``prefetch`` starts loading the program's stored executables in
background threads as soon as the program is made, so they load side by side and while the run does other work;
the first call waits for its own.

These programs are compiled by XLA, never taken from JAX's cache (an executable loaded from there cannot be
written out whole again), and kept only here: after an edit of the library's sources they compile again, where JAX's
cache alone would have traced them and found the compiled code. The files are bounded by ``STORE_BYTES``; those
used least recently go first.

Calls inside another transformation (tracers), with the cache off, or with several processes use plain
``jax.jit``; a call whose stored executable cannot be loaded (another version's, cut short) compiles and writes it
anew.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import pickle
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
from jax.experimental import serialize_executable
from jax.experimental.compilation_cache.compilation_cache import reset_cache

log = logging.getLogger(__name__)
PREFETCH = 4  # stored executables of one program loaded ahead, newest first (one per signature the run calls)
STORE_BYTES = 2**30  # beyond this, the stored executables used least recently are removed


@functools.cache
def _code() -> str:
    """A digest of the code a program comes from: the sources of this package and of ``data_gen``, and the
    versions of the libraries that trace it."""
    import flax
    import numpy
    import optax

    import data_gen
    import iclwl

    digest = hashlib.sha256(f"{jax.__version__} {flax.__version__} {optax.__version__} {numpy.__version__}".encode())
    for package in (iclwl, data_gen):
        root = Path(package.__file__).parent
        for source in sorted(root.rglob("*.py")):
            digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _machine() -> str:
    """What besides the program decides the compiled code: the devices, the backend's version and the settings
    that change what XLA compiles."""
    devices = [(str(d), d.device_kind) for d in jax.devices()]
    client = jax.devices()[0].client
    settings = (os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""),
                jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision)  # fmt: skip
    return f"{devices} {client.platform} {client.platform_version} {settings}"


def _directory() -> Path | None:
    if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
        return None
    return Path(jax.config.jax_compilation_cache_dir)


def _spec(x: Any) -> tuple[str, str]:
    """An input's type and where it lives: host, one device (whatever the spec says of a one-device mesh), or the
    sharding over several."""
    if not isinstance(x, jax.Array):
        return str(jax.typeof(x)), "host"
    devices = x.sharding.device_set
    where = f"device {next(iter(devices)).id}" if len(devices) == 1 else repr(x.sharding)
    return str(jax.typeof(x)), where


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@functools.cache
def _loader() -> ThreadPoolExecutor:
    """The threads that load stored executables ahead (XLA releases the GIL while it loads)."""
    return ThreadPoolExecutor(max_workers=min(PREFETCH, os.cpu_count() or 1), thread_name_prefix="iclwl-load")


class Stored:
    """``jax.jit(fun, static_argnames=..., donate_argnums=..., out_shardings=...)`` whose compiled programs are
    kept on disk (see the module's docstring). ``key`` describes everything ``fun`` compiles in besides its
    arguments."""

    def __init__(self, fun: Callable, key: object, *, static_argnames: Sequence[str] = (),
                 donate_argnums: Sequence[int] = (), out_shardings: Any = None):  # fmt: skip
        self.fun, self.key = fun, key
        self.jitted = jax.jit(fun, static_argnames=tuple(static_argnames), donate_argnums=tuple(donate_argnums),
                              out_shardings=out_shardings)  # fmt: skip
        self._calls: dict[Path, jax.stages.Compiled] = {}
        self._ahead: dict[Path, Future] = {}  # executables being loaded by prefetch

    def __call__(self, *args, **static):
        compiled = self._compiled_for(args, static)
        return self.jitted(*args, **static) if compiled is None else compiled(*args)

    def compiled(self, *args, **static) -> jax.stages.Compiled:
        """The compiled program of this call (its ``memory_analysis``): the one later calls run."""
        compiled = self._compiled_for(args, static)
        return self.jitted.lower(*args, **static).compile() if compiled is None else compiled

    def shapes(self, *args, **static) -> Any:
        """The types of the call's results, as ``jax.eval_shape`` gives them; read from the stored executable
        when there is one, so that nothing is traced."""
        path = self._path(args, static)
        stored = _read(path) if path is not None else None
        if stored is None:
            return jax.eval_shape(functools.partial(self.jitted, **static), *args)
        return jax.tree.unflatten(stored["out_tree"], [jax.ShapeDtypeStruct(s, d) for s, d in stored["out"]])

    def prefetch(self) -> None:
        """Start loading this program's stored executables (the most recently written ones) in the background."""
        where = self._where()
        if where is None:
            return
        paths = sorted(where.glob(f"iclwl-program-{self._program}-*.bin"), key=_written, reverse=True)
        for path in paths[:PREFETCH]:
            if path not in self._ahead:
                self._ahead[path] = _loader().submit(_load, path)

    # ---- the stored executables
    @property
    def name(self) -> str:
        """What JAX's compilation log calls the program."""
        return getattr(self.fun, "__name__", "stored")

    @functools.cached_property
    def _program(self) -> str:
        """The hash that names every stored executable of this program."""
        return _hash(f"{self.key!r} {_code()} {_machine()}")

    def _where(self) -> Path | None:
        where = _directory()
        return None if where is None or jax.process_count() > 1 else where

    def _path(self, args: tuple, static: dict) -> Path | None:
        """Where the executable of this call is kept; None where it is not kept (see the module's docstring)."""
        where = self._where()
        leaves, in_tree = jax.tree.flatten(args)
        if where is None or any(isinstance(x, jax.core.Tracer) for x in leaves):
            return None
        signature = (in_tree, tuple(_spec(x) for x in leaves), tuple(sorted(static.items())))
        return where / f"iclwl-program-{self._program}-{_hash(repr(signature))}.bin"

    def _compiled_for(self, args: tuple, static: dict) -> jax.stages.Compiled | None:
        path = self._path(args, static)
        if path is None:
            return None
        if path not in self._calls:
            start = time.perf_counter()
            ahead = self._ahead.pop(path, None)
            compiled = ahead.result() if ahead is not None else _load(path)
            if compiled is not None:
                _say("Waited %.6f sec for stored program %s", time.perf_counter() - start, self.name)
            else:
                compiled = _compile(self.jitted, args, static)
                _write(path, compiled)
            self._calls[path] = compiled
        return self._calls[path]


def _compile(jitted: Any, args: tuple, static: dict) -> jax.stages.Compiled:
    """``jitted`` compiled by XLA for this call, never read from JAX's persistent cache: an executable loaded from
    there cannot be written out whole again (the copy lacks its kernels' machine code and fails at its first call
    in another process). So these programs are kept in our files only, not in JAX's cache as well."""
    jax.config.update("jax_enable_compilation_cache", False)
    reset_cache()  # JAX decides once per process whether its cache is used; ask it again
    try:
        return jitted.lower(*args, **static).compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", True)  # on: _where found a cache directory
        reset_cache()


def _written(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return pickle.loads(path.read_bytes())
    except Exception:  # none yet, another version's file, or one cut short
        return None


def _load(path: Path) -> jax.stages.Compiled | None:
    """The stored executable at ``path``, loaded onto the devices it was compiled for; None where there is none or
    it cannot be loaded (the caller compiles it again and writes it anew)."""
    start = time.perf_counter()
    stored = _read(path)
    if stored is None:
        return None
    try:
        by_id = {d.id: d for d in jax.devices()}
        devices = [by_id[i] for i in stored["devices"]]
        compiled = serialize_executable.deserialize_and_load(stored["executable"], stored["in_tree"],
                                                             stored["out_tree"], execution_devices=devices)  # fmt: skip
    except Exception:
        return None
    _say("Finished loading stored program %s in %.6f sec", path.name, time.perf_counter() - start)
    with contextlib.suppress(OSError):
        os.utime(path)  # used now: kept over older ones when the store is bounded
    return compiled


def _say(message: str, *args: Any) -> None:
    """Logged as JAX logs its compilations: a warning with ``jax_log_compiles`` on, else at debug level."""
    log.log(logging.WARNING if jax.config.jax_log_compiles else logging.DEBUG, message, *args)


def _write(path: Path, compiled: jax.stages.Compiled) -> None:
    try:  # whole or not at all; a cache that cannot be written costs a compilation next time, nothing else
        executable, in_tree, out_tree = serialize_executable.serialize(compiled)
        out = [(s.shape, s.dtype) for s in jax.tree.leaves(compiled.out_info)]
        devices = [d.id for d in compiled.runtime_executable().local_devices()]
        blob = {"executable": executable, "in_tree": in_tree, "out_tree": out_tree, "out": out, "devices": devices}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(blob))
        os.replace(tmp, path)
        _bound(path.parent)
    except Exception:  # any failure to serialize or write must not stop the run
        pass


def _bound(where: Path) -> None:
    """Remove the stored executables used least recently (by time written or loaded) beyond ``STORE_BYTES``."""
    total = 0
    for path in sorted(where.glob("iclwl-program-*.bin"), key=_written, reverse=True):
        try:
            total += path.stat().st_size
            if total > STORE_BYTES:
                path.unlink()
        except OSError:  # removed by another process meanwhile
            pass
