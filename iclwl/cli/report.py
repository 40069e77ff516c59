"""The report of a run or a sweep: ``iclwl-report <run dir or sweep dir> [--out DIR] [options]``.

Reads only run directories (metrics.jsonl and config.json, found recursively), combines their members by
setting (see ``iclwl.report.analysis``) and writes to ``--out`` (default ``<dir>/report``):

- ``summary.md``, ``summary.csv``: per setting and probe: final accuracy (mean, std over seeds), peak of the
  seed-mean curve and its step, drop from peak to final and the transient flag, onset step, number of seeds;
- ``curves.png``: accuracy against step, one panel per setting, mean and min..max over seeds;
- ``phase_<X>_<Y>.png``: final and peak accuracy of each probe over two coordinates (when two of them vary);
- ``mechanisms.md``, ``mechanisms.png`` (when the runs logged them, ``probes.mechanisms``): per setting, the onset
  of ICL and of the induction and previous-token scores, final measures and prediction sources; the measures
  against step on the axis of the ICL and IWL accuracies, the onsets marked (docs/mechanisms.md);
- ``ablations.md``, ``ablations.png`` (when the runs logged them, ``probes.ablations``): each head's accuracy drop on
  the ICL and the IWL probe, heads x steps, and the top-k inductive heads against k random ones;
- ``families.md``, ``families.csv``, ``families.png`` (when the runs have the ``shots_k`` / ``distance_d`` probes,
  ``probes.families``): accuracy against the number of relevant items and against their distance from the
  query, at a few steps of training (``iclwl.report.families``).

A path, probe or coordinate that is not there stops it with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from iclwl.record.markdown import markdown_table
from iclwl.report.ablations import ablation_probes, format_ablations, head_drops, plot_ablations
from iclwl.report.analysis import (
    DEFAULT_PROBES,
    GROUPS,
    ReportError,
    Sweep,
    combine,
    curves,
    find_runs,
    probes_of,
    summarise,
    values_of,
)
from iclwl.report.families import family_table, format_families
from iclwl.report.mechanisms import format_mechanisms, mechanism_probes, mechanism_table
from iclwl.report.plots import plot_families, plot_mechanisms, plot_phase, plot_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="iclwl-report", description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a run directory, or a directory holding run directories (a sweep)")
    p.add_argument("--out", type=Path, help="where to write the report (default: <path>/report)")
    p.add_argument(
        "--probes",
        nargs="+",
        metavar="PROBE",
        help=f"probes to plot and tabulate, or 'all' (default: those of {', '.join(DEFAULT_PROBES)} the runs have)",
    )
    p.add_argument(
        "--heatmap",
        nargs=2,
        metavar=("X", "Y"),
        help="two coordinates for the phase diagram (default: the first two that vary)",
    )
    p.add_argument(
        "--drop-threshold",
        type=float,
        default=0.1,
        help="a probe is flagged transient when peak - final exceeds this (default 0.1)",
    )
    p.add_argument(
        "--onset-level",
        type=float,
        help="onset = first step the seed mean reaches this accuracy (default: halfway from chance to 1)",
    )
    p.add_argument(
        "--groups",
        action="store_true",
        help="also tabulate each probe's rare and common frequency groups, where the task has them",
    )
    p.add_argument(
        "--mechanism-probe",
        help="probe whose attention measures are plotted against ICL and IWL (default: icl_novel)",
    )
    p.add_argument(
        "--measure-level",
        type=float,
        default=0.5,
        help="onset of the induction / previous-token score = first step its seed mean reaches this (default 0.5)",
    )
    p.add_argument(
        "--family-steps",
        type=int,
        default=4,
        help="steps at which accuracy against shots and distance is read, log-spaced, the last always (default 4)",
    )
    return p.parse_args(argv)


def choose_probes(sweep: Sweep, asked: list[str] | None) -> list[str]:
    present = probes_of(sweep)
    if asked is None:
        chosen = [p for p in DEFAULT_PROBES if p in present]
        if not chosen:
            raise ReportError(
                f"the runs have none of the default probes {', '.join(DEFAULT_PROBES)}; "
                f"choose with --probes from: {', '.join(present)}"
            )
        return chosen
    names = [n for a in asked for n in a.split(",") if n]  # "--probes a b" and "--probes a,b" both work
    if names == ["all"]:
        return present
    for n in names:
        if n not in present:
            raise ReportError(
                f"--probes: probe '{n}' is not in the runs' metrics; expected one of: {', '.join(present)}"
            )
    return list(dict.fromkeys(names))


def choose_axes(sweep: Sweep, asked: list[str] | None) -> tuple[str, str] | None:
    """The phase diagram's two coordinates; None when not asked for and fewer than two vary."""
    if asked is None:
        varying = [c for c in sweep.coords if len(values_of(sweep, c)) > 1]
        return (varying[0], varying[1]) if len(varying) >= 2 else None
    for c in asked:
        if c not in sweep.coords:
            known = ", ".join(sweep.coords) or "none (a single setting)"
            raise ReportError(f"--heatmap: '{c}' is not a coordinate of these runs; expected one of: {known}")
    if asked[0] == asked[1]:
        raise ReportError(f"--heatmap: '{asked[0]}' given twice; expected two different coordinates")
    return asked[0], asked[1]


