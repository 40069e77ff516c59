"""The rows one evaluation adds to metrics.jsonl: one per (member, probe), and a "train" row per member.

Their fields are those of ``iclwl.record.measures``; ``iclwl.record.files`` describes the file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iclwl.probes.evaluate import ProbeMetrics
from iclwl.probes.mechanisms import headline, number, per_head
from iclwl.record.measures import SOURCES
from iclwl.training.program import Health, Meter


def probe_rows(step: int, probes: ProbeMetrics, names: list[str], coords: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for m, coord in enumerate(coords):
        for p, name in enumerate(names):
            correct, count = probes.group_correct[m, p], probes.group_count[m, p]
            group_acc = [float(correct[g] / count[g]) if count[g] else None for g in range(2)]
            rows.append(
                {"step": step, "member": m, "probe": name, "acc": float(probes.acc[m, p]),
                 "loss": float(probes.loss[m, p]), "acc_common": group_acc[0], "acc_rare": group_acc[1],
                 **_mechanism_fields(probes, m, p), **_ablation_fields(probes, m, p),
                 **{k: float(v[m, p]) for k, v in probes.measures.items()}, **coord}
            )  # fmt: skip
    return rows


def _mechanism_fields(probes: ProbeMetrics, m: int, p: int) -> dict[str, Any]:
    """The fields of records.MECHANISM_SCALARS and MECHANISM_LISTS for member m, probe p (none when off)."""
    fields: dict[str, Any] = {}
    if probes.sources is not None:
        fields |= {f"src_{s}": float(probes.sources[m, p, i]) for i, s in enumerate(SOURCES)}
    if probes.attention is not None:  # the transformer's; other archs have no attention weights
        lh = {k: np.asarray(v[m, p]) for k, v in probes.attention._asdict().items()}  # (layers, H) each
        fields |= {**headline(lh), **{f"{k}_lh": per_head(v) for k, v in lh.items()}}
    return fields


def _ablation_fields(probes: ProbeMetrics, m: int, p: int) -> dict[str, Any]:
    """The fields of the "ablation" family for member m, probe p (none with probes.ablations=off)."""
    a = probes.ablation
    if a is None:
        return {}
    return {"ablate_drop_lh": per_head(np.asarray(a.drop[m, p])), "ablate_topk_drop": number(float(a.topk_drop[m, p])),
            "ablate_random_drop": number(float(a.random_drop[m, p]))}  # fmt: skip


def train_rows(step: int, meter: Meter, health: Health, coords: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean training loss and accuracy over the steps each member took since the last evaluation."""
    rows = []
    for m, coord in enumerate(coords):
        n = int(meter.steps[m])
        loss, acc = (float(meter.loss[m] / n), float(meter.acc[m] / n)) if n else (None, None)
        rows.append({"step": step, "member": m, "probe": "train", "acc": acc, "loss": loss,
                     "stopped_at": None if health.alive[m] else int(health.bad_step[m]), **coord})  # fmt: skip
    return rows
