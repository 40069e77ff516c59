"""A W&B workspace for a sweep: ``iclwl-dashboard <sweep dir> [--entity E] [--project P] [--save]``.

Reads the run directories under the path (as the report does) and builds a W&B workspace that compares their
settings: every probe's accuracy against the training step, the runs grouped by the coordinates that vary
across the sweep (``p_relevant`` of a member sweep, ``L`` of a ``-m task.L=...`` multirun, ...), each group
drawn as the mean over its seeds with the min..max band. Sections: in-context probes, in-weight probes, the
training distribution and the training loss, then (where the runs have them) the rare / common frequency
groups, the shots and distance families, the mechanistic measures, and the summary table and figure each run
logged at its end.

Without ``--save`` nothing touches the network: the workspace's specification (what W&B would store) is written
to ``--out`` (default ``<path>/report/wandb_workspace.json``). ``--save`` creates the workspace in the project
and prints its address (needs ``wandb login``). Needs the ``wandb`` extra: ``pip install 'iclwl[wandb]'``.

The runs are found in W&B by their group (kept in each run directory's ``wandb_ids.json``, or the group the run
would have had), and grouped by the top-level keys of their W&B config (``iclwl.record.wandb_sink``): a member's swept
values and the job's compiled-in knobs (``config.STATIC_KNOBS``); any other config field that differs between the
jobs of a multirun is grouped by its nested name (``config.optim.warmup``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclwl.config import STATIC_KNOBS
from iclwl.record.measures import MECHANISM_SCALARS
from iclwl.record.wandb_sink import IDS_FILE, run_group
from iclwl.report.analysis import FAMILIES, ReportError, Run, combine, find_runs, probes_of, values_of

# probe -> section; probes of the shots_k / distance_d families go to their own section
SECTIONS = {
    "icl_novel": "in-context probes",
    "icl_flip": "in-context probes",
    "iwl_no_support": "in-weight probes",
    "ciwl": "in-weight probes",
    "in_dist": "training distribution",
    "train": "training distribution",
}


@dataclass(frozen=True)
class Plan:
    """What the workspace shows, in plain data (the part a test checks without wandb's classes)."""

    entity: str | None
    project: str
    name: str
    groups: list[str]  # the W&B groups of the runs
    group_by: list[str]  # W&B config keys, outermost first
    sections: dict[str, list[str]]  # section name -> the metrics it plots against step


def plan(path: Path, entity: str | None = None, project: str | None = None, name: str | None = None) -> Plan:
    """The workspace for the runs under ``path``; raises ReportError for what it cannot read or decide."""
    runs = find_runs(path)
    sweep = combine(runs)
    varying = [c for c in sweep.coords if len(values_of(sweep, c)) > 1]
    rows = sweep.rows
    probes = probes_of(sweep)
    sections: dict[str, list[str]] = {}
    for probe in ["train", *probes]:
        if probe == "train" or not probe.startswith(FAMILIES):
            field = "loss" if probe == "train" else "acc"
            sections.setdefault(SECTIONS.get(probe, "other probes"), []).append(f"{probe}/{field}")
    for group in ("rare", "common"):
        with_group = [p for p in probes if any(r["probe"] == p and r.get(f"acc_{group}") is not None for r in rows)]
        sections.setdefault("frequency groups", []).extend(f"{p}/acc_{group}" for p in with_group)
    families = [p for p in probes if p.startswith(FAMILIES)]
    if families:
        sections["shots and distance"] = [f"{p}/acc" for p in families]
    measures = [m for m in MECHANISM_SCALARS if any(r.get(m) is not None for r in rows)]
    if measures:
        sections["mechanisms"] = [f"{p}/{m}" for p in probes if not p.startswith(FAMILIES) for m in measures]
    sections = {k: v for k, v in sections.items() if v}
    return Plan(
        entity=entity if entity is not None else _agreed(runs, "wandb.entity", "--entity"),
        project=project if project is not None else _agreed(runs, "wandb.project", "--project"),
        name=name or f"iclwl {path.resolve().name}",
        groups=sorted({_group(run) for run in runs}),
        group_by=[wandb_key(c) for c in varying] or ["group"],  # one setting: its seeds together
        sections=sections,
    )


def wandb_key(coord: str) -> str:
    """The key of W&B's run config that holds a report coordinate (``iclwl.record.wandb_sink`` writes them)."""
    if "." not in coord:  # a member's coordinate: at the top
        return coord
    return coord.split(".")[-1] if coord in STATIC_KNOBS else f"config.{coord}"


def _agreed(runs: list[Run], field: str, flag: str) -> Any:
    values = {run.config.get(field) for run in runs}
    if len(values) > 1:
        raise ReportError(f"the runs have different {field} ({', '.join(map(str, sorted(values, key=str)))}); "
                          f"choose one with {flag}")  # fmt: skip
    return values.pop()


def _group(run: Run) -> str:
    """The W&B group of a run: as its W&B sink recorded it, else the group it would have had."""
    try:
        return json.loads((run.path / IDS_FILE).read_text())["group"]
    except (OSError, ValueError, KeyError):
        pass
    return run_group(run.config.get("wandb.group"), run.config.get("name", "iclwl"), run.path)


def workspace(p: Plan):
    """The W&B workspace of a plan (wandb_workspaces objects; building it needs no network)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    if p.entity is None:
        raise ReportError("the runs' config has wandb.entity = null; name the W&B entity with --entity")

    def line(metric: str):
        return wr.LinePlot(title=metric, x="step", y=[metric], groupby_aggfunc="mean", groupby_rangefunc="minmax",
                           legend_position="south")  # fmt: skip

    sections = [ws.Section(name=n, panels=[line(m) for m in ms], is_open=True) for n, ms in p.sections.items()]
    summary = [wr.WeavePanelSummaryTable(table_name="summary/table"), wr.MediaBrowser(media_keys=["summary/curves"])]
    sections.append(ws.Section(name="summary at the end of each run", panels=summary, is_open=False))
    group = expr.Metric("Group")
    only = group == p.groups[0] if len(p.groups) == 1 else group.isin(p.groups)
    keys = [expr.Metric("Group") if k == "group" else expr.Config(k) for k in p.group_by]
    return ws.Workspace(
        entity=p.entity, project=p.project, name=p.name, sections=sections,
        settings=ws.WorkspaceSettings(x_axis="step", max_runs=1000),
        runset_settings=ws.RunsetSettings(filters=[only], groupby=keys),
    )  # fmt: skip


def specification(p: Plan) -> dict[str, Any]:
    """The workspace as W&B stores it (its view), as plain data."""
    return json.loads(json.dumps(workspace(p)._spec, default=str))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    a = argparse.ArgumentParser(prog="iclwl-dashboard", description=__doc__.split("\n\n")[0])
    a.add_argument("path", type=Path, help="a run directory, or a directory holding run directories (a sweep)")
    a.add_argument("--entity", help="W&B entity (default: the runs' wandb.entity)")
    a.add_argument("--project", help="W&B project (default: the runs' wandb.project)")
    a.add_argument("--name", help="the workspace's name (default: 'iclwl <directory name>')")
    a.add_argument("--out", type=Path, help="the specification file (default: <path>/report/wandb_workspace.json)")
    a.add_argument("--save", action="store_true", help="create the workspace in W&B (network, wandb login)")
    return a.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("wandb_workspaces") is None:
        print("error: the dashboard needs wandb-workspaces: pip install 'iclwl[wandb]'", file=sys.stderr)
        return 2
    try:
        p = plan(args.path, args.entity, args.project, args.name)
        if p.entity is None and args.save:
            import wandb

            p = dataclasses.replace(p, entity=wandb.Api().default_entity)
        spec = specification(p)
        out = args.out if args.out is not None else args.path / "report" / "wandb_workspace.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(spec, indent=1) + "\n")
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    panels = sum(len(v) for v in p.sections.values())
    print(f"workspace '{p.name}' in {p.entity}/{p.project}: the runs of group {', '.join(p.groups)}, grouped by "
          f"{', '.join(p.group_by)}; {panels} line plots in {len(p.sections)} sections\nwrote: {out}")  # fmt: skip
    if args.save:
        saved = workspace(p).save()
        print(f"saved: {saved.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
