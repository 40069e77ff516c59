"""Traced programs kept on disk: a second Stored of the same program reads it instead of tracing, gives the same
numbers, donates what it is told to, and falls back to jax.jit where it cannot store."""

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
