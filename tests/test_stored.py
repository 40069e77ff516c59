"""Compiled programs kept on disk: a second Stored of the same program loads it (ahead, with prefetch) instead of
tracing and compiling, gives the same numbers, donates what it is told to, answers output types without tracing,
and falls back to jax.jit where it cannot store."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iclwl.training.compile_cache import use_compile_cache
from iclwl.training.stored import Stored


class Pair(NamedTuple):
    a: jax.Array
    b: jax.Array


@pytest.fixture
def cache(tmp_path):
    use_compile_cache(str(tmp_path))
    yield tmp_path
    use_compile_cache("auto")  # back to the tests' cache directory


def counting():
    traces = []

    def step(state: Pair, x, n: int):
        traces.append(n)
        return Pair(state.a * n + x, state.b + jnp.sum(x)), {"mean": jnp.mean(state.a)}

    return step, traces


def test_a_second_instance_reads_the_program_and_gives_the_same_numbers(cache):
    step, traces = counting()
    state, x = Pair(jnp.arange(4.0), jnp.float32(1)), np.ones(4, np.float32)
    first = Stored(step, "step-v1", static_argnames=("n",))(state, x, n=3)
    assert traces == [3] and len(list(cache.glob("iclwl-program-*.bin"))) == 1
    step, traces = counting()  # as a new process would have it: nothing traced yet
    again = Stored(step, "step-v1", static_argnames=("n",))
    out = again(state, x, n=3)
    assert traces == []  # read, not traced
    jax.tree.map(np.testing.assert_array_equal, out, first)
    assert isinstance(out[0], Pair) and set(out[1]) == {"mean"}
    again(state, x, n=2)  # another static argument: another program
    Stored(step, "step-v2", static_argnames=("n",))(state, x, n=3)  # another key: another program
    again(Pair(jnp.arange(5.0), jnp.float32(1)), np.ones(5, np.float32), n=3)  # other shapes
    assert traces == [2, 3, 3] and len(list(cache.glob("iclwl-program-*.bin"))) == 4


def test_donated_arguments_are_donated_and_compiled_programs_are_the_ones_called(cache):
    step, _ = counting()
    stored = Stored(step, "donate", static_argnames=("n",), donate_argnums=(0,))
    state, x = Pair(jnp.arange(4.0), jnp.float32(1)), np.ones(4, np.float32)
    compiled = stored.compiled(state, x, n=3)
    assert compiled.memory_analysis() is not None
    stored(state, x, n=3)
    assert state.a.is_deleted() and state.b.is_deleted()
    assert stored.compiled(Pair(jnp.arange(4.0), jnp.float32(1)), x, n=3) is compiled


def test_tracers_an_unreadable_file_and_no_cache_fall_back_to_jit(cache):
    step, traces = counting()
    state, x = Pair(jnp.arange(4.0), jnp.float32(1)), np.ones(4, np.float32)
    stored = Stored(step, "fallback", static_argnames=("n",))
    expected = stored(state, x, n=3)
    assert jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda s: stored(s, x, n=3), state)) == jax.tree.map(
        lambda a: a.shape, expected
    )  # inside a transformation: plain jit
    for path in cache.glob("iclwl-program-*.bin"):
        path.write_bytes(b"cut short")
    step, traces = counting()
    out = Stored(step, "fallback", static_argnames=("n",))(state, x, n=3)  # traced again, written anew
    assert traces == [3]
    jax.tree.map(np.testing.assert_array_equal, out, expected)
    step, traces = counting()
    assert Stored(step, "fallback", static_argnames=("n",))(state, x, n=3) is not None and traces == []
    use_compile_cache("off")
    step, traces = counting()
    Stored(step, "fallback", static_argnames=("n",))(state, x, n=3)
    assert traces == [3] and not list(cache.glob("*.tmp"))


def test_other_code_traces_anew(cache, monkeypatch):
    """An edited iclwl or data_gen, or another version of a library that traces, names other programs."""
    from iclwl.training import stored as stored_module

    state, x = Pair(jnp.arange(4.0), jnp.float32(1)), np.ones(4, np.float32)
    Stored(counting()[0], "code", static_argnames=("n",))(state, x, n=3)
    monkeypatch.setattr(stored_module, "_code", lambda: "edited")
    step, traces = counting()
    Stored(step, "code", static_argnames=("n",))(state, x, n=3)
    assert traces == [3] and len(list(cache.glob("iclwl-program-*.bin"))) == 2


def test_prefetch_loads_ahead_and_shapes_need_no_trace(cache):
    state, x = Pair(jnp.arange(4.0), jnp.float32(1)), np.ones(4, np.float32)
    step, traces = counting()
    first = Stored(step, "ahead", static_argnames=("n",))
    expected_shapes = jax.eval_shape(lambda s: step(s, x, 3), state)
    traces.clear()
    expected = first(state, x, n=3)
    step, traces = counting()  # a new process: its program is made, then loaded in the background
    again = Stored(step, "ahead", static_argnames=("n",))
    again.prefetch()
    assert len(again._ahead) == 1
    shapes = again.shapes(state, x, n=3)
    assert jax.tree.structure(shapes) == jax.tree.structure(expected_shapes)
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(shapes)] == [
        (a.shape, a.dtype) for a in jax.tree.leaves(expected_shapes)
    ]
    jax.tree.map(np.testing.assert_array_equal, again(state, x, n=3), expected)
    assert traces == [] and again._ahead == {}  # the call took the loaded program
    step, traces = counting()  # no stored program for these shapes: traced for the types, as jax.eval_shape
    other = Stored(step, "ahead", static_argnames=("n",)).shapes(Pair(jnp.arange(5.0), jnp.float32(1)), x[:1], n=3)
    assert traces == [3] and other[0].a.shape == (5,)


STEP_IN_JAX_CACHE = """
import pickle, sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, {tests!r})
from iclwl.training.compile_cache import use_compile_cache
from iclwl.training.stored import Stored
from test_stored import Pair, counting
use_compile_cache({cache!r})
state, x = Pair(jnp.arange(4.0), jnp.float32(1)), np.ones(4, np.float32)
step, traces = counting()
if sys.argv[1] == "jit":  # JAX's persistent cache gets this program, as from an earlier version of the code
    jax.jit(step, static_argnames=("n",)).lower(state, x, n=3).compile()
    sys.exit()
