"""W&B sink: offline runs hold the right config and metrics per member, disabled writes nothing, a failing W&B
never raises, and its settings are validated. Modes are set explicitly (the WANDB_MODE of conftest does not apply
to an explicit mode); no test needs the network."""

import dataclasses
import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest

from data_gen import ConfigError
from iclwl.config import Config, WandbConfig, from_dict
from iclwl.record.wandb_sink import IDS_FILE, WandbSink, default_group, require_wandb

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402  (only once wandb is known to be there)

COORDS = [{"seed": 0, "p_bursty": 0.5}, {"seed": 1, "p_bursty": 0.5}]
PROVENANCE = {"git_commit": "abc", "backend": "cpu"}


@pytest.fixture(autouse=True)
def wandb_home(tmp_path, monkeypatch):
    """Keep wandb's settings and caches out of the home directory."""
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))


def rows_at(step: int) -> list[dict]:
    """What run.py writes at one evaluation: a train row (not at step 0) and one row per probe, per member."""
    rows = []
    for m, coord in enumerate(COORDS):
        if step:
            rows.append({"step": step, "member": m, "probe": "train", "acc": 0.5, "loss": 1.0 + m,
                         "stopped_at": None, **coord})  # fmt: skip
        for probe in ("icl_novel", "iwl_no_support"):
            rows.append({"step": step, "member": m, "probe": probe, "acc": step / 100 + m, "loss": 2.0,
                         "acc_common": None, "acc_rare": 0.25, **coord})  # fmt: skip
    return rows


def sink(tmp_path: Path, start_step: int = 0, **kw) -> WandbSink:
    cfg = WandbConfig(**{"mode": "offline", **kw})
    run_config = dataclasses.asdict(Config())
    return WandbSink(cfg, run_config, PROVENANCE, COORDS, tmp_path, "test", None, start_step=start_step)


# ------------------------------------------------------------------------------- reading offline run files


def records(path: Path) -> list:
    """The records of a .wandb file: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
    each with a 7-byte header (checksum, little-endian length, kind: 1 whole, 2 first, 3 middle, 4 last)."""
    data, pos, out, buf = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # too little room left in a block for a chunk header: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if pos + 7 + length > len(data):
            break  # still being written
        buf = (b"" if kind in (1, 2) else buf) + data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


def offline_runs(root: Path) -> dict[str, list[Path]]:
    """Run id -> its offline run files, oldest first (a resumed run has one per segment)."""
    runs: dict[str, list[Path]] = {}
    for f in sorted(root.glob("wandb/offline-run-*/run-*.wandb")):
        runs.setdefault(f.stem.removeprefix("run-"), []).append(f)
    return runs


