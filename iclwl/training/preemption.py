"""SIGTERM / SIGINT during training: finish the current chunk, save a checkpoint, exit with 128 + signal.

Cluster schedulers send SIGTERM before they preempt a job (SLURM: ``#SBATCH --signal=B:TERM@120`` gives two
minutes). The first signal only sets a flag that the training loop reads between chunks; a second one acts as
usual (a second Ctrl-C interrupts at once). The exit code is the shell's for a process ended by the signal
(143 for SIGTERM, 130 for SIGINT), so a requeue rule or wrapper sees a preemption, not a finished run.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class Preempted(Exception):
    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                         f"rerun with train.resume=<run dir> to continue")  # fmt: skip


class StopRequests:
    """Context manager that turns the first SIGTERM/SIGINT into ``self.signum`` (None until one arrives)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])  # a second signal acts as it would without us

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
