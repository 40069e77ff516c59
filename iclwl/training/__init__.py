"""Training an ensemble: the compiled program of a chunk (``program``), the optimizer, groups of members,
their placement on devices, the compilation cache and preemption signals."""
