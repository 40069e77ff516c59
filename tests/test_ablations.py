"""Ablations at evaluation (``probes.ablations``): on a transformer built by hand, in which one head copies the
label of the context item that matches the query and the other writes where the readout never looks, only the
copying head's ablation costs accuracy, and the top-1 head by induction score is that head."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_gen import ConfigError, TaskSpec, dynamic_part, make_universe, static_part
from iclwl.config import ModelConfig, ProbeConfig, from_dict, schema_dict
from iclwl.models.interventions import Intervention
from iclwl.models.transformer import Transformer
from iclwl.probes.ablations import RANDOM_SETS, topk_and_random_masks
from iclwl.probes.evaluate import evaluate_member
from iclwl.record.wandb_sink import step_logs

D, N_LABELS, L = 24, 8, 6
TASK = TaskSpec(L=L, D=D, n_labels=N_LABELS, n_classes=64, n_holdout=16, B=2, noise_scale=0.0)
DH = D + N_LABELS  # each head's width: room for an item and a label
CFG = ModelConfig(n_layers=1, n_heads=2, d_model=2 * DH, mlp_ratio=0.0, layernorm="none", pos="none", tokens="concat")


def copying_model() -> Transformer:
    """Tokens ``[x ; onehot(y)]`` go to residual dims 0..DH-1 as they are. Head 0: query and key read the item,
    sharply, the value the label, written back to the label dims; head 1 attends evenly and writes the item into
    dims DH.. which the readout ignores. The readout reads the label dims."""
    model = Transformer(CFG, D, N_LABELS, L, rngs=nnx.Rngs(0))
    d = CFG.d_model
    item, label = np.arange(D), np.arange(D, DH)
    w_in = np.zeros((DH, d))
    w_in[np.arange(DH), np.arange(DH)] = 1.0
    qkv, out = np.zeros((d, 3 * d)), np.zeros((d, d))
    qkv[item, item] = 4.0  # head 0 query (columns 0..DH-1)
    qkv[item, d + item] = 1.0  # head 0 key
    qkv[label, 2 * d + label] = 1.0  # head 0 value: the label
    out[label, label] = 1.0  # head 0 writes it to the label dims
    qkv[item, 2 * d + DH + item] = 1.0  # head 1 value: the item (its query and key are zero: uniform attention)
    out[DH + item, DH + item] = 1.0  # head 1 writes to dims the readout never reads
    readout = np.zeros((d, N_LABELS))
    readout[label, np.arange(N_LABELS)] = 1.0
    attn = model.blocks[0].attn
    for param, value in [(model.item_in.kernel, w_in), (model.item_in.bias, np.zeros(d)), (attn.qkv.kernel, qkv),
                         (attn.out.kernel, out), (attn.out.bias, np.zeros(d)), (model.readout.kernel, readout),
                         (model.readout.bias, np.zeros(N_LABELS))]:  # fmt: skip
        param.value = jnp.asarray(value, jnp.float32)
    return model


def evaluate(how: str, k: int = 1):
    st = static_part(TASK)
    probes = ProbeConfig(n_eval=256, names=("icl_novel", "iwl_no_support"), ablations=how, ablation_k=k)
    return evaluate_member(st, CFG, probes, make_universe(st), copying_model(), dynamic_part(TASK), jax.random.key(3))


@pytest.mark.parametrize("how", ["zero", "mean"])
def test_only_the_copying_head_carries_icl(how):
    out = evaluate(how)
    icl, iwl = 0, 1
    assert out.acc[icl] > 0.9, out.acc  # the hand-built model solves in-context sequences
    drop = np.asarray(out.ablation.drop)  # (P, layers, H)
    assert drop[icl, 0, 0] > 0.5, drop
    np.testing.assert_array_equal(drop[:, 0, 1], 0.0)  # what head 1 writes never reaches the answer
    # no support in context: copying a context label is always wrong, so the head can only cost accuracy there
    assert out.acc[iwl] == 0 and drop[iwl, 0, 0] <= 0
    # top-1 by induction score is the copying head; the one other head is every random draw
    np.testing.assert_allclose(out.ablation.topk_drop[icl], drop[icl, 0, 0])
    np.testing.assert_array_equal(out.ablation.random_drop, 0.0)


def test_without_top_k_only_the_heads():
    out = evaluate("zero", k=0)
    assert np.isnan(out.ablation.topk_drop).all() and np.isnan(out.ablation.random_drop).all()
    assert out.ablation.drop.shape == (2, 1, 2)


def test_an_empty_ablation_is_the_plain_model():
    """The reference accuracy of the ablations (nothing replaced) is the probe's accuracy."""
    model = copying_model()
    batch = jax.random.normal(jax.random.key(0), (4, L + 1, D)), jnp.zeros((4, L + 1), jnp.int32)
    plain = model(*batch, query_only=True)
    edited = model(*batch, query_only=True, intervention=Intervention.none(CFG, L + 1))
    np.testing.assert_allclose(plain, edited, rtol=1e-5, atol=1e-6)