out = Stored(step, "in-jax-cache", static_argnames=("n",))(state, x, n=3)
print(pickle.dumps((traces, np.asarray(out[0].a), float(out[1]["mean"]))).hex())
"""


def test_a_program_jax_has_cached_is_stored_whole(tmp_path):
    """A program JAX's persistent cache already holds (compiled by plain jit, or by another version of the code)
    is compiled afresh for the store: an executable loaded from JAX's cache and written out again fails in the
    next process that loads it."""
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "step.py"
    script.write_text(STEP_IN_JAX_CACHE.format(tests=str(Path(__file__).parent), cache=str(tmp_path / "cache")))

    def run(mode: str):
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True)
        return pickle.loads(bytes.fromhex(out.stdout.split()[-1])) if out.stdout.strip() else None

    run("jit")
    first = run("stored")  # compiles, while JAX's cache holds the program, and writes it
    second = run("stored")  # loads it and runs it
    assert first[0] == [3] and second[0] == []
    np.testing.assert_array_equal(second[1], first[1])
    assert second[2] == first[2]


def test_the_store_is_bounded_and_keeps_the_programs_used_last(cache, monkeypatch):
    import os
    import time

    from iclwl.training import stored as stored_module

    x = np.ones(4, np.float32)
    for k in range(3):
        Stored(lambda a: a * 2, f"bounded-{k}")(x)
    paths = sorted(cache.glob("iclwl-program-*.bin"), key=lambda p: p.stat().st_mtime)
    assert len(paths) == 3
    old = time.time() - 100
    for i, p in enumerate(paths):
        os.utime(p, (old + i, old + i))
    Stored(lambda a: a * 2, "bounded-0")(x)  # loaded: now the most recently used
    size = paths[0].stat().st_size
    monkeypatch.setattr(stored_module, "STORE_BYTES", int(2.5 * size))
    Stored(lambda a: a * 3, "bounded-3")(x)  # a fourth: the two used least recently go
    left = {p.name for p in cache.glob("iclwl-program-*.bin")}
    assert paths[0].name in left and paths[1].name not in left and paths[2].name not in left and len(left) == 2
