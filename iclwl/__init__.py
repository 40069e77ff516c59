"""iclwl: in-context vs in-weight learning in small transformers trained from scratch on synthetic data."""

from __future__ import annotations

__all__ = ["load_runs"]


def __getattr__(name: str):
    # imported on first use: pandas and matplotlib cost a second or more, which a training process never needs
    if name == "load_runs":
        from iclwl.report.frames import load_runs

        return load_runs
    raise AttributeError(f"module 'iclwl' has no attribute {name!r}")
