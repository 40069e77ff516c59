"""The mechanisms part of the report (``iclwl.cli.report``): ICL onset against the onsets of the induction and
previous-token scores, final measures and prediction sources, per setting (docs/mechanisms.md).

Written only where the runs logged the measures (``probes.mechanisms``, rows with ``induction``/``prev_token``).
"""

from __future__ import annotations

from typing import Any

from iclwl.record.markdown import markdown_table
from iclwl.record.measures import ATTENTION, SOURCES, describe
from iclwl.report.analysis import (
    DEFAULT_PROBES,
    ReportError,
    Sweep,
    curves,
    first_step_at,
    onset_level,
    probes_of,
)


def mechanism_probes(sweep: Sweep, asked: str | None) -> tuple[str, str, str, str] | None:
    """(ICL probe, IWL probe, measure probe, sources probe), or None when the runs logged no mechanisms and
    none were asked for. The sources probe is icl_flip where present: there the context's label and the
    memorised one differ, so the shares tell ICL from IWL; otherwise in_dist."""
    measured = asked or DEFAULT_PROBES[0]
    logged = {r["probe"] for r in sweep.rows if r.get("induction") is not None or r.get("prev_token") is not None}
    if measured not in logged:
        if asked is None:
            return None
        raise ReportError(
            f"--mechanism-probe: probe '{asked}' has no mechanistic measures in the runs' metrics; "
            f"expected one of: {', '.join(sorted(logged)) or 'none (run with probes.mechanisms=true)'}"
        )
    present = probes_of(sweep)
    sourced = "icl_flip" if "icl_flip" in present else "in_dist" if "in_dist" in present else measured
    return DEFAULT_PROBES[0], DEFAULT_PROBES[1], measured, sourced


def mechanism_table(sweep: Sweep, probes: tuple[str, str, str, str], level: float | None,
                    measure_level: float) -> tuple[list[dict[str, Any]], dict]:  # fmt: skip
    """Per setting: ICL onset (the accuracy onset of the main table), the first steps the measure probe's
    induction and prev_token seed means reach ``measure_level``, final values; and the curves behind them."""
    icl, iwl, measured, sourced = probes
    series = [icl, iwl, *(f"{measured}:{m}" for m in ATTENTION)]
    series += [f"{sourced}:src_{s}" for s in SOURCES]
    found = curves(sweep, series)
    table = []
    for setting in dict.fromkeys(s for s, _ in found):

        def at(name: str, lvl: float | None = None, setting=setting):
            c = found.get((setting, name))
            if c is None:
                return None
            return first_step_at(c, lvl) if lvl is not None else float(c.mean[-1])

        row: dict[str, Any] = {"key": setting, "setting": describe(setting)}
        row["icl_onset"] = at(icl, onset_level(sweep.chance[setting], level))
        row["induction_onset"] = at(f"{measured}:induction", measure_level)
        row["prev_token_onset"] = at(f"{measured}:prev_token", measure_level)
        row["final_icl"], row["final_iwl"] = at(icl), at(iwl)
        for m in ATTENTION:
            row[f"final_{m}"] = at(f"{measured}:{m}")
        for s in SOURCES:
            row[f"final_src_{s}"] = at(f"{sourced}:src_{s}")
        table.append(row)
    return table, found


def format_mechanisms(table: list[dict[str, Any]], probes: tuple[str, str, str, str], level_text: str,
                      measure_level: float) -> str:  # fmt: skip
    icl, iwl, measured, sourced = probes

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def step(x: int | None) -> str:
        return "never" if x is None else str(x)

    lines = [
        f"ICL onset: first step where the seed mean of {icl} accuracy reaches {level_text}. Induction and "
        f"previous-token onsets: first step where the seed mean of that score on {measured} reaches "
        f"{measure_level:g}. Scores are the last layer's best induction head and the first layer's best "
        "previous-token head (docs/mechanisms.md).",
        "",
        markdown_table(
            ("setting", "ICL onset", "induction onset", "prev-token onset", f"final {icl} acc", f"final {iwl} acc",
             "final induction", "final prev_token", "final relevant / irrelevant mass"),
            [(t["setting"], step(t["icl_onset"]), step(t["induction_onset"]), step(t["prev_token_onset"]),
              num(t["final_icl"]), num(t["final_iwl"]), num(t["final_induction"]), num(t["final_prev_token"]),
              f"{num(t['final_relevant_mass'])} / {num(t['final_irrelevant_mass'])}") for t in table],
        ),
        "",
        f"Where the final answers on {sourced} come from (shares of the answers, in order of precedence):",
        "",
        markdown_table(("setting", *SOURCES),
                       [(t["setting"], *(num(t[f"final_src_{s}"]) for s in SOURCES)) for t in table]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"
