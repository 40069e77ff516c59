"""The reproductions of docs/reproductions.md, one command each.

    iclwl-reproduce chan2024_n                  # train, then write the figures and tables
    iclwl-reproduce chan2024_n --seeds 5 --out runs/repro
    iclwl-reproduce --list

An entry trains its CPU-scale preset (``conf/experiment/*_cpu.yaml``) with ``--seeds`` seeds that each redraw the
data as well as the initialisation (``train.seeds = train.data_seeds = 0 .. n-1``): all settings and seeds of a
job are members of one program, and a static setting that varies (the burst size B, the context length L) is one
job per value, as a Hydra multirun would run them. Then it writes the report of the entry's jobs
(``iclwl.cli.report``) to ``<out>/<entry>/report``: ``summary.md`` (final accuracy, mean ± std over the seeds; peak,
drop, onset) and the figures (curves with the seeds' min..max band, phase diagrams, mechanisms).

Each job keeps its checkpoints, so a rerun of a stopped reproduction continues where it stopped, and a rerun of a
finished one only rewrites the report.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from data_gen import ConfigError


@dataclass(frozen=True)
class Entry:
    experiment: str  # the preset
    about: str  # what the paper found, in a line
    jobs: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"run": ()})  # job directory -> overrides
    probes: tuple[str, ...] = ()  # the report's --probes (() = its default, icl_novel and iwl_no_support)
    groups: bool = False  # the report's --groups: each probe's rare and common classes too
    heatmap: tuple[str, str] | None = None  # the report's --heatmap


CHAN2024_PROBES = ("icl_flip", "icl_novel", "iwl_no_support")
ENTRIES: dict[str, Entry] = {
    "chan2022_bursty": Entry("chan2022_bursty_cpu", "Chan 2022: ICL needs bursty sequences; i.i.d. ones give IWL"),
    "chan2022_zipf": Entry("chan2022_zipf_cpu", "Chan 2022: ICL falls and IWL rises with the Zipf exponent; both "
                           "at alpha = 1", groups=True),
    "chan2022_exemplars": Entry("chan2022_exemplars_cpu", "Chan 2022: within-class variation strengthens ICL",
                                jobs={f"exemplars_{e}": (f"task.exemplars={e}",) for e in (1, 20)}),
    "reddy2023_bk": Entry("reddy2023_bk_cpu", "Reddy 2023: ICL rises with B and K, IWL falls with K",
                          jobs={f"B_{b}": (f"task.B={b}",) for b in (1, 2, 4)}),
    "reddy2023_bursty": Entry("reddy2023_bursty_cpu", "Reddy 2023: non-bursty data gives IWL; bursty data an abrupt "
                              "ICL onset with an induction head"),
    "reddy2023_interventions": Entry("reddy2023_interventions_cpu", "Reddy 2023 / Singh 2024: the induction head "
                                     "carries ICL and forms only after a previous-token head"),
    "chan2024_prelevant": Entry("chan2024_prelevant_cpu", "Chan 2024: no relevant context, no ICL; more of it, more "
                                "ICL", probes=CHAN2024_PROBES, groups=True),
    "chan2024_n": Entry("chan2024_n_cpu", "Chan 2024: as N grows ICL fades and IWL takes over",
                        probes=CHAN2024_PROBES, groups=True),
    "chan2024_phigh": Entry("chan2024_phigh_cpu", "Chan 2024: rare classes answered from the context, common ones "
                            "from the weights", probes=CHAN2024_PROBES, groups=True),
    "chan2024_lrelevant": Entry("chan2024_lrelevant_cpu", "Chan 2024: more relevant items help ICL",
                                probes=CHAN2024_PROBES),
    "chan2024_L": Entry("chan2024_lrelevant_cpu", "Chan 2024: irrelevant items around one relevant one hurt ICL",
                        jobs={f"L_{n}": (f"task.L={n}", "sweep.L_relevant=[1]") for n in (1, 2, 4, 8)},
                        probes=CHAN2024_PROBES, heatmap=("task.L", "N")),
    "singh2023": Entry("singh2023_transient_cpu", "Singh 2023/2025: ICL is transient, L2 keeps it, CIWL after it",
                       probes=("icl_novel", "iwl_no_support", "ciwl")),
}  # fmt: skip


def seed_overrides(n: int) -> list[str]:
    seeds = "[" + ",".join(map(str, range(n))) + "]"
    return [f"train.seeds={seeds}", f"train.data_seeds={seeds}"]


def reproduce(name: str, out: Path, seeds: int) -> list[Path]:
    """Train entry ``name`` into ``out/<name>/<job>`` and write its report; returns the report's files."""
    from iclwl.cli.compose import compose
    from iclwl.cli.report import report
    from iclwl.run import run

    entry = ENTRIES[name]
    root = out / name
    configs = {job: compose([f"experiment={entry.experiment}", *extra, *seed_overrides(seeds),
                             "logging.progress=false"]) for job, extra in entry.jobs.items()}  # fmt: skip
    for job, cfg in configs.items():  # every job validated before the first one trains
        print(f"{name}: job {job} -> {root / job}", flush=True)
        run(cfg, root / job)
    return report(root, root / "report", list(entry.probes) or None, list(entry.heatmap or []) or None,
                  groups=entry.groups)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="iclwl-reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("entry", nargs="?", help=f"one of: {', '.join(ENTRIES)}")
    p.add_argument("--out", type=Path, default=Path("runs/repro"), help="where the runs go (default runs/repro)")
    p.add_argument("--seeds", type=int, default=3, help="seeds, each redrawing the data (default 3)")
    p.add_argument("--list", action="store_true", help="list the entries and what each reproduces")
    args = p.parse_args(argv)
    if args.list or args.entry is None:
        for key, e in ENTRIES.items():
            print(f"{key:20s} {e.about} (experiment={e.experiment}, {len(e.jobs)} job(s))")
        return 0
    if args.entry not in ENTRIES:
        print(f"error: entry = {args.entry}: unknown; expected one of {', '.join(ENTRIES)}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print(f"error: --seeds = {args.seeds}: must be >= 1", file=sys.stderr)
        return 2
    from iclwl.cli.compose import ComposeError
    from iclwl.cli.report import ReportError
    from iclwl.record.checkpoints import CheckpointError
    from iclwl.record.rundir import RunDirError, RunIOError
    from iclwl.run import NonFiniteLoss
    from iclwl.training.preemption import Preempted

    try:
        written = reproduce(args.entry, args.out, args.seeds)
    except (ConfigError, ComposeError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (RunDirError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except RunIOError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except Preempted as e:
        print(f"{e}; rerun the same command to continue", file=sys.stderr)
        return e.exit_code
    print(written[0].read_text())
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
