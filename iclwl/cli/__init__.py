"""The commands: ``iclwl-train`` (``train``), ``iclwl-report``, ``iclwl-reference``, ``iclwl-reproduce``,
``iclwl-dashboard``, and ``compose`` (the config a command line gives, without a Hydra app)."""
