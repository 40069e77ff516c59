"""data_gen.validate: every impossible TaskSpec is refused with a ConfigError naming the field and the bad value."""

from __future__ import annotations

import dataclasses
import math

import pytest

import data_gen
from data_gen.presets import PRESETS, preset

BASE = data_gen.TaskSpec()  # Reddy-like defaults: L=8, B=2, 32 modulo labels, 576 classes of which 64 held out
CHAN22 = preset("chan2022")  # 3-shot 2-way bursts, identity labels
CHAN24 = preset("chan2024")  # two frequency groups, K = 10, n_high = 5, p_relevant = 0.9


def spec(base: data_gen.TaskSpec = BASE, **changes) -> data_gen.TaskSpec:
    return dataclasses.replace(base, **changes)


# (id, spec, expected field, bad value)
BAD = [
    # context length and relevance
    ("L_relevant>L", spec(p_relevant=0.5, L_relevant=9), "L_relevant", 9),
    ("L_relevant=0", spec(p_relevant=0.5, L_relevant=0), "L_relevant", 0),
    ("L_relevant_without_p_relevant", spec(L_relevant=3), "L_relevant", 3),
    ("L=0", spec(L=0), "L", 0),
    # probabilities outside [0, 1]
    ("p_bursty>1", spec(p_bursty=1.5), "p_bursty", 1.5),
    ("p_bursty<0", spec(p_bursty=-0.1), "p_bursty", -0.1),
    ("p_bursty=nan", spec(p_bursty=math.nan), "p_bursty", math.nan),
    ("p_relevant>1", spec(p_relevant=1.2), "p_relevant", 1.2),
    ("p_relevant<0", spec(p_relevant=-0.5), "p_relevant", -0.5),
    ("p_high>1", spec(CHAN24, p_high=1.01), "p_high", 1.01),
    ("p_high<0", spec(CHAN24, p_high=-0.2), "p_high", -0.2),
    ("p_novel>1", spec(p_novel=2.0), "p_novel", 2.0),
    ("p_novel<0", spec(p_novel=-0.01), "p_novel", -0.01),
    ("label_noise>1", spec(label_noise=1.5), "label_noise", 1.5),
    ("label_noise<0", spec(label_noise=-1.0), "label_noise", -1.0),
    # class pool
    ("n_holdout=n_classes", spec(n_holdout=576), "n_holdout", 576),
    ("n_holdout>n_classes", spec(n_holdout=600), "n_holdout", 600),
    ("n_holdout<0", spec(n_holdout=-1), "n_holdout", -1),
    ("n_holdout_too_few_for_icl_probes", spec(n_holdout=3), "n_holdout", 3),  # Reddy bursts need L/B = 4
    ("K>n_classes-n_holdout", spec(K=513), "K", 513),
    ("K=0", spec(K=0), "K", 0),
    ("K<0", spec(K=-4), "K", -4),
    ("K_below_classes_a_burst_needs", spec(K=3), "K", 3),  # L/B = 4 distinct classes a bursty sequence
    ("n_classes=1", spec(n_classes=1, n_holdout=0), "n_classes", 1),
    # labels
    ("n_labels=1", spec(n_labels=1), "n_labels", 1),
    ("n_labels=0", spec(n_labels=0), "n_labels", 0),
    ("modulo_2polysemy>n_labels", spec(polysemy=17), "polysemy", 17),
    ("polysemy=0", spec(polysemy=0), "polysemy", 0),
    ("identity_n_labels<train_classes", spec(label_map="identity", n_labels=100), "n_labels", 100),
    ("identity_n_labels<classes*polysemy", spec(CHAN22, polysemy=2), "n_labels", 1600),
    ("random_polysemy>1", spec(label_map="random", polysemy=2), "polysemy", 2),
    ("random_n_labels<L+1", spec(label_map="random", n_labels=8), "n_labels", 8),
    # burst forms
    ("B_not_dividing_L", spec(B=3), "B", 3),
    ("B=0", spec(B=0), "B", 0),
    ("chan2022_shots*ways>L", spec(CHAN22, shots=5), "shots", 5),
    ("chan2022_shots=0", spec(CHAN22, shots=0), "shots", 0),
    ("chan2022_ways=0", spec(CHAN22, ways=0), "ways", 0),
    # other dynamic knobs
    ("N=0", spec(N=0), "N", 0),
    ("N<0", spec(N=-5), "N", -5),
    ("alpha<0", spec(alpha=-0.5), "alpha", -0.5),
    ("noise_scale<0", spec(noise_scale=-0.1), "noise_scale", -0.1),
    ("distance=0", spec(distance=0), "distance", 0),
    ("distance>L", spec(distance=9), "distance", 9),
    ("two_group_n_high=K", spec(CHAN24, n_high=10), "n_high", 10),
    ("two_group_n_high>K", spec(CHAN24, K=6, n_high=6), "n_high", 6),
    ("two_group_n_high=0", spec(CHAN24, n_high=0), "n_high", 0),
    ("exemplars<0", spec(exemplars=-1), "exemplars", -1),
    ("D=0", spec(D=0), "D", 0),
    ("seed<0", spec(seed=-1), "seed", -1),
    # wrong types
    ("L=2.5", spec(L=2.5), "L", 2.5),
    ("L=True", spec(L=True), "L", True),
    ("K=4.0", spec(K=4.0), "K", 4.0),
    ("N='4'", spec(N="4"), "N", "4"),
    ("p_bursty='0.5'", spec(p_bursty="0.5"), "p_bursty", "0.5"),
    ("alpha=False", spec(alpha=False), "alpha", False),
    ("label_map=bogus", spec(label_map="bogus"), "label_map", "bogus"),
    ("prototype=x", spec(prototype="x"), "prototype", "x"),
    ("noise=gauss", spec(noise="gauss"), "noise", "gauss"),
    ("burst_form=omniglot", spec(burst_form="omniglot"), "burst_form", "omniglot"),
    ("frequency=powerlaw", spec(frequency="powerlaw"), "frequency", "powerlaw"),
    ("placement=None", spec(placement=None), "placement", None),
]


