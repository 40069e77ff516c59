"""The report CLI: exact numbers from hand-made run directories, multirun coordinates, figures, clear errors,
and a report of a real tiny training that agrees with its metrics.jsonl."""

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_training import TINY_MODEL, TINY_TASK

from data_gen import TaskSpec
from iclwl.cli.report import main
from iclwl.config import CheckpointConfig, Config, LoggingConfig, ProbeConfig, SweepConfig, TrainConfig, validate_config
from iclwl.record.files import read_metrics, write_config
from iclwl.run import run

ROOT = Path(__file__).resolve().parents[1]
STEPS = [0, 10, 100, 1000]
# n_labels = 4: chance 0.25, default onset level 0.25 + 0.75 / 2 = 0.625. Accuracies are binary fractions, so
# every mean below is exact in floating point.
CURVES = {
    1.0: {  # p_bursty = 1: ICL rises to 1 and falls back (transient); IWL stays at chance
        "icl_novel": {0: [0.25, 0.5, 1.0, 0.5], 1: [0.25, 0.75, 1.0, 0.75]},
        "iwl_no_support": {0: [0.25, 0.25, 0.25, 0.25], 1: [0.25, 0.25, 0.25, 0.25]},
    },
    0.0: {  # p_bursty = 0: no ICL; IWL climbs to 1
        "icl_novel": {0: [0.25, 0.25, 0.25, 0.25], 1: [0.25, 0.25, 0.25, 0.25]},
        "iwl_no_support": {0: [0.0, 0.5, 0.75, 1.0], 1: [0.0, 0.25, 0.75, 1.0]},
    },
}


def write_run(path: Path, curves: dict, coord: str | None = "p_bursty", **task_changes) -> Path:
    """A run directory as iclwl.run leaves it: config.json and metrics.jsonl rows with the members' coordinates
    (plus a "train" row per step, which the report must skip). ``coord=None``: a run that sweeps nothing."""
    path.mkdir(parents=True)
    task = dataclasses.replace(TaskSpec(), n_labels=4, **task_changes)
    swept = {coord: tuple(curves)} if coord else {}
    write_config(path / "config.json", Config(task=task, sweep=SweepConfig(**swept), train=TrainConfig(seeds=(0, 1))))
    rows = []
    for i, step in enumerate(STEPS):
        for m, (value, probes) in enumerate((v, p) for v in curves for p in [curves[v]]):
            for seed in (0, 1):
                where = {"seed": seed, **({coord: value} if coord else {})}
                member = 2 * m + seed
                rows.append({"step": step, "member": member, "probe": "train", "acc": 0.9, "loss": 0.1, **where})
                for probe, by_seed in probes.items():
                    acc = by_seed[seed][i]
                    rows.append({"step": step, "member": member, "probe": probe, "acc": acc, "loss": 1.0,
                                 "acc_common": acc, "acc_rare": acc / 2, **where})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def by_key(rows: list[dict[str, str]], *names: str) -> dict[tuple, dict[str, str]]:
    return {tuple(r[n] for n in names): r for r in rows}


