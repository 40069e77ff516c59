"""iclwl.cli.dashboard: the W&B workspace of a sweep, built from hand-made run directories without network: it keeps
only the sweep's runs, groups them by the coordinates that vary, and plots each probe against step."""

import json

import pytest

from iclwl.cli.dashboard import main, plan, specification, wandb_key
from iclwl.report.analysis import ReportError

pytest.importorskip("wandb_workspaces")


def make_run(path, L: int, p_relevants: list[float], group: str | None, project: str = "iclwl") -> None:
    path.mkdir(parents=True)
    config = {"name": "sweep", "task": {"L": L, "p_relevant": 0.9, "n_labels": 10},
              "wandb": {"entity": "lab", "project": project, "group": None}}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    rows = []
    for m, p in enumerate(p_relevants):
        for seed in (0, 1):
            for probe in ("icl_flip", "iwl_no_support", "shots_2"):
                rows.append({"step": 10, "member": 2 * m + seed, "probe": probe, "acc": 0.5, "loss": 1.0,
                             "acc_common": 0.4, "acc_rare": 0.6, "seed": seed, "p_relevant": p})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if group is not None:
        (path / "wandb_ids.json").write_text(json.dumps({"group": group, "runs": []}))


def test_the_plan_of_a_multirun_groups_by_what_varies(tmp_path):
    for L in (2, 4):
        make_run(tmp_path / "sweep" / f"L{L}", L, [0.5, 1.0], group="sweep-multirun")
    p = plan(tmp_path / "sweep")
    assert (p.entity, p.project, p.groups) == ("lab", "iclwl", ["sweep-multirun"])
    assert p.group_by == ["p_relevant", "L"]  # the member coordinate, then the job's compiled-in knob
    assert p.sections == {
        "training distribution": ["train/loss"],
        "in-context probes": ["icl_flip/acc"],
        "in-weight probes": ["iwl_no_support/acc"],
        "frequency groups": ["icl_flip/acc_rare", "iwl_no_support/acc_rare", "shots_2/acc_rare",
                             "icl_flip/acc_common", "iwl_no_support/acc_common", "shots_2/acc_common"],
        "shots and distance": ["shots_2/acc"],
    }  # fmt: skip
    assert wandb_key("model.d_model") == "d_model" and wandb_key("optim.warmup") == "config.optim.warmup"


def test_the_specification_filters_the_group_and_groups_the_runs(tmp_path):
    for L in (2, 4):
        make_run(tmp_path / f"L{L}", L, [0.5, 1.0], group="g")
    spec = specification(plan(tmp_path, name="cmp"))
    assert (spec["entity"], spec["project"], spec["displayName"]) == ("lab", "iclwl", "cmp")
    (runset,) = spec["spec"]["section"]["runSets"]
    assert runset["grouping"] == [{"section": "config", "name": "p_relevant.value"},
                                  {"section": "config", "name": "L.value"}]  # fmt: skip
    (only,) = runset["filters"]["filters"]
    assert (only["key"], only["op"], only["value"]) == ({"section": "run", "name": "group"}, "=", "g")
    panels = {s["name"]: s["panels"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]}
    (icl,) = panels["in-context probes"]
    assert icl["config"]["metrics"] == ["icl_flip/acc"] and icl["config"]["xAxis"] == "step"
    assert (icl["config"]["groupAgg"], icl["config"]["groupArea"]) == ("mean", "minmax")


def test_runs_without_a_recorded_group_and_a_single_setting(tmp_path):
    make_run(tmp_path / "one", 2, [0.5], group=None)
    p = plan(tmp_path / "one")
    assert p.groups == [f"sweep-{(tmp_path / 'one').name}"]  # the group the run would have had
    assert p.group_by == ["group"]  # nothing varies: its seeds together


def test_the_command_writes_the_specification_and_refuses_what_it_cannot_decide(tmp_path, capsys):
    make_run(tmp_path / "s" / "a", 2, [0.5, 1.0], group="g")
    assert main([str(tmp_path / "s")]) == 0
    spec = json.loads((tmp_path / "s" / "report" / "wandb_workspace.json").read_text())
    assert spec["spec"]["section"]["runSets"][0]["grouping"] == [{"section": "config", "name": "p_relevant.value"}]
    assert "grouped by p_relevant" in capsys.readouterr().out
    make_run(tmp_path / "s" / "b", 4, [0.5], group="g", project="other")
    assert main([str(tmp_path / "s")]) == 2
    assert "different wandb.project (iclwl, other); choose one with --project" in capsys.readouterr().err
    assert main([str(tmp_path / "s"), "--project", "iclwl", "--out", str(tmp_path / "w.json")]) == 0
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ReportError, match="--entity"):
        config = json.loads((tmp_path / "s" / "a" / "config.json").read_text())
        (tmp_path / "s" / "a" / "config.json").write_text(json.dumps({**config, "wandb": {"project": "iclwl"}}))
        specification(plan(tmp_path / "s" / "a"))
