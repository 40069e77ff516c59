"""What a run leaves: the fields of a metrics row (``measures``), the rows of an evaluation, the run directory and
its files, checkpoints, and the optional W&B sink."""
