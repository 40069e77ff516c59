"""The models a run trains: the transformer and its query-only fast path, item encoders, the gated and LSTM
baselines, the reference predictors, and ``architectures`` (``model.arch`` -> the module)."""