def test_random_heads_are_never_the_top_ones_and_always_k():
    score = jnp.array([[0.1, 0.9, 0.2], [0.8, jnp.nan, 0.0]])  # (layers, H)
    masks = np.asarray(topk_and_random_masks(score, 2, jax.random.key(0)))
    np.testing.assert_array_equal(masks[0], [[0, 1, 0], [1, 0, 0]])  # 0.9 and 0.8; NaN ranks last
    # the 4 other heads hold 6 sets of 2: RANDOM_SETS of them drawn, none with a top head
    assert masks.shape == (1 + RANDOM_SETS, 2, 3)
    assert (masks.reshape(1 + RANDOM_SETS, -1).sum(1) == 2).all()
    assert not (masks[1:] * masks[0]).any()


def test_few_other_sets_are_all_taken_once():
    score = jnp.array([[0.5, 0.1], [0.9, 0.2]])  # top 1: L1H0; the other three heads hold 3 sets of 1
    masks = np.asarray(topk_and_random_masks(score, 1, jax.random.key(0)))
    np.testing.assert_array_equal(masks[0], [[0, 0], [1, 0]])
    assert sorted(map(tuple, masks[1:].reshape(3, -1))) == [(0, 0, 0, 1), (0, 1, 0, 0), (1, 0, 0, 0)]


def test_wandb_gets_each_heads_drop():
    row = {"step": 5, "member": 0, "probe": "icl_novel", "acc": 0.5, "ablate_drop_lh": [[0.25, None], [0.0, 0.5]],
           "ablate_topk_drop": 0.5, "induction_lh": [[0.1, 0.2], [0.3, 0.4]]}  # fmt: skip
    logged = step_logs([row], prefix_member=False)[0][5]
    assert logged == {"icl_novel/acc": 0.5, "icl_novel/ablate_topk_drop": 0.5, "icl_novel/ablate_drop/L0H0": 0.25,
                      "icl_novel/ablate_drop/L1H0": 0.0, "icl_novel/ablate_drop/L1H1": 0.5}  # fmt: skip


def probes_config(**probes):
    data = schema_dict()
    data["model"].update(n_layers=2, n_heads=1)
    data["probes"].update(probes)
    return data


@pytest.mark.parametrize(
    ("probes", "model", "rule"),
    [
        ({"ablations": "zero", "ablation_k": 2}, {}, "must be in 0 .. 1"),
        ({"ablations": "mean", "mechanisms": False}, {}, "needs probes.mechanisms=true"),
        ({"ablations": "zero"}, {"arch": "lstm"}, "needs model.arch=transformer"),
        ({"ablations": "half"}, {}, "must be one of off, zero, mean"),
    ],
)
def test_bad_ablations_are_refused(probes, model, rule):
    data = probes_config(**probes)
    data["model"].update(model)
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    assert e.value.field.startswith("probes.ablation") and rule in str(e.value), str(e.value)


def test_ablation_k_is_not_read_without_ablations():
    assert from_dict(probes_config(ablation_k=5)).probes.ablation_k == 5


def test_report_shows_each_heads_drop_and_top_k_against_random(tmp_path):
    from test_report import CURVES, write_run

    from iclwl.cli.report import main

    run_dir = write_run(tmp_path / "run", CURVES)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # seed 0 and 1 drop 0.25 and 0.75 on head L1H0 of icl_novel (mean 0.5), nothing elsewhere
        if r["probe"] != "train":
            d = (0.25 if r["seed"] == 0 else 0.75) if r["probe"] == "icl_novel" else 0.0
            r |= {"ablate_drop_lh": [[0.0, None], [d, 0.0]], "ablate_topk_drop": d, "ablate_random_drop": 0.0}
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(run_dir)]) == 0
    text = (run_dir / "report" / "ablations.md").read_text()
    assert "| setting | probe | L0H0 | L0H1 | L1H0 | L1H1 | top-k | random k |" in text
    assert "| p_bursty=1.0 | icl_novel | +0.000 | - | +0.500 | +0.000 | +0.500 | +0.000 |" in text
    assert "| p_bursty=0.0 | iwl_no_support | +0.000 | - | +0.000 | +0.000 | +0.000 | +0.000 |" in text
    assert (run_dir / "report" / "ablations.png").stat().st_size > 0


def test_a_report_without_ablations_writes_none(tmp_path):
    from test_report import CURVES, write_run

    from iclwl.cli.report import main

    run_dir = write_run(tmp_path / "run", CURVES)
    assert main([str(run_dir)]) == 0
    assert not (run_dir / "report" / "ablations.md").exists()
