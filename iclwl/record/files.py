"""What a run leaves in its directory: metrics.jsonl rows, the resolved config, provenance, a summary table.

Reports read only these files. A row is one (step, member, probe); its fields are listed in ``iclwl.record.measures``::

    {"step": 500, "member": 0, "probe": "icl_novel", "acc": 0.41, "loss": 2.1, "acc_common": null,
     "acc_rare": null, "seed": 0, "p_bursty": 1.0}

Probe "train" rows carry the mean training loss and accuracy over the steps since the previous evaluation.

With ``probes.mechanisms`` (the default) every probe row also carries the measures of ``iclwl.probes.mechanisms``
(docs/mechanisms.md), null where undefined::

    "induction": 0.83, "prev_token": 0.97, "relevant_mass": 0.9, "irrelevant_mass": 0.05,
    "src_same_class": 0.8, "src_memorised": 0.1, "src_context": 0.05, "src_other": 0.05,
    "induction_lh": [[0.1, 0.2], [0.83, 0.1]], "prev_token_lh": [[0.97, 0.3], [0.2, 0.1]],
    "relevant_mass_lh": [...], "irrelevant_mass_lh": [...]

The scalars are the headline numbers (induction, relevant_mass, irrelevant_mass: the last layer's head with the
largest induction score; prev_token: the largest over the first layer's heads); the ``*_lh`` fields hold every
(layer, head), layer-major. The four ``src_*`` shares sum to 1. Rows written before these fields existed simply
lack them; readers take what is there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from iclwl.record.markdown import markdown_table


class MetricsFile:
    """Appends rows to metrics.jsonl, flushed after every chunk so a stopped run keeps what it measured."""

    def __init__(self, path: Path):
        self.path = path
        self.file = path.open("a")

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        # after a failed write (reported already) closing may fail too; what reached the file stays readable
        with contextlib.suppress(OSError):
            self.file.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a last line cut short by a killed process is ignored."""
    rows = []
    with path.open() as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_metrics(path: Path, step: int) -> int:
    """Keep only the rows up to ``step`` (where a resumed run picks up); returns how many were dropped.
    The file is replaced atomically, so an interruption here leaves the old one."""
    rows = read_metrics(path) if path.exists() else []
    kept = [r for r in rows if r["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return len(rows) - len(kept)


def write_config(path: Path, cfg) -> None:
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def provenance() -> dict[str, Any]:
    """Where a run came from: code version, packages, devices, command line."""
    import flax
    import hydra
    import jax
    import optax
    import orbax.checkpoint

    checkout = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=checkout)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    # the git commit only of this project's own checkout: an installed package may sit inside another repository
    top = git("rev-parse", "--show-toplevel")
    in_checkout = top is not None and Path(top).resolve() == checkout and (checkout / "pyproject.toml").is_file()
    try:
        version = importlib.metadata.version("iclwl")
    except importlib.metadata.PackageNotFoundError:  # a checkout used without installing it
        version = None
    return {
        "iclwl_version": version,
        "git_commit": git("rev-parse", "HEAD") if in_checkout else None,
        "git_dirty": bool(git("status", "--porcelain")) if in_checkout else None,
        "python": platform.python_version(),
        "versions": {
            m.__name__: getattr(m, "__version__", None) for m in (jax, flax, optax, orbax.checkpoint, np, hydra)
        },
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "processes": jax.process_count(),  # more than one: one ensemble over several processes (hosts)
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_flags": {k: v for k, v in os.environ.items() if k.startswith("JAX_")},
        "command": sys.argv,
    }


def format_table(table: list[dict[str, Any]]) -> str:
    """The run's summary.md: final and peak accuracy per setting and probe."""
    rows = [(t["setting"], t["probe"], f"{t['final']:.3f} ± {t['final_std']:.3f}",
             f"{t['peak']:.3f} ({t['peak_step']})", t["seeds"]) for t in table]  # fmt: skip
    return markdown_table(("setting", "probe", "final acc", "peak acc (step)", "seeds"), rows)
