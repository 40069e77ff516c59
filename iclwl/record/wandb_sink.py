"""Optional Weights & Biases sink: the rows run.py writes to metrics.jsonl, also sent to W&B.

One W&B run per ensemble member (``wandb.per_member=true``): its coordinates (``seed``, swept fields) and the job's
compiled-in knobs (``L``, ``D``, model shape: what a Hydra multirun sweeps with -m) sit at the top of the run's
config, so the W&B UI can group runs by them (p_relevant x L across a multirun) and draw mean ± spread over seeds.
The member's own resolved config (its swept task and optimizer values in place, not the base ones) and the
provenance are nested under ``config`` and ``provenance``. All members of a run, and all jobs of a Hydra
multirun, share one W&B group. Metric names are ``<probe>/<field>`` (``icl_novel/acc``, ``iwl_no_support/acc_rare``,
``train/loss``) against the training step ``step``; with ``per_member=false`` one run holds every member under
``m<member>/<probe>/<field>``. The mechanistic measures go the same way (``icl_novel/induction``,
``in_dist/src_memorised``; docs/mechanisms.md). At the end of a run each W&B run gets ``summary/table`` (the
summary rows of its setting) and ``summary/curves`` (the job's figure); ``iclwl.cli.dashboard`` builds the workspace
that compares a sweep's settings from them.

W&B is never load-bearing: metrics.jsonl is the record. Any exception from W&B (no network, no login, a server
error) is reported once on stderr and turns the sink off; training goes on.

Resume: the W&B run ids are kept in ``<run dir>/wandb_ids.json`` with the last step each run received. A run
continued from a checkpoint (``start_step > 0``) reopens the same W&B runs (``resume="allow"``) and skips the steps
W&B already holds, so the curves have one point per step. A fresh start makes new W&B runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import string
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_gen import ConfigError
from iclwl.config import WandbConfig
from iclwl.record.measures import SEED_COORDS, describe, is_measurement, names

PER_HEAD_LOGGED = names("ablation", per_head=True)  # per-(layer, head) lists that W&B gets head by head

IDS_FILE = "wandb_ids.json"
SUMMARY_LEFT_OUT = ("setting",)  # the text of the coordinates, which are columns of their own


def require_wandb(cfg: WandbConfig) -> None:
    """Refuse a W&B mode without the package, before anything compiles (a cheap check, no import)."""
    if cfg.mode != "disabled" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("wandb.mode", cfg.mode, "needs the wandb package: pip install 'iclwl[wandb]' (or disabled)")


def run_group(configured: str | None, name: str, out_dir: Path) -> str:
    """The W&B group of a run: ``wandb.group`` when set, else ``default_group``."""
    return configured or default_group(name, out_dir)


def default_group(name: str, out_dir: Path) -> str:
    """The W&B group of a run: Hydra's basic sweeper writes multirun.yaml into the sweep directory, whose
    subdirectories are the jobs, so every job of one multirun lands in one group; a single run is its own group."""
    out_dir = out_dir.resolve()
    where = out_dir.parent if (out_dir.parent / "multirun.yaml").exists() else out_dir
    return f"{name}-{where.name}"


def step_logs(rows: list[dict[str, Any]], prefix_member: bool) -> dict[int, dict[int, dict[str, Any]]]:
    """Rows -> {member: {step: {metric name: value}}}: every measurement that is a number (iclwl.record.measures), and
    each head's ablation drop as ``<probe>/ablate_drop/L<layer>H<head>`` (the other per-(layer, head) lists stay in
    metrics.jsonl); missing values (None) are left out rather than logged."""
    logs: dict[int, dict[int, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        prefix = f"m{row['member']}/{row['probe']}/" if prefix_member else f"{row['probe']}/"
        entry = logs[row["member"]][row["step"]]
        for field, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and is_measurement(field, value):
                entry[prefix + field] = value
            elif field in PER_HEAD_LOGGED and isinstance(value, list):
                entry |= {f"{prefix}{field.removesuffix('_lh')}/L{i}H{j}": v
                          for i, layer in enumerate(value) for j, v in enumerate(layer) if v is not None}  # fmt: skip
    return logs


def _same_setting(row: dict[str, Any], coord: dict[str, Any]) -> bool:
    """Whether a summary row (keyed by its setting's coordinates) is the setting of a member's coordinates."""
    return all(row[k] == v for k, v in coord.items() if k in row and k not in SEED_COORDS)


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _new_id() -> str:
    # the shape of W&B's own ids (8 of [a-z0-9]); made here so resume does not depend on wandb internals
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as they come back from wandb_ids.json


class WandbSink:
    """Sends metrics rows to W&B; does nothing in mode ``disabled`` (and then never imports wandb)."""

    def __init__(
        self,
        cfg: WandbConfig,
        run_config: dict[str, Any] | list[dict[str, Any]],
        provenance: dict[str, Any],
        coords: list[dict[str, Any]],
        out_dir: Path,
        name: str,
        group: str | None,
        start_step: int = 0,
        static: dict[str, Any] | None = None,
    ):
        """``run_config``: the resolved config, or one per member (``config.member_config``), each member's W&B run
        getting its own; ``static``: the job's compiled-in knobs for the top of every run's config.
        ``group``: the caller's group for this run, used when ``cfg.group`` is null (None = ``default_group``).
        ``start_step``: the step this run starts from; > 0 = continued from a checkpoint (reopen the W&B runs)."""
        self.cfg = cfg
        self.runs: list[Any] = []  # one per member, or one for all (per_member=false)
        self.last: list[int | None] = []  # the last step each W&B run received
        self.ids_path = out_dir / IDS_FILE
        self.failed = False
        if cfg.mode == "disabled":
            return
        require_wandb(cfg)
        self.run_members = [[c] for c in coords] if cfg.per_member else [coords]  # the members of each W&B run
        saved = self._saved() if start_step > 0 else None
        self.ids = [s["id"] for s in saved] if saved else [_new_id() for _ in self.run_members]
        self.last = [s["last_step"] for s in saved] if saved else [None] * len(self.run_members)
        self.group = run_group(cfg.group or group, name, out_dir)
        root = Path(cfg.dir) if cfg.dir else out_dir
        configs = run_config if isinstance(run_config, list) else [run_config] * len(coords)
        self._guard("start", lambda: self._start(configs, provenance, coords, root, name, static or {}))

    def _saved(self) -> list[dict[str, Any]] | None:
        """The ids of the W&B runs of the interrupted run, if it had the same members."""
        try:
            saved = json.loads(self.ids_path.read_text())["runs"]
        except (OSError, ValueError, KeyError):
            return None
        return saved if [s.get("members") for s in saved] == _plain(self.run_members) else None

    def _save(self) -> None:
        triples = zip(self.ids, self.last, self.run_members, strict=True)
        runs = [{"id": i, "last_step": s, "members": g} for i, s, g in triples]
        tmp = self.ids_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"group": self.group, "runs": runs}, indent=1) + "\n")
        os.replace(tmp, self.ids_path)  # a kill while writing leaves the previous file

    def _start(self, configs, provenance, coords, root: Path, name: str, static: dict[str, Any]) -> None:
        import wandb

        root.mkdir(parents=True, exist_ok=True)
        self._save()  # before the first log: a crash from here on still resumes these ids
        for i, members in enumerate(self.run_members):
            if self.cfg.per_member:
                top, run_config = {**static, **members[0], "member": i}, configs[i]
                label = f"{name} m{i} " + describe(tuple(members[0].items()))
            else:  # one run for every member: the base config, each member's values under members
                top, label, run_config = {**static, "members": coords}, name, configs[0]
            run = wandb.init(
                entity=self.cfg.entity, project=self.cfg.project, group=self.group, job_type="train", name=label,
                tags=list(self.cfg.tags), dir=str(root), id=self.ids[i], resume="allow", mode=self.cfg.mode,
                config={**top, "config": run_config, "provenance": provenance},
                reinit="create_new",  # several live runs in one process, one per member
                # console capture would copy every member's progress bar; one process samples the machine once
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=i > 0),
            )  # fmt: skip
            run.define_metric("step")
            run.define_metric("*", step_metric="step")  # the training step is the x axis of every metric
            self.runs.append(run)
        where = f"{self.cfg.entity + '/' if self.cfg.entity else ''}{self.cfg.project}"
        note = f"; upload with: wandb sync {root / 'wandb'}/offline-run-*" if self.cfg.mode == "offline" else ""
        print(f"W&B ({self.cfg.mode}): {len(self.runs)} run(s) in {where}, group {self.group}{note}")

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Log the rows of one evaluation (as written to metrics.jsonl)."""
        if self.runs:
            self._guard("log", lambda: self._log(rows))

    def _log(self, rows: list[dict[str, Any]]) -> None:
        logs = step_logs(rows, prefix_member=not self.cfg.per_member)
        for i, run in enumerate(self.runs):
            by_step: dict[int, dict[str, Any]] = defaultdict(dict)
            for m in [i] if self.cfg.per_member else range(len(self.run_members[0])):
                for step, entry in logs.get(m, {}).items():
                    by_step[step].update(entry)
            for step in sorted(by_step):
                if self.last[i] is not None and step <= self.last[i]:
                    continue  # logged before the interruption this run resumed from
                run.log({"step": step, **by_step[step]})
                self.last[i] = step
        self._save()

    def publish(self, table: list[dict[str, Any]], figures: dict[str, Path], step: int) -> None:
        """At the end of a run: its summary table (``summary/table``, the rows of each W&B run's own setting) and
        figures (``summary/<name>``, the whole job's) beside the curves, at the run's last step."""
        if self.runs:
            self._guard("publish", lambda: self._publish(table, figures, step))

    def _publish(self, table: list[dict[str, Any]], figures: dict[str, Path], step: int) -> None:
        import wandb

        images = {f"summary/{name}": path for name, path in figures.items() if path.exists()}
        for run, members in zip(self.runs, self.run_members, strict=True):
            own = table if not self.cfg.per_member else [t for t in table if _same_setting(t, members[0])]
            columns = [c for c in own[0] if c not in SUMMARY_LEFT_OUT] if own else ["probe"]
            rows = [[_cell(t.get(c)) for c in columns] for t in own]
            media = {k: wandb.Image(str(v)) for k, v in images.items()}
            run.log({"step": step, "summary/table": wandb.Table(columns=columns, data=rows), **media})

    def close(self) -> None:
        """Finish the W&B runs. Online this waits for the upload; offline, wandb's service completes the files
        shortly after (at the latest when the process exits)."""
        runs, self.runs = self.runs, []
        for run in runs:
            if self._guard("finish", run.finish) is False:
                break

    def _guard(self, what: str, action: Callable[[], object]) -> bool:
        """Run ``action``; on any exception, warn once and turn the sink off. False when it failed."""
        try:
            action()
            return True
        except Exception as e:  # W&B must never stop training, whatever it raises
            if not self.failed:
                print(f"warning: W&B {what} failed ({type(e).__name__}: {e}); W&B logging is off for the rest of "
                      "this run; metrics.jsonl has every row", file=sys.stderr)  # fmt: skip
            self.failed = True
            # runs already open are left to wandb's exit hook: finishing them here could block on the network
            self.runs = []
            return False
