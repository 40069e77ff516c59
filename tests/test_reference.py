"""Reference predictors and the other archs: pure ICL and pure IWL score what they must on the probes; the gated
model and the LSTM train through the ensemble program, respect causality, and equal their single runs."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from data_gen import ConfigError
from iclwl.cli.reference import evaluate_reference, format_reference, main, reference_metrics
from iclwl.config import CheckpointConfig, LoggingConfig, ModelConfig, OptimConfig, ProbeConfig, TrainConfig, from_dict
from iclwl.models.architectures import ARCHS, build_model
from iclwl.models.gated import Gated
from iclwl.models.lstm import LSTM
from iclwl.models.transformer import Transformer
from iclwl.record.checkpoints import resume_conflicts
from iclwl.record.measures import MECHANISM_LISTS, MECHANISM_SCALARS
from iclwl.run import ensemble_static, run
from tests.test_training import TINY_TASK, assert_member_is_single_run, tiny, train

PROBES = ["in_dist", "icl_novel", "icl_flip", "iwl_no_support", "ciwl"]
N_EVAL = 2000
GATED = ModelConfig(arch="gated", d_model=16)
LSTM_CFG = ModelConfig(arch="lstm", n_layers=2, d_model=16)
QUIET, NO_CHECKPOINTS = LoggingConfig(progress=False, plot=False), CheckpointConfig(enabled=False)


def binomial_bounds(n: int, p: float, tail: float = 1e-6) -> tuple[float, float]:
    """Accuracies [lo, hi] that a Binomial(n, p) count over n leaves with probability below ``tail`` on each side."""
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p)) for k in range(n + 1)]  # fmt: skip
    cdf = np.cumsum(pmf)
    lo = int(np.searchsorted(cdf, tail))  # P(X < lo) < tail
    hi = int(np.searchsorted(cdf, 1 - tail))  # P(X > hi) < tail
    return lo / n, hi / n


def accuracies(cfg, predictor: str) -> dict[str, float]:
    acc = np.asarray(reference_metrics(cfg, predictor).acc[0])
    return dict(zip(PROBES, acc.tolist(), strict=True))


def test_binomial_bounds_cover_the_mean():
    lo, hi = binomial_bounds(N_EVAL, 1 / 8)
    assert lo < 1 / 8 < hi and hi - lo < 0.075  # about +- 4.8 standard errors (0.0074 each)


def test_nearest_context_is_pure_icl():
    """Noise-free items: the nearest context item is of the query's class whenever one is there."""
    cfg = tiny(task=dataclasses.replace(TINY_TASK, noise_scale=0.0), probes=ProbeConfig(n_eval=N_EVAL))
    acc = accuracies(cfg, "nearest_context")
    assert acc["icl_novel"] == 1.0 and acc["icl_flip"] == 1.0 and acc["in_dist"] == 1.0, acc
    # no context item carries the query's label there, so copying one is always wrong: exactly 0, below chance
    assert acc["iwl_no_support"] == 0.0, acc


def test_nearest_context_with_noise_still_reads_the_context():
    acc = accuracies(tiny(probes=ProbeConfig(n_eval=N_EVAL)), "nearest_context")  # eps = 0.1
    assert acc["icl_novel"] > 0.97 and acc["icl_flip"] > 0.97 and acc["iwl_no_support"] == 0.0, acc


def test_nearest_prototype_is_pure_iwl():
    """The memorised map answers every training-class query and knows nothing of novel classes' random labels."""
    cfg = tiny(task=dataclasses.replace(TINY_TASK, noise_scale=0.0), probes=ProbeConfig(n_eval=N_EVAL))
    acc = accuracies(cfg, "nearest_prototype")
    assert acc["iwl_no_support"] == 1.0 and acc["in_dist"] == 1.0 and acc["ciwl"] == 1.0, acc
    assert acc["icl_flip"] == 0.0, acc  # the flipped label is never the memorised one
    # icl_novel: labels drawn afresh in each sequence, independent of the prediction: Binomial(n, 1/V) correct
    lo, hi = binomial_bounds(N_EVAL, 1 / cfg.task.n_labels)
    assert lo <= acc["icl_novel"] <= hi, (acc, lo, hi)


