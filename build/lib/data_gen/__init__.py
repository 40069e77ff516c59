"""Synthetic ICL/IWL sequence generators: pure JAX, runnable inside jit, one setting per ensemble member."""

from data_gen.errors import ConfigError
from data_gen.probes import PROBES, probe_batch, probe_names
from data_gen.sequences import TRAIN, Batch, Draw, sample_batch, sample_sequence, stored_sequences
from data_gen.spec import DYNAMIC_FIELDS, TaskParams, TaskSpec, TaskStatic, dynamic_part, static_part, validate
from data_gen.universe import Universe, make_universe

__all__ = [
    "DYNAMIC_FIELDS",
    "PROBES",
    "TRAIN",
    "Batch",
    "ConfigError",
    "Draw",
    "TaskParams",
    "TaskSpec",
    "TaskStatic",
    "Universe",
    "dynamic_part",
    "make_universe",
    "probe_batch",
    "probe_names",
    "sample_batch",
    "sample_sequence",
    "static_part",
    "stored_sequences",
    "validate",
]
