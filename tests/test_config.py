"""Configuration: every conf file composes and validates; bad input stops with field, value and rule."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from data_gen import ConfigError, TaskSpec, validate
from data_gen.presets import PRESETS
from iclwl.config import from_dict, members, schema_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ConfigStore.instance().store(name="iclwl_schema", node=schema_dict())


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        if not any(o.startswith("experiment=") for o in overrides):
            overrides = ("experiment=none", *overrides)  # the bare defaults, without the default experiment
        cfg = compose(config_name="config", overrides=list(overrides))
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("task", group_options("task"))
@pytest.mark.parametrize("model", group_options("model"))
def test_every_task_and_model_composes(task, model):
    cfg = from_dict(composed(f"task={task}", f"model={model}"))
    assert cfg.model.n_layers >= 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_task_yaml_equals_python_preset(name):
    assert yaml.safe_load((CONF / "task" / f"{name}.yaml").read_text()) == PRESETS[name]


BAD = [
    ({"train": {"stpes": 10}}, "train.stpes", "did you mean steps"),
    ({"train": {"steps": "ten"}}, "train.steps", "must be an integer"),
    ({"train": {"steps": 0}}, "train.steps", "must be >= 1"),
    ({"train": {"seeds": [0, 0]}}, "train.seeds", "seeds must differ"),
    ({"model": {"pos": "alibi"}}, "model.pos", "must be one of"),
    ({"model": {"d_model": 30, "n_heads": 4}}, "model.d_model", "divisible by n_heads"),
    ({"model": {"max_offset": 4}}, "model.max_offset", "pos=onehot"),
    ({"model": {"tokens": "concat"}, "train": {"context_loss": True}}, "train.context_loss", "interleaved"),
    ({"train": {"cpu_devices": -1}}, "train.cpu_devices", "must be >= 0"),
    ({"train": {"member_loop": "pmap"}}, "train.member_loop", "must be one of"),
    ({"train": {"distributed": "yes"}}, "train.distributed", "must be one of"),
    ({"train": {"coordinator": "localhost"}}, "train.coordinator", "must be host:port"),
    ({"train": {"coordinator": "localhost:1234"}}, "train.num_processes", "must be >= 1"),
    ({"train": {"coordinator": "h:1", "num_processes": 2, "process_id": 2}}, "train.process_id", "0 .. "),
    (
        {"train": {"coordinator": "h:1", "num_processes": 2, "process_id": 0, "distributed": "off"}},
        "train.distributed",
        "is off",
    ),
    ({"train": {"num_processes": 2}}, "train.coordinator", "only with a coordinator"),
    ({"optim": {"lr": -1.0}}, "optim.lr", "must be > 0"),
    ({"optim": {"name": "lion"}}, "optim.name", "must be one of"),
    ({"optim": {"warmup_steps": 10_000}}, "optim.warmup_steps", "must be in"),
    ({"task": {"L_relevant": 3}}, "task.L_relevant", "needs p_relevant"),
    ({"sweep": {"L": [4, 8]}}, "sweep.L", "is not a setting of sweep"),
    ({"sweep": {"p_bursty": [0.5, 1.5]}}, "task.p_bursty", "member 1"),
    ({"sweep": {"mode": "zip", "p_bursty": [0.5, 1.0], "K": [64]}}, "sweep", "equal length"),
    ({"probes": {"names": ["icl_novel", "icl_nvel"]}}, None, None),  # checked when the run starts (see below)
]


@pytest.mark.parametrize("override,field,rule", [b for b in BAD if b[1]], ids=lambda x: str(x)[:40])
def test_bad_config_is_refused(override, field, rule):
    data = composed()
    for group, values in override.items():
        data[group] = {**data[group], **values}
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert err.value.field == field
    assert rule in str(err.value)


@pytest.mark.parametrize(("field", "value"), [("L", 8.5), ("alpha", float("inf")), ("alpha", "big"),
                                             ("prototype", "round"), ("query_all_classes", 1), ("image_path", 3),
                                             ("K", "all"), ("p_relevant", True)])  # fmt: skip
def test_a_task_built_in_python_is_refused_as_its_config_is(field, value):
    """One type check: TaskSpec(...) through validate and the same field through the config give one message."""
    with pytest.raises(ConfigError) as in_python:
        validate(TaskSpec(**{field: value}))
    with pytest.raises(ConfigError) as in_config:
        from_dict({"task": {field: value}})
    assert str(in_python.value) == str(in_config.value)
    assert str(in_python.value).startswith(f"task.{field} = {value!r}: must be")


def test_members_are_the_product_of_sweeps_times_seeds():
    data = composed("sweep.p_bursty=[0.0,1.0]", "sweep.K=[64,128]", "train.seeds=[3,4]")
    coords = members(from_dict(data))
    assert len(coords) == 8
    assert coords[0] == {"seed": 3, "K": 64, "p_bursty": 0.0}
    assert coords[-1] == {"seed": 4, "K": 128, "p_bursty": 1.0}
    zipped = members(from_dict(composed("sweep.mode=zip", "sweep.p_bursty=[0.0,1.0]", "sweep.K=[64,128]")))
    assert zipped == [{"seed": 0, "K": 64, "p_bursty": 0.0}, {"seed": 0, "K": 128, "p_bursty": 1.0}]


def test_schema_lists_every_field():
    data = schema_dict()
    cfg = from_dict(data)
    assert dataclasses.asdict(cfg)["task"].keys() == data["task"].keys()


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_cli_refuses_bad_value_before_compiling(tmp_path):
    out = _train("task.L_relevant=3", cwd=tmp_path)
    assert out.returncode == 2
    assert "config error: task.L_relevant = 3: needs p_relevant to be set" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_runs_and_writes_its_record(tmp_path):
    out = _train(
        "experiment=none", "task.n_classes=72", "task.n_holdout=8", "task.D=8", "model.d_model=16", "train.steps=20",
        "train.chunk_steps=10", "probes.n_eval=32", "probes.n_log=2", "logging.progress=false",
        "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "run"
    for name in ("metrics.jsonl", "curves.png", "summary.md", "config.json", "provenance.json", ".hydra/config.yaml"):
        assert (run / name).exists(), name
    assert "| icl_novel |" in out.stdout


def test_cli_refuses_an_unusable_run_dir_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    out = _train("hydra.run.dir=afile/run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "config error: output dir = afile/run: must be a writable directory (Not a directory)"
