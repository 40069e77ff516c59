"""A grid run as consecutive groups of members equals the grid run as one program; the split is by measured memory."""

import dataclasses
import json

import numpy as np
import pytest
from test_training import tiny

from data_gen import ConfigError, make_universe
from iclwl.config import ProbeConfig, SweepConfig, TrainConfig, members, validate_config
from iclwl.record.measures import MECHANISM_LISTS, MECHANISM_SCALARS
from iclwl.run import ensemble_static, run
from iclwl.training.groups import Groups, fit_groups
from iclwl.training.program import member_inputs


def grid(**train) -> object:
    """6 members (p_relevant x 3 seeds), two probes: every test here reuses the programs compiled for 6, 3 and 4."""
    base = tiny(task=dataclasses.replace(tiny().task, p_relevant=0.5))
    cfg = dataclasses.replace(base, sweep=SweepConfig(p_relevant=(0.2, 0.9)),
                              probes=ProbeConfig(n_eval=32, n_log=2, names=("icl_novel", "iwl_no_support")),
                              train=dataclasses.replace(base.train, seeds=(0, 1, 2), **train))  # fmt: skip
    return validate_config(cfg)


def parts(cfg):
    st = ensemble_static(cfg)
    init, mem = member_inputs(cfg)
    return cfg, st, make_universe(st), init, mem


def rows(path) -> list[dict]:
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_groups_give_the_numbers_of_one_program(tmp_path, capsys):
    run(grid(), tmp_path / "whole")
    run(grid(max_members=4), tmp_path / "split")  # 6 members as 2 groups of 3 (balanced: no padding)
    assert "6 members as 2 consecutive groups of 3" in capsys.readouterr().out
    a, b = rows(tmp_path / "whole"), rows(tmp_path / "split")
    assert len(a) == len(b) > 0
    measured = {"acc", "loss", *MECHANISM_SCALARS, *MECHANISM_LISTS}
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k not in measured} == {k: v for k, v in y.items() if k not in measured}
        if x["loss"] is not None:
            np.testing.assert_allclose(x["loss"], y["loss"], rtol=1e-4)
            np.testing.assert_allclose(x["acc"], y["acc"], atol=1 / 32 + 1e-9)  # at most one probe answer flips
        for k in (*MECHANISM_SCALARS, *MECHANISM_LISTS):  # attention: round-off; answer shares: one flip
            if k in x or k in y:
                np.testing.assert_allclose(np.array(x[k], float), np.array(y[k], float), atol=1 / 32 + 1e-4)
    assert {(r["seed"], r["p_relevant"]) for r in a} == {(c["seed"], c["p_relevant"]) for c in members(grid())}

    cfg, st, uni, init, mem = parts(grid())
    g = Groups(cfg, st, uni, init, mem, size=4)  # 2 groups of 4: the last repeats member 5 twice
    assert [list(i) for i in g.index] == [[0, 1, 2, 3], [4, 5, 5, 5]]
    for t in range(0, cfg.train.steps, cfg.train.chunk_steps):
        g.train(t, t + cfg.train.chunk_steps, n=cfg.train.chunk_steps)
    assert g.state().health.alive.shape == (6,)
    final = {(r["member"], r["probe"]): r["acc"] for r in a if r["step"] == cfg.train.steps}
    acc = g.evaluate().acc  # (6, 2)
    for m in range(6):
        for p, name in enumerate(cfg.probes.names):
            assert abs(acc[m, p] - final[(m, name)]) <= 1 / 32 + 1e-9


def test_a_grid_too_large_for_memory_is_split(capsys):
    cfg, st, uni, init, mem = parts(grid())
    need = fit_groups(cfg, st, uni, init, mem, free=2**60).bytes_needed(cfg.train.chunk_steps)  # all 6 at once
    assert need and need > 0
    free = int(need * 0.55 / cfg.train.memory_fraction)  # room for about half the grid
    g = fit_groups(cfg, st, uni, init, mem, free=free)
    assert (g.count, g.size) == (2, 3)
    said = capsys.readouterr().out
    assert "6 members in one program would need" in said and "2 consecutive groups of 3" in said
    assert fit_groups(cfg, st, uni, init, mem, free=10 * need).count == 1  # enough room: one program, no message
    assert capsys.readouterr().out == ""


def test_a_member_that_cannot_fit_is_refused_naming_the_setting_that_needs_the_memory():
    cfg, st, uni, init, mem = parts(grid())
    with pytest.raises(ConfigError) as e:
        fit_groups(cfg, st, uni, init, mem, free=1000)
    assert e.value.field == "train.batch_size" and "GiB" in e.value.rule and "training chunk" in e.value.rule
    big_probes = dataclasses.replace(grid(), probes=dataclasses.replace(grid().probes, n_eval=20000))
    cfg, st, uni, init, mem = parts(big_probes)
    with pytest.raises(ConfigError) as e:
        fit_groups(cfg, st, uni, init, mem, free=1000)
    assert e.value.field == "probes.n_eval" and e.value.value == 20000 and "probe sets" in e.value.rule


def test_group_settings_are_checked():
    for bad in (dict(max_members=-1), dict(memory_fraction=0.0), dict(memory_fraction=1.5)):
        with pytest.raises(ConfigError) as e:
            validate_config(dataclasses.replace(tiny(), train=TrainConfig(**bad)))
        assert e.value.field == f"train.{next(iter(bad))}"