def test_nearest_prototype_with_low_noise():
    acc = accuracies(tiny(probes=ProbeConfig(n_eval=N_EVAL)), "nearest_prototype")  # eps = 0.1
    assert acc["iwl_no_support"] > 0.95, acc
    lo, hi = binomial_bounds(N_EVAL, 1 / TINY_TASK.n_labels)
    assert lo <= acc["icl_novel"] <= hi, (acc, lo, hi)


def test_reference_rows_share_the_metrics_schema(tmp_path):
    with_measures = dataclasses.replace(tiny().probes, mechanisms=True)
    rows = evaluate_reference(tiny(probes=with_measures))
    assert {r["predictor"] for r in rows} == {"nearest_context", "nearest_prototype"}
    assert len(rows) == 2 * len(PROBES)
    run(tiny(logging=QUIET, checkpoint=NO_CHECKPOINTS, probes=with_measures), tmp_path)
    trained = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    probe_row = next(r for r in trained if r["probe"] != "train")
    # the trained transformer's rows also carry its attention measures, which the predictors do not have
    assert set(probe_row) - set(rows[0]) == {k for k in probe_row if k in MECHANISM_SCALARS + MECHANISM_LISTS} - {
        k for k in rows[0]
    }
    assert {"acc", "loss", "src_same_class", "predictor"} <= set(rows[0]) <= set(probe_row) | {"predictor"}
    table = format_reference(rows)
    assert "| nearest_context | - |" in table and "icl_novel" in table


def test_cli_prints_the_table(capsys, tmp_path):
    out = tmp_path / "ref.jsonl"
    small = ["experiment=none", "task.n_classes=72", "task.n_holdout=8", "task.D=8", "probes.n_eval=64"]
    main([*small, "--out", str(out)])
    assert "| nearest_prototype | - |" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 2 * len(PROBES)


# ------------------------------------------------------------------------------------------ the other archs


@pytest.mark.parametrize("model_cfg", [GATED, LSTM_CFG, dataclasses.replace(LSTM_CFG, tokens="concat")],
                         ids=["gated", "lstm", "lstm-concat"])  # fmt: skip
def test_arch_is_causal_and_query_only_matches(model_cfg):
    L, D, V, B = 4, 5, 7, 3
    model = ARCHS[model_cfg.arch](model_cfg, D, V, L, rngs=nnx.Rngs(0))
    k1, k2 = jax.random.split(jax.random.key(1))
    items, labels = jax.random.normal(k1, (B, L + 1, D)), jax.random.randint(k2, (B, L + 1), 0, V)
    base = model(items, labels)
    assert base.shape == (B, L + 1, V) and np.all(np.isfinite(base))
    np.testing.assert_allclose(model(items, labels, query_only=True)[:, 0], base[:, -1], rtol=1e-5, atol=1e-6)
    for j in range(L + 1):
        changed = model(items.at[:, j].add(3.0), labels)
        np.testing.assert_allclose(changed[:, :j], base[:, :j], atol=1e-5)
        assert not np.allclose(changed[:, j], base[:, j], atol=1e-5), "the changed item itself must matter"
        if j < L:
            changed = model(items, labels.at[:, j].set((labels[:, j] + 1) % V))
            seen_from = j if model_cfg.tokens == "concat" and model_cfg.arch == "lstm" else j + 1
            np.testing.assert_allclose(changed[:, :seen_from], base[:, :seen_from], atol=1e-5)
            assert not np.allclose(changed[:, -1], base[:, -1], atol=1e-6), "the query must see the label"
    np.testing.assert_allclose(model(items, labels.at[:, -1].set(0)), base, atol=0)  # the target is never read


