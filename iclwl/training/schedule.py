"""The steps a run stops at between chunks: when the probes run and when a checkpoint is saved.

Both mix evenly spaced steps with log-spaced ones (``log_steps``), so the first steps of training, where ICL and IWL
often change fastest, are seen as well as the last.
"""

from __future__ import annotations

import numpy as np

from iclwl.config import CheckpointConfig


def log_steps(total: int, n: int) -> np.ndarray:
    """About ``n`` integer steps log-spaced from 1 to ``total`` (fewer where rounding makes two equal)."""
    if n <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.round(np.geomspace(1, total, n)).astype(np.int64))


def eval_schedule(total: int, n_log: int, every: int) -> np.ndarray:
    """Steps after which the probes run: 0, n_log log-spaced steps, every ``every`` steps, and the last."""
    every = every or max(total // 10, 1)
    steps = np.unique(np.concatenate([[0, total], log_steps(total, n_log), np.arange(every, total + 1, every)]))
    return steps.astype(np.int64)


def checkpoint_steps(cfg: CheckpointConfig, total: int, evals: np.ndarray) -> tuple[np.ndarray, set[int]]:
    """Steps to save at (always including the last) and the log-spaced ones that are never deleted."""
    rolling = np.arange(cfg.every, total + 1, cfg.every) if cfg.every else evals[evals > 0]
    forever = log_steps(total, cfg.log_spaced)
    steps = np.unique(np.concatenate([rolling, forever, [total]]).astype(np.int64))
    return steps, {int(s) for s in forever}