def format_markdown(table: list[dict[str, Any]], drop_threshold: float) -> str:
    lines = [
        f"drop = peak - final (of the seed mean); transient: drop > {drop_threshold:g}. "
        "onset: first step where the seed mean reaches the level in brackets.",
    ]
    rows = []
    for t in table:
        onset = "never" if t["onset_step"] is None else str(t["onset_step"])
        rows.append((t["setting"], t["probe"], f"{t['final']:.3f} ± {t['final_std']:.3f}",
                     f"{t['peak']:.3f} ({t['peak_step']})", f"{t['drop']:.3f}", "yes" if t["transient"] else "no",
                     f"{onset} (≥{t['onset_level']:.3f})", t["seeds"]))  # fmt: skip
    header = ("setting", "probe", "final (mean ± std)", "peak (step)", "drop", "transient", "onset (level)", "seeds")
    return "\n".join([*lines, "", markdown_table(header, rows)]) + "\n"


SUMMARY_FIELDS = ["probe", "final", "final_std", "final_step", "peak", "peak_step", "drop", "transient", "onset_level",
                  "onset_step", "chance", "seeds"]  # fmt: skip
FAMILY_FIELDS = ["family", "step", "k", "mean", "min", "max", "seeds"]


def write_csv(path: Path, table: list[dict[str, Any]], columns: list[str]) -> None:
    """One row per table row, these columns; floats written in full (shortest exact repr), None as an empty cell."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)


def report(
    path: Path,
    out: Path | None = None,
    probes: list[str] | None = None,
    heatmap: list[str] | None = None,
    drop_threshold: float = 0.1,
    onset_level: float | None = None,
    groups: bool = False,
    mechanism_probe: str | None = None,
    measure_level: float = 0.5,
    family_steps: int = 4,
) -> list[Path]:
    """Write the report of the runs under ``path``; returns the files written."""
    if drop_threshold < 0:
        raise ReportError(f"--drop-threshold = {drop_threshold}; expected a number >= 0")
    if onset_level is not None and not 0 <= onset_level <= 1:
        raise ReportError(f"--onset-level = {onset_level}; expected an accuracy in [0, 1]")
    if not 0 <= measure_level <= 1:
        raise ReportError(f"--measure-level = {measure_level}; expected an attention share in [0, 1]")
    if family_steps < 1:
        raise ReportError(f"--family-steps = {family_steps}; expected a number of steps >= 1")
    sweep = combine(find_runs(path))
    chosen = choose_probes(sweep, probes)
    axes = choose_axes(sweep, heatmap)
    mechanisms = mechanism_probes(sweep, mechanism_probe)
    out = out if out is not None else path / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot be made ({e.strerror}); expected a writable directory") from None
    with_groups = [f"{p}:{g}" for p in chosen for g in GROUPS]
    table = summarise(sweep, chosen + with_groups if groups else chosen, drop_threshold, onset_level)
    written = [out / "summary.md", out / "summary.csv", out / "curves.png"]
    written[0].write_text(format_markdown(table, drop_threshold))
    write_csv(written[1], table, [*sweep.coords, *SUMMARY_FIELDS])
    plot_settings(curves(sweep, chosen + with_groups), chosen, sweep.chance, written[2])
    if axes is not None:
        written.append(out / f"phase_{axes[0]}_{axes[1]}.png")
        main_rows = [t for t in table if t["probe"] in chosen]
        plot_phase(main_rows, sweep.coords, axes[0], axes[1], chosen, written[-1])
    if mechanisms is not None:
        mech_table, mech_curves = mechanism_table(sweep, mechanisms, onset_level, measure_level)
        level_text = f"{onset_level:g}" if onset_level is not None else "halfway from chance to 1"
        written += [out / "mechanisms.md", out / "mechanisms.png"]
        written[-2].write_text(format_mechanisms(mech_table, mechanisms, level_text, measure_level))
        plot_mechanisms(mech_curves, mech_table, mechanisms, sweep.chance, written[-1])
    ablated = ablation_probes(sweep)
    if ablated is not None:
        drops = head_drops(sweep, ablated)
        written += [out / "ablations.md", out / "ablations.png"]
        written[-2].write_text(format_ablations(drops, ablated))
        plot_ablations(drops, ablated, written[-1])
    families = family_table(sweep, family_steps)
    if families:
        written += [out / "families.md", out / "families.csv", out / "families.png"]
        written[-3].write_text(format_families(families))
        write_csv(written[-2], families, [*sweep.coords, *FAMILY_FIELDS])
        plot_families(families, sweep.chance, written[-1])
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = report(
            args.path, args.out, args.probes, args.heatmap, args.drop_threshold, args.onset_level, args.groups,
            args.mechanism_probe, args.measure_level, args.family_steps,
        )  # fmt: skip
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(written[0].read_text())
    for extra in ("mechanisms.md", "families.md"):
        if any(p.name == extra for p in written):
            print(next(p for p in written if p.name == extra).read_text())
    print("wrote: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
