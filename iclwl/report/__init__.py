"""Reading runs back: runs and settings (``analysis``), shot and distance families, mechanisms, figures, and runs as
a DataFrame (``frames``). The report command itself is ``iclwl.cli.report``."""