def test_numbers_of_a_hand_made_run(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", CURVES)
    assert main([str(run_dir)]) == 0
    table = by_key(read_csv(run_dir / "report" / "summary.csv"), "p_bursty", "probe")
    assert set(table) == {("1.0", "icl_novel"), ("1.0", "iwl_no_support"), ("0.0", "icl_novel"),
                          ("0.0", "iwl_no_support")}  # fmt: skip
    numbers = ["final", "final_std", "peak", "peak_step", "drop", "transient", "onset_level", "onset_step", "seeds"]
    # seed means of icl at p_bursty=1: 0.25, 0.625, 1.0, 0.625; final seeds 0.5, 0.75
    assert [table[("1.0", "icl_novel")][n] for n in numbers] == [
        "0.625", "0.125", "1.0", "100", "0.375", "True", "0.625", "10", "2"]  # fmt: skip
    # flat at chance: the peak is the first step; the curve never reaches the onset level
    assert [table[("1.0", "iwl_no_support")][n] for n in numbers] == [
        "0.25", "0.0", "0.25", "0", "0.0", "False", "0.625", "", "2"]  # fmt: skip
    # iwl at p_bursty=0: seed means 0.0, 0.375, 0.75, 1.0
    assert [table[("0.0", "iwl_no_support")][n] for n in numbers] == [
        "1.0", "0.0", "1.0", "1000", "0.0", "False", "0.625", "100", "2"]  # fmt: skip
    assert table[("0.0", "icl_novel")]["chance"] == "0.25"
    markdown = (run_dir / "report" / "summary.md").read_text()
    assert "| p_bursty=1.0 | icl_novel | 0.625 ± 0.125 | 1.000 (100) | 0.375 | yes | 10 (≥0.625) | 2 |" in markdown
    assert "| p_bursty=1.0 | iwl_no_support | 0.250 ± 0.000 | 0.250 (0) | 0.000 | no | never (≥0.625) | 2 |" in markdown
    assert (run_dir / "report" / "curves.png").stat().st_size > 0
    assert not (run_dir / "report" / "phase_p_bursty_seed.png").exists()  # one coordinate varies: no diagram
    assert "wrote:" in capsys.readouterr().out


def test_thresholds_and_groups(tmp_path):
    run_dir = write_run(tmp_path / "run", CURVES)
    out = tmp_path / "out"
    assert main([str(run_dir), "--out", str(out), "--drop-threshold", "0.375", "--onset-level", "0.75",
                 "--groups", "--probes", "icl_novel"]) == 0  # fmt: skip
    table = by_key(read_csv(out / "summary.csv"), "p_bursty", "probe")
    icl = table[("1.0", "icl_novel")]
    assert (icl["transient"], icl["onset_level"], icl["onset_step"]) == ("False", "0.75", "100")  # drop = threshold
    # groups: acc_rare is half of acc, so its seed means are 0.125, 0.3125, 0.5, 0.3125
    rare = table[("1.0", "icl_novel:rare")]
    assert (rare["final"], rare["peak"], rare["drop"], rare["onset_step"]) == ("0.3125", "0.5", "0.1875", "")
    assert table[("1.0", "icl_novel:common")]["final"] == "0.625"
    assert {p for _, p in table} == {"icl_novel", "icl_novel:rare", "icl_novel:common"}


def test_accuracy_against_shots_and_distance(tmp_path):
    # seed 0 / seed 1 accuracies at steps 0, 10, 100, 1000 of each family probe (one setting, p_bursty = 1)
    families = {
        "shots_0": {0: [0.25, 0.25, 0.25, 0.25], 1: [0.25, 0.25, 0.25, 0.25]},
        "shots_1": {0: [0.25, 0.25, 0.5, 0.75], 1: [0.25, 0.5, 0.5, 1.0]},
        "shots_2": {0: [0.25, 0.5, 1.0, 1.0], 1: [0.25, 0.25, 0.75, 1.0]},
        "distance_1": {0: [0.25, 0.5, 1.0, 1.0], 1: [0.25, 0.5, 1.0, 1.0]},
        "distance_2": {0: [0.25, 0.25, 0.5, 0.5], 1: [0.25, 0.25, 0.25, 0.75]},
    }
    run_dir = write_run(tmp_path / "run", {1.0: {**CURVES[1.0], **families}})
    assert main([str(run_dir), "--family-steps", "3"]) == 0
    table = by_key(read_csv(run_dir / "report" / "families.csv"), "family", "step", "k")
    # log-spaced over the positive steps 10..1000: 10, 100, 1000 (step 0 is before any training)
    assert {(f, s) for f, s, _ in table} == {(f, s) for f in ("shots", "distance") for s in ("10", "100", "1000")}
    assert [table[("shots", "1000", k)]["mean"] for k in ("0", "1", "2")] == ["0.25", "0.875", "1.0"]
    assert (table[("shots", "10", "1")]["min"], table[("shots", "10", "1")]["max"]) == ("0.25", "0.5")
    assert [table[("distance", "100", d)]["mean"] for d in ("1", "2")] == ["1.0", "0.375"]
    assert table[("distance", "1000", "2")]["seeds"] == "2"
    text = (run_dir / "report" / "families.md").read_text()
    assert "| k=0 | k=1 | k=2 |" in text and "| p_bursty=1.0 | 1000 | 0.250 | 0.875 | 1.000 |" in text
    assert "| d=1 | d=2 |" in text and "| p_bursty=1.0 | 100 | 1.000 | 0.375 |" in text
    assert (run_dir / "report" / "families.png").stat().st_size > 0
    # runs without the families write none of these files
    plain = write_run(tmp_path / "plain", CURVES)
    assert main([str(plain)]) == 0 and not (plain / "report" / "families.md").exists()


def test_cut_off_last_line_is_ignored(tmp_path):
    run_dir = write_run(tmp_path / "run", CURVES)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2000, "member": 0, "probe": "icl_no')  # a process killed mid-row
    assert main([str(run_dir)]) == 0
    table = by_key(read_csv(run_dir / "report" / "summary.csv"), "p_bursty", "probe")
    assert table[("1.0", "icl_novel")]["final_step"] == "1000"


def test_multirun_static_fields_become_coordinates(tmp_path):
    """Hydra multirun layout: <sweep>/<time>/<job>/; jobs differ in task.L (static) and in bookkeeping
    (train.chunk_steps) and the base value of a swept field, which are not coordinates."""
    sweep = tmp_path / "multirun" / "name" / "2026-01-01_00-00-00"
    write_run(sweep / "0", CURVES, L=4)
    write_run(sweep / "1", CURVES, L=8, p_bursty=0.5)  # task.p_bursty is overridden by each member's p_bursty
    config = json.loads((sweep / "1" / "config.json").read_text())
    config["train"]["chunk_steps"] = 7
    (sweep / "1" / "config.json").write_text(json.dumps(config))
    assert main([str(tmp_path / "multirun")]) == 0
    out = tmp_path / "multirun" / "report"
    rows = read_csv(out / "summary.csv")
    assert list(rows[0])[:3] == ["p_bursty", "task.L", "probe"]
    table = by_key(rows, "p_bursty", "task.L", "probe")
    assert len(table) == 8
    assert table[("1.0", "8", "icl_novel")]["final"] == table[("1.0", "4", "icl_novel")]["final"] == "0.625"
    phase = out / "phase_p_bursty_task.L.png"
    assert phase.stat().st_size > 0


def test_run_without_a_sweep_takes_the_swept_field_from_its_config(tmp_path):
    write_run(tmp_path / "swept", CURVES)
    write_run(tmp_path / "fixed", {0.5: CURVES[1.0]}, coord=None, p_bursty=0.5, alpha=1.0)
    assert main([str(tmp_path), "--heatmap", "task.alpha", "p_bursty"]) == 0
    table = by_key(read_csv(tmp_path / "report" / "summary.csv"), "p_bursty", "task.alpha", "probe")
    assert table[("0.5", "1.0", "icl_novel")]["drop"] == "0.375"
    assert table[("0.0", "0.0", "icl_novel")]["peak"] == "0.25"
    assert (tmp_path / "report" / "phase_task.alpha_p_bursty.png").stat().st_size > 0


def errors(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_errors_name_the_value_and_what_was_expected(tmp_path, capsys):
    assert "expected a run directory" in errors([str(tmp_path / "nowhere")], capsys)
    (tmp_path / "empty_sweep" / "a").mkdir(parents=True)
    assert "holds no run directory" in errors([str(tmp_path / "empty_sweep")], capsys)
    run_dir = write_run(tmp_path / "run", CURVES)
    err = errors([str(run_dir), "--probes", "icl_novel,icl_flop"], capsys)
    assert "'icl_flop'" in err and "icl_novel, iwl_no_support" in err
    err = errors([str(run_dir), "--heatmap", "p_bursty", "K"], capsys)
    assert "'K' is not a coordinate" in err and "expected one of: p_bursty" in err
    assert "expected an accuracy in [0, 1]" in errors([str(run_dir), "--onset-level", "2"], capsys)
    assert "--family-steps = 0; expected" in errors([str(run_dir), "--family-steps", "0"], capsys)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text("")
    (tmp_path / "broken" / "config.json").write_text("{}")
    assert "metrics.jsonl: is empty" in errors([str(tmp_path / "broken")], capsys)
    (tmp_path / "broken" / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    (tmp_path / "broken" / "config.json").write_text('{"task": ')
    assert "config.json: is not valid JSON" in errors([str(tmp_path / "broken")], capsys)
    (tmp_path / "broken" / "config.json").unlink()
    assert "no config.json" in errors([str(tmp_path / "broken")], capsys)


def test_the_same_seed_of_a_setting_twice_is_refused(tmp_path, capsys):
    write_run(tmp_path / "a", CURVES)
    write_run(tmp_path / "b", CURVES)
    assert "both hold seed=0 of p_bursty=1.0" in errors([str(tmp_path)], capsys)


def test_module_entry_point_exits_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "iclwl.cli.report", str(tmp_path / "nowhere")], capture_output=True,
                         text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == f"error: {tmp_path / 'nowhere'}: no such file or directory; expected a run directory or a " \
                         "directory of runs\n"  # fmt: skip


def test_report_of_a_real_training_matches_its_metrics(tmp_path):
    cfg = Config(
        task=TINY_TASK,
        model=TINY_MODEL,
        train=TrainConfig(steps=30, batch_size=16, chunk_steps=10, seeds=(0, 1)),
        # two probes and few evaluations: compiling is most of this test's time
        probes=ProbeConfig(n_eval=32, n_log=2, every=10, names=("icl_novel", "iwl_no_support")),
        logging=LoggingConfig(progress=False, plot=False),
        checkpoint=CheckpointConfig(enabled=False),
        sweep=SweepConfig(p_bursty=(0.0, 1.0)),
    )
    run_summary = run(validate_config(cfg), tmp_path / "run")
    assert main([str(tmp_path / "run"), "--probes", "all", "--groups"]) == 0
    table = by_key(read_csv(tmp_path / "run" / "report" / "summary.csv"), "p_bursty", "probe")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["probe"] != "train"]
    assert {p for _, p in table} >= {"icl_novel", "iwl_no_support", "iwl_no_support:rare"}
    for (p_bursty, probe), t in table.items():
        if ":" in probe:
            continue  # the groups' numbers follow the same code, checked exactly on hand-made rows
        mine = [r for r in rows if r["probe"] == probe and str(r["p_bursty"]) == p_bursty]
        steps = sorted({r["step"] for r in mine})
        mean = [np.mean([r["acc"] for r in mine if r["step"] == s]) for s in steps]
        final = [r["acc"] for r in mine if r["step"] == steps[-1]]
        level = 1 / TINY_TASK.n_labels + (1 - 1 / TINY_TASK.n_labels) / 2
        onset = next((s for s, m in zip(steps, mean, strict=True) if m >= level), None)
        assert float(t["final"]) == np.mean(final) and float(t["final_std"]) == np.std(final)
        assert float(t["peak"]) == max(mean) and int(t["peak_step"]) == steps[int(np.argmax(mean))]
        assert float(t["drop"]) == max(mean) - mean[-1]
        assert t["onset_step"] == ("" if onset is None else str(onset)) and t["seeds"] == "2"
        # and with the run's own summary.md numbers (run.py summarises through iclwl.report.analysis too)
        (same,) = [s for s in run_summary if s["setting"] == f"p_bursty={p_bursty}" and s["probe"] == probe]
        assert (same["final"], same["peak"], same["peak_step"]) == (float(t["final"]), float(t["peak"]),
                                                                    int(t["peak_step"]))  # fmt: skip
    assert (tmp_path / "run" / "report" / "curves.png").stat().st_size > 0


def test_negative_drop_threshold_is_refused(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run", CURVES)
    assert "--drop-threshold = -1.0" in errors([str(run_dir), "--drop-threshold", "-1"], capsys)
