"""Placement by measurement: which layouts are candidates, when 'auto' measures, that the fastest one wins and that
the choice is remembered for the next run of the program."""

import dataclasses
import time

import jax
import pytest
from test_groups import parts
from test_sweep import FakeDevice
from test_training import tiny

from data_gen import ConfigError
from iclwl.config import ProbeConfig, from_dict, validate_config
from iclwl.training import trial
from iclwl.training.compile_cache import use_compile_cache
from iclwl.training.groups import fit_groups
from iclwl.training.sharding import place
from iclwl.training.trial import Candidate

CPU2 = [FakeDevice(i, "cpu") for i in range(2)]


def test_candidates_are_the_open_choices_the_rule_made():
    one = place(1, 64, 4e8, devices=CPU2)  # a lone member: its batch split or whole; the loop does not matter
    assert trial.candidates(one, 1, 64, CPU2, "auto", None) == [Candidate("map", False), Candidate("map", True)]
    assert trial.candidates(one, 1, 64, CPU2, "auto", False) == [Candidate("map", False)]
    nine = place(9, 64, 4e7, devices=CPU2)  # 10 members on 2 devices: 5 share each; 9 do not split evenly
    assert trial.candidates(nine, 9, 64, CPU2, "auto", None) == [
        Candidate("vmap", False), Candidate("map", False), Candidate("vmap", True), Candidate("map", True)]  # fmt: skip
    assert trial.candidates(nine, 9, 64, CPU2, "vmap", None) == [Candidate("vmap", False), Candidate("vmap", True)]
    two = place(2, 64, 4e8, devices=CPU2)  # one member a device: nothing to choose
    assert trial.candidates(two, 2, 64, CPU2, "auto", None) == [Candidate("map", False)]


def test_auto_measures_only_near_a_threshold_that_matters_and_for_long_runs():
    split = [Candidate("map", False), Candidate("map", True)]
    loops = [Candidate("vmap", False), Candidate("map", False)]
    assert trial.unsure(3.7e8, split) and not trial.unsure(4e7, split)  # Reddy-sized near 1 GFLOP; Chan 2024 not
    assert trial.unsure(4e7, loops) and not trial.unsure(1e9, loops)  # near 0.1 GFLOP
    assert trial.unsure(None, split) and not trial.unsure(3.7e8, split[:1])
    assert trial.estimated_seconds(3.7e8, 1, 2000, 2) < trial.MIN_SECONDS  # a default-length Reddy run: no
    assert trial.estimated_seconds(3.7e8, 1, 100_000, 2) > trial.MIN_SECONDS  # a long one: yes


class FakeGroups:
    """Stands in for Groups: its chunk takes ``seconds`` a call."""

    def __init__(self, seconds: float, M: int = 2):
        self.seconds, self.M, self.chunk_steps, self.states, self.calls = seconds, M, 10, [], 0

    def train(self, t, stop, n):
        self.calls += 1
        time.sleep(self.seconds)


def test_the_fastest_candidate_wins_and_one_that_does_not_fit_is_left_out():
    slow, fast, huge = Candidate("map", False), Candidate("vmap", False), Candidate("vmap", True)
    made = {slow: FakeGroups(0.02), fast: FakeGroups(0.005), huge: FakeGroups(0.0)}
    best, rates = trial.fastest(made.__getitem__, [slow, fast, huge], trial_steps=10, rounds=3,
                                fits=lambda g: g is not made[huge])  # fmt: skip
    assert best == fast and set(rates) == {"map", "vmap"} and rates["vmap"] > 2 * rates["map"]
    assert made[slow].calls == made[fast].calls == 4 and made[huge].calls == 0  # one untimed call, 3 rounds
    assert "fastest vmap" in trial.describe(best, rates)


def test_a_measured_placement_is_used_and_remembered(tmp_path, monkeypatch):
    """Three members on one device with train.placement=measure: map and vmap are timed, the run's groups take the
    faster, and a second fit of the same program reads the choice instead of timing again."""
    use_compile_cache(str(tmp_path / "cache"))
    try:
        base = tiny(probes=ProbeConfig(n_eval=16, n_log=2, names=("icl_novel",), mechanisms=False))
        cfg = validate_config(dataclasses.replace(base, train=dataclasses.replace(
            base.train, seeds=(0, 1, 2), placement="measure")))  # fmt: skip
        device = jax.devices()[:1]
        groups = fit_groups(*parts(cfg), devices=device)
        assert "measured, member-steps/s: " in groups.describe() and "fastest" in groups.describe()
        assert groups.placement.loop in ("map", "vmap") and groups.layout.mesh.size == 1

        def no_timing(*_, **__):
            raise AssertionError("timed again")

        monkeypatch.setattr(trial, "fastest", no_timing)
        again = fit_groups(*parts(cfg), devices=device)
        assert (again.placement.loop, again.placement.why) == (groups.placement.loop, groups.placement.why)
        rule = validate_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, placement="rule")))
        assert "measured" not in fit_groups(*parts(rule), devices=device).describe()
    finally:
        use_compile_cache("auto")  # back to the tests' cache directory


@pytest.mark.parametrize("value", ["fast", 1])
def test_an_unknown_placement_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match=r"train\.placement"):
        from_dict({"train": {"placement": value}})
