"""What a run spends before and around its training: whole ``train.py`` processes with an empty compilation cache
and again with the cache they filled, and how much of each went to tracing, lowering, compiling and loading
compiled programs.

JAX logs every traced, lowered and compiled program (``JAX_LOG_COMPILES``) with its time, and so does
``iclwl/training/stored.py`` for the programs it keeps (the initialisation, the training chunk, the evaluation):
how long each took to load, in background threads, and how long the run then waited for it. This script runs the
command with those logs on and prints, next to the process's wall time: trace, lower and compile (with a warm
cache "compile" is loading small programs from JAX's cache), "wait" (the run waiting for its stored programs) and
their sum, the time start-up spends in JAX's machinery; "load" is the stored programs' loading, most of it while
the run does other work.

    python benchmarks/warm_start.py                        # the Chan 2024 setting, 1500 steps, 3 rounds
    python benchmarks/warm_start.py --rounds 5 -- experiment=icl_vs_iwl train.steps=500

Each round runs one process with a fresh cache directory, then one with the cache it filled; every process gets a
fresh run directory. Overrides after ``--`` replace the Chan 2024 ones.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAN2024 = ["experiment=none", "task=chan2024", "task.N=1024", "model=chan2024", "optim=adam", "optim.lr=3e-4",
            "train.batch_size=32", "train.steps=1500"]  # fmt: skip
KINDS = {"trace": r"Finished tracing (?:\+ transforming )?.* in ([0-9.e-]+) sec",
         "lower": r"Finished jaxpr to MLIR module conversion .* in ([0-9.e-]+) sec",
         "compile": r"Finished XLA compilation of .* in ([0-9.e-]+) sec",
         "wait": r"Waited ([0-9.e-]+) sec for stored program",
         "load": r"Finished loading stored program .* in ([0-9.e-]+) sec"}  # fmt: skip
MACHINERY = ("trace", "lower", "compile", "wait")  # what start-up waits for


def one(overrides: list[str], cache: Path, run_dir: Path) -> dict[str, float]:
    env = {**os.environ, "JAX_LOG_COMPILES": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "logging.progress=false",
           f"train.compile_cache={cache}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=run_dir.parent)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"train.py failed:\n{out.stderr[-3000:]}")
    log = out.stdout + out.stderr
    return {"wall": wall, **{k: sum(float(x) for x in re.findall(p, log)) for k, p in KINDS.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("overrides", nargs="*", help="train.py overrides (default: the Chan 2024 setting)")
    args = ap.parse_args()
    overrides = args.overrides or CHAN2024
    rows: dict[str, list[dict[str, float]]] = {"empty cache": [], "second run": []}
    with tempfile.TemporaryDirectory(prefix="iclwl-warm-") as tmp:
        for r in range(args.rounds):
            cache = Path(tmp) / f"cache{r}"
            rows["empty cache"].append(one(overrides, cache, Path(tmp) / f"cold{r}"))
            rows["second run"].append(one(overrides, cache, Path(tmp) / f"warm{r}"))
    print(f"train.py {' '.join(overrides)}; {args.rounds} rounds, medians (seconds)\n")
    print("| process | wall | trace | lower | compile | wait | trace + lower + compile + wait | load (background) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        med = {k: statistics.median(x[k] for x in runs) for k in ("wall", *KINDS)}
        total = statistics.median(sum(x[k] for k in MACHINERY) for x in runs)
        print(f"| {name} | {med['wall']:.1f} | {med['trace']:.2f} | {med['lower']:.2f} | {med['compile']:.2f} "
              f"| {med['wait']:.2f} | {total:.2f} | {med['load']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