def finished(path: Path) -> list:
    """The records of a finished run: run.finish() returns before wandb-core has written the file out, so wait
    for the exit record (a few milliseconds to a second)."""
    deadline = time.monotonic() + 20
    while True:
        recs = records(path)
        if (recs and recs[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return recs
        time.sleep(0.05)


def run_info(path: Path) -> tuple:
    """(the run record, its config as plain data, its history rows without W&B's own keys)."""
    recs = finished(path)
    (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    history = [{k: v for k, v in map(item, r.history.item) if not k.startswith("_")}
               for r in recs if r.WhichOneof("record_type") == "history"]  # fmt: skip
    return run, config, history


def item(i) -> tuple[str, object]:
    # wandb-core writes a metric's name to `key` or, as a one-element path, to `nested_key`
    return i.key or ".".join(i.nested_key), json.loads(i.value_json)


# ------------------------------------------------------------------------------------------------ the tests


def test_offline_run_per_member_holds_config_and_metrics(tmp_path):
    s = sink(tmp_path, tags=("pilot",))
    s.write(rows_at(0))
    s.write(rows_at(10))
    s.close()
    runs = offline_runs(tmp_path)
    ids = json.loads((tmp_path / IDS_FILE).read_text())["runs"]
    assert sorted(runs) == sorted(r["id"] for r in ids) and len(runs) == 2
    for m, entry in enumerate(ids):
        run, config, history = run_info(runs[entry["id"]][0])
        assert run.run_group == default_group("test", tmp_path) and list(run.tags) == ["pilot"]
        assert {k: config[k] for k in ("seed", "p_bursty", "member")} == {**COORDS[m], "member": m}
        assert config["config"]["task"]["K"] == Config().task.K and config["provenance"] == PROVENANCE
        assert [h["step"] for h in history] == [0, 10]
        assert set(history[0]) == {"step", "icl_novel/acc", "icl_novel/loss", "icl_novel/acc_rare",
                                   "iwl_no_support/acc", "iwl_no_support/loss", "iwl_no_support/acc_rare"}  # fmt: skip
        assert history[1]["train/loss"] == 1.0 + m and history[1]["icl_novel/acc"] == pytest.approx(0.1 + m)
        assert "train/stopped_at" not in history[1] and "icl_novel/acc_common" not in history[1]  # None: not logged
        metrics = [r.metric for r in finished(runs[entry["id"]][0]) if r.WhichOneof("record_type") == "metric"]
        assert any(mt.glob_name == "*" and mt.step_metric == "step" for mt in metrics)


def test_the_summary_table_and_figure_are_logged_at_the_end(tmp_path):
    """Each member's W&B run gets the summary rows of its own setting as a table, and the job's figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    Figure().savefig(tmp_path / "curves.png")
    table = [{"p_bursty": b, "setting": f"p_bursty={b}", "probe": "icl_novel", "final": b, "seeds": 2}
             for b in (0.5, 0.9)]  # fmt: skip
    s = sink(tmp_path)
    s.write(rows_at(0))
    s.publish(table, {"curves": tmp_path / "curves.png", "absent": tmp_path / "none.png"}, step=10)
    s.close()
    for path in offline_runs(tmp_path).values():
        *_, history = run_info(path[0])
        last = history[-1]  # wandb-core writes a media value's fields as keys of their own
        assert last["step"] == 10 and last["summary/curves._type"] == "image-file"
        assert last["summary/table._type"] == "table-file" and not any(k.startswith("summary/absent") for k in last)
        file = path[0].parent / "files" / last["summary/table.path"]
        logged = json.loads(file.read_text())
        assert logged["columns"] == ["p_bursty", "probe", "final", "seeds"]
        assert logged["data"] == [[0.5, "icl_novel", 0.5, 2]]  # its own setting only


def test_one_run_for_the_ensemble_prefixes_members(tmp_path):
    s = sink(tmp_path, per_member=False, group="mine", dir=str(tmp_path / "elsewhere"))
    s.write(rows_at(0))
    s.close()
    (files,) = offline_runs(tmp_path / "elsewhere").values()
    run, config, (history,) = run_info(files[0])
    assert run.run_group == "mine" and config["members"] == COORDS
    assert history["m0/icl_novel/acc"] == 0.0 and history["m1/icl_novel/acc"] == 1.0


def test_resume_reopens_the_same_runs_and_skips_logged_steps(tmp_path):
    first = sink(tmp_path)
    for t in (0, 10, 20):
        first.write(rows_at(t))
    first.close()
    ids = [r["id"] for r in json.loads((tmp_path / IDS_FILE).read_text())["runs"]]
    resumed = sink(tmp_path, start_step=10)  # the checkpoint was at 10; W&B already has 20
    resumed.write(rows_at(20))
    resumed.write(rows_at(30))
    resumed.close()
    runs = offline_runs(tmp_path)
    assert sorted(runs) == sorted(ids)
    for rid in ids:
        assert len(runs[rid]) == 2
        assert [h["step"] for h in run_info(runs[rid][1])[2]] == [30]
    fresh = sink(tmp_path)  # a start from step 0 is a new run, not a continuation
    fresh.close()
    assert not {r["id"] for r in json.loads((tmp_path / IDS_FILE).read_text())["runs"]} & set(ids)


def test_disabled_writes_nothing(tmp_path):
    s = sink(tmp_path, mode="disabled")
    s.write(rows_at(0))
    s.close()
    assert list(tmp_path.iterdir()) == []


def test_failing_init_warns_once_and_training_goes_on(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", refuse)
    s = sink(tmp_path, mode="online")
    s.write(rows_at(0))
    s.close()
    err = capsys.readouterr().err
    assert err.count("warning: W&B") == 1 and "no network" in err and "metrics.jsonl" in err


def test_failing_log_warns_once_and_turns_the_sink_off(tmp_path, monkeypatch, capsys):
    s = sink(tmp_path)
    opened = list(s.runs)

    def refuse(*args, **kwargs):
        raise RuntimeError("server said no")

    monkeypatch.setattr(type(opened[0]), "log", refuse)
    s.write(rows_at(0))
    s.write(rows_at(10))
    s.close()
    assert s.runs == [] and capsys.readouterr().err.count("warning: W&B log failed") == 1
    monkeypatch.undo()
    for run in opened:  # left open by the sink on purpose (see WandbSink._guard)
        run.finish()


def test_missing_package_is_a_config_error(monkeypatch):
    require_wandb(WandbConfig(mode="disabled"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        require_wandb(WandbConfig(mode="offline"))
    assert e.value.field == "wandb.mode" and "iclwl[wandb]" in str(e.value)
    require_wandb(WandbConfig(mode="disabled"))  # disabled never needs it


def test_group_is_the_sweep_in_a_multirun(tmp_path):
    job = tmp_path / "sweep_2024" / "3"
    job.mkdir(parents=True)
    assert default_group("exp", job) == "exp-3"
    (tmp_path / "sweep_2024" / "multirun.yaml").write_text("{}\n")
    assert default_group("exp", job) == "exp-sweep_2024"


@pytest.mark.parametrize(
    "wandb_settings,field,rule",
    [
        ({"mode": "yes"}, "wandb.mode", "must be one of"),
        ({"project": "a/b"}, "wandb.project", "without"),
        ({"project": ""}, "wandb.project", "non-empty"),
        ({"entity": " "}, "wandb.entity", "a name or null"),
        ({"group": ""}, "wandb.group", "1 to 128"),
        ({"tags": ["ok", ""]}, "wandb.tags", "1 to 64"),
        ({"dir": ""}, "wandb.dir", "directory or null"),
        ({"per_member": "yes"}, "wandb.per_member", "true or false"),
        ({"projcet": "x"}, "wandb.projcet", "did you mean project"),
    ],
)
def test_bad_wandb_settings_are_refused(wandb_settings, field, rule):
    with pytest.raises(ConfigError) as e:
        from_dict({"wandb": wandb_settings})
    assert e.value.field == field and rule in str(e.value)


def test_good_wandb_settings_pass():
    cfg = from_dict({"wandb": {"mode": "offline", "entity": "me", "tags": ["a", "b"], "group": "g"}})
    assert cfg.wandb.tags == ("a", "b") and cfg.wandb.mode == "offline"


# ------------------------------------------------------------------------------------- wired into a real run


def tiny_run_config(mode: str):
    from test_training import tiny

    from iclwl.config import WandbConfig

    cfg = tiny()
    return dataclasses.replace(cfg, wandb=WandbConfig(mode=mode), train=dataclasses.replace(cfg.train, seeds=(0, 1)))


@pytest.mark.slow  # about 40 s: a real run with wandb's service (the sink itself is tested above)
def test_a_run_in_offline_mode_logs_what_metrics_jsonl_holds(tmp_path):
    from iclwl.record.files import read_metrics
    from iclwl.run import run

    run(tiny_run_config("offline"), tmp_path)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    ids = json.loads((tmp_path / IDS_FILE).read_text())["runs"]
    runs = offline_runs(tmp_path)
    assert len(ids) == 2 and sorted(runs) == sorted(r["id"] for r in ids)
    for m, entry in enumerate(ids):
        _, config, history = run_info(runs[entry["id"]][0])
        assert config["seed"] == m and config["config"]["train"]["steps"] == 30
        want = {(r["step"], f"{r['probe']}/acc"): r["acc"] for r in rows if r["member"] == m and r["acc"] is not None}
        got = {(h["step"], k): v for h in history for k, v in h.items() if k.endswith("/acc")}
        assert got == pytest.approx(want)


def test_a_failing_wandb_leaves_training_and_metrics_intact(tmp_path, monkeypatch, capsys):
    from iclwl.record.files import read_metrics
    from iclwl.run import run

    def refuse(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", refuse)
    run(tiny_run_config("online"), tmp_path / "failing")
    monkeypatch.undo()
    run(tiny_run_config("disabled"), tmp_path / "plain")
    assert "no network" in capsys.readouterr().err
    a, b = read_metrics(tmp_path / "failing" / "metrics.jsonl"), read_metrics(tmp_path / "plain" / "metrics.jsonl")
    assert a == b and len(a) > 0


@pytest.mark.slow  # about 60 s: two real runs with wandb's service
def test_each_member_run_holds_its_own_values_and_the_jobs_static_knobs(tmp_path):
    """A p_relevant sweep of 2 members in each of 2 jobs that differ in L (as `-m task.L=2,4` runs them): every
    W&B run's config has its member's own task.p_relevant (not the base value) and the job's L at the top."""
    from iclwl.config import SweepConfig
    from iclwl.run import run

    base = tiny_run_config("offline")
    seen = set()
    (tmp_path / "multirun.yaml").write_text("{}\n")  # the jobs are the subdirectories of one Hydra multirun
    for L in (2, 4):
        task = dataclasses.replace(base.task, L=L, B=1, p_relevant=0.9, p_bursty=0.0)
        cfg = dataclasses.replace(base, task=task, sweep=SweepConfig(p_relevant=(0.5, 1.0)),
                                  train=dataclasses.replace(base.train, seeds=(0,)))  # fmt: skip
        run(cfg, tmp_path / f"L{L}")
        for entry in json.loads((tmp_path / f"L{L}" / IDS_FILE).read_text())["runs"]:
            _, config, _ = run_info(offline_runs(tmp_path / f"L{L}")[entry["id"]][0])
            assert config["L"] == L and config["d_model"] == base.model.d_model
            assert config["config"]["task"]["p_relevant"] == config["p_relevant"]  # the member's own value
            assert config["config"]["task"]["L"] == L
            seen.add((config["L"], config["p_relevant"]))
            *_, history = run_info(offline_runs(tmp_path / f"L{L}")[entry["id"]][0])
            assert history[-1]["summary/table._type"] == "table-file"  # logged at the end
            assert history[-1]["summary/curves._type"] == "image-file"
    assert seen == {(2, 0.5), (2, 1.0), (4, 0.5), (4, 1.0)}
    from iclwl.cli.dashboard import plan

    dashboard = plan(tmp_path, entity="lab")  # the workspace that compares them
    assert dashboard.group_by == ["p_relevant", "L"] and dashboard.groups == [default_group(base.name, tmp_path / "L2")]
