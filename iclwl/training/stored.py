"""Traced programs kept on disk, so that a second run of a program neither traces nor compiles it.

JAX's persistent compilation cache (``compile_cache.py``) saves the compiling, but JAX must still trace a function
to find its entry there: for the training chunk and the evaluation of a small model, tracing is most of a warm
start (seconds, where loading the compiled code takes milliseconds). ``Stored`` is ``jax.jit`` that also keeps the
traced program, exported with ``jax.export`` (StableHLO with the shapes and shardings of its inputs and outputs), in
the cache directory. Its file is named by a hash of the program's description (``key``), the call's static
arguments, the tree structure of the inputs and each input's type and sharding, the devices, and the code that
traced it (the sources of ``iclwl`` and ``data_gen`` and the versions of JAX, Flax, Optax and NumPy: an edited or
upgraded library traces anew). A later call with the same signature, in this process or another, loads the
program instead of tracing it, and its compiled code from the persistent cache.

Arguments and results cross the exported program as flat lists of arrays; their tree structures are pickled beside
it. Calls inside another transformation (tracers), with the cache off, or with several processes use plain
``jax.jit``; so does a call whose stored program cannot be read back (written by another version, cut short).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax


@functools.cache
def _code() -> str:
    """A digest of the code a traced program comes from: the sources of this package and of ``data_gen``, and the
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


def _struct(x: Any) -> jax.ShapeDtypeStruct:
    sharding = x.sharding if isinstance(x, jax.Array) else None
    aval = jax.typeof(x)
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, sharding=sharding, weak_type=aval.weak_type)


class Stored:
    """``jax.jit(fun, static_argnames=..., donate_argnums=..., out_shardings=...)`` whose traced programs are kept on
    disk (see the module's docstring). ``key`` describes everything ``fun`` compiles in besides its arguments."""

    def __init__(self, fun: Callable, key: object, *, static_argnames: Sequence[str] = (),
                 donate_argnums: Sequence[int] = (), out_shardings: Any = None):  # fmt: skip
        self.fun, self.key, self.donate = fun, key, tuple(donate_argnums)
        self.jitted = jax.jit(fun, static_argnames=tuple(static_argnames), donate_argnums=self.donate,
                              out_shardings=out_shardings)  # fmt: skip
        self._calls: dict[tuple, tuple[jax.stages.Compiled, Any]] = {}

    def __call__(self, *args, **static):
        call = self._call_for(args, static)
        if call is None:
            return self.jitted(*args, **static)
        executable, out_tree = call
        return jax.tree.unflatten(out_tree, executable(*jax.tree.leaves(args)))

    def compiled(self, *args, **static) -> jax.stages.Compiled:
        """The compiled program of this call (its ``memory_analysis``): the one later calls run."""
        call = self._call_for(args, static)
        return self.jitted.lower(*args, **static).compile() if call is None else call[0]

    # ---- the stored programs
    @property
    def name(self) -> str:
        """What JAX's compilation log calls the program."""
        return getattr(self.fun, "__name__", "stored")

    def _call_for(self, args: tuple, static: dict) -> tuple[jax.stages.Compiled, Any] | None:
        where = _directory()
        leaves, in_tree = jax.tree.flatten(args)
        if where is None or jax.process_count() > 1 or any(isinstance(x, jax.core.Tracer) for x in leaves):
            return None
        signature = (in_tree, tuple(_spec(x) for x in leaves), tuple(sorted(static.items())))
        if signature not in self._calls:
            text = f"{self.key!r} {signature!r} {_code()} {[str(d) for d in jax.devices()]}"
            path = where / f"iclwl-program-{hashlib.sha256(text.encode()).hexdigest()[:32]}.bin"
            exported = _read(path) or self._export(args, static, path)
            self._calls[signature] = self._runner(exported, args)
        return self._calls[signature]

    def _export(self, args: tuple, static: dict, path: Path) -> tuple[Any, Any]:
        leaves, in_tree = jax.tree.flatten(args)
        out_trees = []

        def flat(*xs):
            ys, tree = jax.tree.flatten(self.jitted(*jax.tree.unflatten(in_tree, xs), **static))
            out_trees.append(tree)
            return ys

        flat.__name__ = self.name
        exported = jax.export.export(jax.jit(flat))(*[_struct(x) for x in leaves])
        _write(path, exported, out_trees[0])
        return exported, out_trees[0]

    def _runner(self, stored: tuple[Any, Any], args: tuple) -> tuple[jax.stages.Compiled, Any]:
        """The compiled call of a stored program (from the persistent cache when it is there), donating the leaves
        of the donated arguments."""
        exported, out_tree = stored
        counts = [len(jax.tree.leaves(a)) for a in args]
        starts = [sum(counts[:i]) for i in range(len(args))]
        donated = tuple(j for i in self.donate for j in range(starts[i], starts[i] + counts[i]))

        def call(*xs):
            return exported.call(*xs)

        call.__name__ = self.name
        leaves = [_struct(x) for x in jax.tree.leaves(args)]
        return jax.jit(call, donate_argnums=donated).lower(*leaves).compile(), out_tree


def _read(path: Path) -> tuple[Any, Any] | None:
    try:
        blob = pickle.loads(path.read_bytes())
        return jax.export.deserialize(bytearray(blob["program"])), blob["out_tree"]
    except Exception:  # none yet, another version's file, or one cut short: trace again and write it anew
        return None


def _write(path: Path, exported: Any, out_tree: Any) -> None:
    try:  # whole or not at all; a cache that cannot be written costs a trace next time, nothing else
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps({"program": bytes(exported.serialize()), "out_tree": out_tree}))
        os.replace(tmp, path)
    except Exception:  # any failure to serialize or write must not stop the run
        pass