def test_bad_cases_are_distinct():
    assert len(BAD) >= 24
    assert len({case[0] for case in BAD}) == len(BAD)
    assert len({case[1] for case in BAD}) == len(BAD)


@pytest.mark.parametrize(("bad", "field", "value"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_refused(bad: data_gen.TaskSpec, field: str, value: object):
    with pytest.raises(data_gen.ConfigError) as info:
        data_gen.validate(bad)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == f"task.{field}"
    assert err.value is value or err.value == value or (value != value and err.value != err.value)
    message = str(err)
    assert message.startswith(f"task.{field} = {value!r}: ")  # names field and value, then the rule
    assert len(message) > len(f"task.{field} = {value!r}: ") + 5


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name: str):
    task = preset(name)
    assert data_gen.validate(task) is task


@pytest.mark.parametrize(
    "good",
    [
        BASE,
        spec(p_relevant=0.0, L_relevant=8),  # boundaries are allowed
        spec(p_relevant=1.0, L_relevant=1, p_bursty=0.0),
        spec(p_bursty=0.0, p_novel=1.0, label_noise=1.0, alpha=0.0, noise_scale=0.0),
        spec(K=4, distance=8, N=1),  # K = L/B is just enough for a Reddy burst
        spec(n_holdout=4),  # just enough holdout classes for the ICL probes
        spec(polysemy=16),
        spec(label_map="random", n_labels=9),
        spec(B=8),
        spec(CHAN22, shots=4),
        spec(CHAN24, n_high=9),
        spec(CHAN24, n_high=1, p_high=1.0),
    ],
)
def test_boundaries_accepted(good: data_gen.TaskSpec):
    assert data_gen.validate(good) is good
