"""iclwl: in-context vs in-weight learning in small transformers trained from scratch on synthetic data."""

from iclwl.report.frames import load_runs

__all__ = ["load_runs"]
