"""Experiment presets: every file composes and validates with its documented member count; debug presets train."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from data_gen import ConfigError
from iclwl.config import from_dict, members, schema_dict
from iclwl.run import run

CONF = Path(__file__).resolve().parents[1] / "conf"
ConfigStore.instance().store(name="iclwl_schema", node=schema_dict())

# members of one program (one job of a multirun), as each file's header comment states
MEMBERS = {
    "icl_vs_iwl": 2,
    "iwl_wins": 1,
    "none": 1,
    "chan2024_n": 135,
    "chan2024_n_debug": 2,
    "chan2024_prelevant": 175,
    "chan2024_prelevant_debug": 2,
    "chan2024_lrelevant": 100,
    "chan2024_phigh": 100,
    "chan2024_n_cpu": 3,
    "chan2024_prelevant_cpu": 8,
    "chan2024_phigh_cpu": 6,
    "chan2024_lrelevant_cpu": 6,
    "singh2023_transient_cpu": 4,
    "reddy2023_bk": 15,
    "reddy2023_bk_debug": 2,
    "reddy2023_eps": 30,
    "reddy2023_alpha": 15,
    "chan2022_bursty": 18,
    "chan2022_bursty_debug": 2,
    "chan2022_zipf": 15,
    "chan2022_exemplars": 3,
    "chan2022_omniglot": 6,
    "chan2022_omniglot_cpu": 2,
    "chan2022_bursty_cpu": 3,
    "chan2022_zipf_cpu": 3,
    "chan2022_exemplars_cpu": 1,
    "reddy2023_bk_cpu": 2,
    "reddy2023_bursty_cpu": 2,
    "reddy2023_interventions_cpu": 3,
}
# settings a preset cannot hold and its user must give: where the data is. Composing and validating never reads it,
# so a placeholder checks the preset on machines without the data
USER_GIVEN = {
    "chan2022_omniglot": ["task.image_path=/path/to/omniglot"],
    "chan2022_omniglot_cpu": ["task.image_path=/path/to/omniglot"],
}
# the multirun commands the headers recommend, one job per value: (preset, overrides, members a job)
MULTIRUN = [
    ("reddy2023_bk", [f"task.B={b}"], 15) for b in (1, 2, 4, 8)
] + [
    ("chan2024_lrelevant", [f"task.L={n}", "sweep.L_relevant=[1]"], 25) for n in (1, 2, 4, 8)
] + [
    ("chan2024_lrelevant", ["task.L=16", "sweep.L_relevant=[1]", "task.n_holdout=17", "task.n_classes=27",
                            "task.n_labels=17"], 25),
] + [
    ("chan2024_lrelevant_cpu", [f"task.L={n}", "sweep.L_relevant=[1]"], 2) for n in (1, 2, 4, 8)
] + [
    ("chan2022_exemplars", [f"task.exemplars={e}"], 3) for e in (0, 1, 20)
] + [
    ("chan2022_omniglot", [f"task.probe_exemplars={p}"], 6) for p in (0, 5)
] + [
    ("reddy2023_bk_cpu", [f"task.B={b}"], 2) for b in (1, 2, 4)
] + [
    ("chan2022_exemplars_cpu", [f"task.exemplars={e}"], 1) for e in (1, 20)
]  # fmt: skip
# one debug preset a paper; each run is compile-bound (as long as the smallest run in test_training.py), so only the
# first runs by default and the others with --runslow
DEBUG_RUN = [
    "chan2024_n_debug",
    pytest.param("reddy2023_bk_debug", marks=pytest.mark.slow),
    pytest.param("chan2022_bursty_debug", marks=pytest.mark.slow),
]


def presets() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def composed(experiment: str, *overrides: str, given: bool = True) -> dict:
    """The preset with ``overrides``, and (``given``) the settings its user must give."""
    extra = USER_GIVEN.get(experiment, []) if given else []
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}", *extra, *overrides])
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def test_every_preset_is_listed():
    assert set(presets()) == set(MEMBERS)


@pytest.mark.parametrize("experiment", presets())
def test_preset_composes_with_its_member_count(experiment):
    cfg = from_dict(composed(experiment))
    assert cfg.name == experiment
    assert len(members(cfg)) == MEMBERS[experiment]
    assert (CONF / "experiment" / f"{experiment}.yaml").read_text().startswith("# @package _global_\n#")


@pytest.mark.parametrize("experiment", sorted(USER_GIVEN))
def test_a_preset_without_the_data_path_says_which_setting_to_give(experiment):
    with pytest.raises(ConfigError) as e:
        from_dict(composed(experiment, given=False))
    assert e.value.field == "task.image_path" and "pass task.image_path=" in e.value.rule


@pytest.mark.parametrize("experiment,overrides,count", MULTIRUN, ids=lambda x: str(x))
def test_multirun_jobs_compose(experiment, overrides, count):
    cfg = from_dict(composed(experiment, *overrides))
    assert len(members(cfg)) == count


def test_debug_presets_are_smaller_versions_of_their_preset():
    for debug in [p for p in presets() if p.endswith("_debug")]:
        full, small = from_dict(composed(debug.removesuffix("_debug"))), from_dict(composed(debug))
        assert small.task == full.task, debug  # the same task; only steps, members and probes shrink
        assert small.train.steps <= 2000 and len(members(small)) <= 2, debug


@pytest.mark.parametrize("experiment", DEBUG_RUN)
def test_debug_preset_trains(experiment, tmp_path):
    data = composed(experiment, "train.steps=5", "train.chunk_steps=5", "probes.n_eval=16", "probes.n_log=1",
                    "checkpoint.enabled=false", "logging.plot=false", "logging.progress=false")  # fmt: skip
    data["optim"]["warmup_steps"] = min(data["optim"]["warmup_steps"], 1)  # must stay below train.steps
    cfg = from_dict(data)
    table = run(cfg, tmp_path)
    assert len(table) == 5 * len(members(cfg))  # a row per setting and probe
    assert (tmp_path / "metrics.jsonl").stat().st_size > 0