def test_build_model_picks_the_arch_and_keeps_the_transformer():
    st = ensemble_static(tiny())
    assert isinstance(build_model(GATED, st, jax.random.key(0)), Gated)
    assert isinstance(build_model(LSTM_CFG, st, jax.random.key(0)), LSTM)
    built = nnx.state(build_model(tiny().model, st, jax.random.key(3)), nnx.Param)
    direct = nnx.state(Transformer(tiny().model, st.D, st.n_labels, st.L, rngs=nnx.Rngs(jax.random.key(3))), nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, built, direct)


@pytest.mark.parametrize("model_cfg,context_loss", [(GATED, True), (LSTM_CFG, False)], ids=["gated", "lstm"])
def test_arch_trains_through_the_ensemble(model_cfg, context_loss):
    cfg = tiny(model=model_cfg, train=TrainConfig(steps=20, batch_size=16, chunk_steps=10, context_loss=context_loss))
    _, out, probes = train(cfg, [0, 1], 20)
    assert out.loss.shape == (20, 2) and np.all(np.isfinite(out.loss)) and out.trained.all()
    assert probes.acc.shape == (2, len(PROBES)) and np.all(np.isfinite(probes.loss))
    assert out.loss[-5:].mean() < out.loss[:5].mean(), "a few steps of Adam must lower the loss"
    if model_cfg.arch == "gated":
        gate = np.asarray(probes.measures["gate_iwl"])
        assert gate.shape == (2, len(PROBES)) and np.all((gate > 0) & (gate < 1))
    else:
        assert probes.measures == {}


def test_gated_member_of_ensemble_equals_single_run():
    assert_member_is_single_run(tiny(model=GATED), [3, 5, 7], m=1)  # the gate's value among the measures


def test_tiny_gated_model_learns_iwl():
    """Eight classes, no bursts, identity labels: the IWL half memorises them and the gate leans to it."""
    task = dataclasses.replace(TINY_TASK, K=8, p_bursty=0.0, label_map="identity", n_labels=32)
    cfg = tiny(task=task, model=GATED, train=TrainConfig(steps=300, batch_size=32, chunk_steps=100),
               optim=OptimConfig(lr=3e-3))  # fmt: skip
    _, _, probes = train(cfg, [0], 300)
    acc = dict(zip(PROBES, np.asarray(probes.acc[0]).tolist(), strict=True))
    gate = dict(zip(PROBES, np.asarray(probes.measures["gate_iwl"][0]).tolist(), strict=True))
    assert acc["iwl_no_support"] > 0.95, acc
    assert acc["icl_flip"] < 0.2, acc  # it answers from memory, so shifted labels fail
    assert gate["iwl_no_support"] > 0.5, gate


def test_run_records_the_gate(tmp_path):
    run(tiny(model=GATED, logging=QUIET, checkpoint=NO_CHECKPOINTS), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    probe_rows = [r for r in rows if r["probe"] != "train"]
    assert probe_rows and all(0 < r["gate_iwl"] < 1 for r in probe_rows)
    assert all("gate_iwl" not in r for r in rows if r["probe"] == "train")


def test_arch_validation():
    with pytest.raises(ConfigError, match=r"model\.arch = 'rnn': must be one of transformer, gated, lstm"):
        from_dict({"model": {"arch": "rnn"}})
    with pytest.raises(ConfigError, match="an LSTM has no MLP or attention"):
        tiny(model=LSTM_CFG, optim=OptimConfig(decay_mask="mlp"))
    # transformer-only settings are ignored by the other archs, so presets run with any arch
    assert tiny(model=dataclasses.replace(LSTM_CFG, n_heads=3, pos="onehot", max_offset=4)).model.arch == "lstm"
    with pytest.raises(ConfigError, match="divisible by n_heads"):
        tiny(model=ModelConfig(d_model=16, n_heads=3))


def test_checkpoints_from_before_the_arch_setting_still_resume():
    saved = json.loads(json.dumps(dataclasses.asdict(tiny())))
    del saved["model"]["arch"]  # a config written before model.arch existed: a transformer
    assert resume_conflicts(saved, tiny()) == []
    assert "model.arch='transformer' -> 'gated'" in resume_conflicts(saved, tiny(model=GATED))
