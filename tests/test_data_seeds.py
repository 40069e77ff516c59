"""Data seeds: members that redraw their data (prototypes, ranking, holdout split, finite training set) train in one
program exactly as they would alone, carry the data seed as a coordinate, and reports treat it as a seed."""

import dataclasses

import jax
import numpy as np
import pytest
from test_training import TINY_TASK, tiny, train

from data_gen import ConfigError
from iclwl.config import TrainConfig, member_tasks, members, validate_config
from iclwl.report.analysis import combine, find_runs, summarise
from iclwl.run import run
from iclwl.training.program import member_inputs

FINITE = dataclasses.replace(TINY_TASK, N=32)  # a finite set: the data seed redraws it too


def seeded(seeds, data_seeds, steps: int = 30) -> object:
    return tiny(task=FINITE, train=TrainConfig(steps=steps, batch_size=16, chunk_steps=10, seeds=tuple(seeds),
                                               data_seeds=tuple(data_seeds)))  # fmt: skip


def test_members_pair_seeds_with_data_seeds():
    cfg = seeded([0, 1, 0, 1], [0, 0, 1, 1])
    assert members(cfg) == [{"seed": s, "data_seed": d} for s, d in [(0, 0), (1, 0), (0, 1), (1, 1)]]
    assert [t.seed for t in member_tasks(cfg)] == [0, 0, 1, 1]
    assert members(tiny()) == [{"seed": 0}]  # without data seeds: task.seed everywhere, no coordinate
    _, mem = member_inputs(cfg)
    protos = np.asarray(mem.universe.prototypes)  # (4, n_classes, D): one universe per member
    assert np.array_equal(protos[0], protos[1]) and not np.array_equal(protos[0], protos[2])
    assert member_inputs(seeded([0, 1], [3, 3]))[1].universe is None  # one data seed: one shared universe


@pytest.mark.parametrize(
    ("seeds", "data_seeds", "rule"),
    [([0, 1], [0], "one data seed per entry"), ([0, 0], [1, 1], "pair must differ"), ([0], [-1], ">= 0"),
     ([0, 0], [], "seeds must differ")],
)  # fmt: skip
def test_bad_data_seeds_are_refused(seeds, data_seeds, rule):
    with pytest.raises(ConfigError) as e:
        seeded(seeds, data_seeds)
    assert e.value.field in ("train.data_seeds", "train.seeds") and rule in e.value.rule


def test_member_with_own_data_equals_its_single_run():
    """Member 1 of (seed 0, data 5), (seed 0, data 7) has the params, losses and probe results of the run with
    seed 0 and data seed 7 alone (a shared universe); member 0, on other data, differs."""
    cfg = seeded([0, 0], [5, 7])
    both_state, both_out, both_probes = train(cfg, [0, 0], 30)
    alone = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=(0,), data_seeds=(7,)))
    one_state, one_out, one_probes = train(validate_config(alone), [0], 30)
    member = jax.tree.map(lambda a: a[1], both_state.params)
    single = jax.tree.map(lambda a: a[0], one_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member, single)
    np.testing.assert_allclose(both_out.loss[:, 1], one_out.loss[:, 0], rtol=1e-5)
    np.testing.assert_allclose(both_probes.acc[1], one_probes.acc[0])
    assert not np.allclose(both_out.loss[:, 0], both_out.loss[:, 1])


def test_report_averages_over_data_seeds(tmp_path):
    """Two data seeds are two seeds of one setting in the run's rows, summary and report (the program of the test
    above, compiled once)."""
    cfg = seeded([0, 0], [5, 7])
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, enabled=False))
    table = run(cfg, tmp_path)
    assert {t["seeds"] for t in table} == {2} and {t["setting"] for t in table} == {"-"}
    sweep = combine(find_runs(tmp_path))
    assert "data_seed" not in sweep.coords and "task.seed" not in sweep.coords
    assert {r["data_seed"] for r in sweep.rows} == {5, 7}
    assert {t["seeds"] for t in summarise(sweep, ["icl_novel"], 0.1, None)} == {2}
