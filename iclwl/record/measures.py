"""The fields of a metrics row, in one place: what each measurement is, and which fields are coordinates.

A row of metrics.jsonl (``iclwl.record.files``) is the key ``step, member, probe``, the member's coordinates, and
measurements. Every reader takes its fields from here: W&B sends the numbers of ``MEASURES`` (and any other
number a row carries), the report and ``iclwl.load_runs`` tell coordinates from measurements by ``COORDINATES``,
the plots and the mechanism report pick their series by ``family``.

Adding a measure: compute it in the probes (``ProbeMetrics.measures``, one float per member and probe), and add one
``Measure`` line here to document it and place it in a family. A row field that is neither a coordinate nor listed
here is still a measurement for every reader: it is never taken for a coordinate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from data_gen import DYNAMIC_FIELDS
from iclwl.config import INTERVENE_FIELDS, OPTIM_FIELDS, SEED_COORDS

ROW_KEY = ("step", "member", "probe")
# SEED_COORDS are averaged over by reports: a setting is every coordinate but these
OPTIM_COORDS = OPTIM_FIELDS  # optimizer fields a sweep varies per member
# Every field a member's coordinates can hold: its seeds and the fields its sweep varies (task, optimizer, edit).
COORDINATES = (*SEED_COORDS, *DYNAMIC_FIELDS, *OPTIM_COORDS, *INTERVENE_FIELDS)

Family = Literal["accuracy", "group", "train", "gate", "attention", "source", "ablation"]


@dataclass(frozen=True)
class Measure:
    name: str
    family: Family  # accuracy: every probe row; group: a frequency group's; train: "train" rows; ...
    doc: str
    per_head: bool = False  # a (layers, heads) list, layer-major, instead of one number


MEASURES = (
    Measure("acc", "accuracy", "accuracy on the probe set (on 'train' rows: mean training accuracy)"),
    Measure("loss", "accuracy", "mean cross-entropy on the probe set (on 'train' rows: mean training loss)"),
    Measure("acc_common", "group", "accuracy on the queries of the common frequency group; null without groups"),
    Measure("acc_rare", "group", "accuracy on the queries of the rare frequency group; null without groups"),
    Measure("stopped_at", "train", "the step a member stopped on a non-finite step; null while it trains"),
    Measure("gate_iwl", "gate", "the gated model's mean weight on its in-weight path (iclwl.models.gated)"),
    Measure("induction", "attention", "induction score of the last layer's most inductive head"),
    Measure("prev_token", "attention", "previous-token score, the largest over the first layer's heads"),
    Measure("relevant_mass", "attention", "attention of the induction head on items of the query's class"),
    Measure("irrelevant_mass", "attention", "attention of the induction head on the other items"),
    Measure("src_same_class", "source", "share of answers that are the label of a same-class context item"),
    Measure("src_memorised", "source", "share of answers that are the label memorised for the query's class"),
    Measure("src_context", "source", "share of answers that are the label of another context item"),
    Measure("src_other", "source", "share of the other answers"),
    Measure("induction_lh", "attention", "the induction score of every (layer, head)", per_head=True),
    Measure("prev_token_lh", "attention", "the previous-token score of every (layer, head)", per_head=True),
    Measure("relevant_mass_lh", "attention", "relevant attention of every (layer, head)", per_head=True),
    Measure("irrelevant_mass_lh", "attention", "irrelevant attention of every (layer, head)", per_head=True),
    Measure("ablate_drop_lh", "ablation", "accuracy lost when each (layer, head) is ablated", per_head=True),
    Measure("ablate_topk_drop", "ablation", "accuracy lost when the ablation_k most inductive heads are ablated"),
    Measure("ablate_random_drop", "ablation", "accuracy lost when as many other heads, drawn at random, are ablated"),
)
BY_NAME = {m.name: m for m in MEASURES}


def names(*families: Family, per_head: bool = False) -> tuple[str, ...]:
    """The measures of these families (all when none is named), numbers or per-head lists."""
    return tuple(m.name for m in MEASURES if (not families or m.family in families) and m.per_head == per_head)


# the mechanistic measures (iclwl.probes.mechanisms; docs/mechanisms.md): numbers, and the per-(layer, head) lists
MECHANISM_SCALARS = names("attention", "source")
MECHANISM_LISTS = names("attention", per_head=True)
ATTENTION = names("attention")
SOURCES = tuple(n.removeprefix("src_") for n in names("source"))


def value_text(coord: str, value: object) -> str:
    """A coordinate's value as people write it: an unset training-set size N is an infinite set."""
    return "∞" if value is None and coord.split(".")[-1] == "N" else str(value)


def describe(setting: tuple[tuple[str, object], ...], empty: str = "-") -> str:
    """Coordinates as people write them, ``p_relevant=0.9, N=∞``; ``empty`` when there are none."""
    return ", ".join(f"{k}={value_text(k, v)}" for k, v in setting) or empty


def is_coordinate(field: str) -> bool:
    return field in COORDINATES


def is_measurement(field: str, value: object) -> bool:
    """Whether a row field is a measurement: listed here, or any number or list that is not a coordinate."""
    if field in BY_NAME:
        return True
    return (
        field not in ROW_KEY and not is_coordinate(field) and (value is None or isinstance(value, int | float | list))
    )
