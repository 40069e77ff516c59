"""iclwl.record.measures: one registry of row fields; a number no reader knows is a measurement everywhere, never a
coordinate (the report keeps its settings, W&B sends it)."""

import json

from iclwl.record.measures import COORDINATES, MEASURES, is_measurement
from iclwl.record.wandb_sink import step_logs
from iclwl.report.analysis import combine, find_runs, summarise


def test_an_unknown_number_is_a_measurement_for_the_report_and_wandb(tmp_path):
    rows = []
    for m, p in enumerate((0.5, 1.0)):
        for seed in (0, 1):
            for step in (0, 10):
                rows.append({"step": step, "member": 2 * m + seed, "probe": "icl_flip", "acc": p * step / 10,
                             "loss": 1.0, "my_score": step / 10 + seed + m, "seed": seed, "p_relevant": p})  # fmt: skip
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text(json.dumps({"task": {"n_labels": 10}}))
    (tmp_path / "r" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sweep = combine(find_runs(tmp_path))
    assert sweep.coords == ["p_relevant"]  # my_score varies in every row: still not a coordinate
    table = summarise(sweep, ["icl_flip"], drop_threshold=0.1, level=None)
    assert [(t["setting"], t["final"], t["seeds"]) for t in table] == [("p_relevant=0.5", 0.5, 2),
                                                                       ("p_relevant=1.0", 1.0, 2)]  # fmt: skip
    logs = step_logs(rows, prefix_member=False)
    assert logs[3][10] == {"icl_flip/acc": 1.0, "icl_flip/loss": 1.0, "icl_flip/my_score": 3.0}


def test_the_registry_is_consistent():
    names = [m.name for m in MEASURES]
    assert len(names) == len(set(names)) and not set(names) & set(COORDINATES)
    assert all(is_measurement(n, None) for n in names)
    assert not is_measurement("p_relevant", 0.5) and not is_measurement("seed", 3)
    assert not is_measurement("predictor", "icl") and is_measurement("new_measure", 0.2)
