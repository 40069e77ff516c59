"""Mechanistic measures: exact scores of hand-built attention patterns, prediction sources of a hand-built batch,
the row fields of a tiny real run, and the report's onsets of hand-made curves."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_training import tiny

from data_gen import Batch, TaskSpec, make_universe, static_part
from iclwl.cli.report import main
from iclwl.config import CheckpointConfig, Config, LoggingConfig, ProbeConfig, TrainConfig
from iclwl.probes.evaluate import memorised_labels
from iclwl.probes.mechanisms import attention_measures, headline, per_head, prediction_sources
from iclwl.record.files import read_metrics, write_config
from iclwl.record.measures import MECHANISM_LISTS, MECHANISM_SCALARS, SOURCES
from iclwl.record.rows import probe_rows
from iclwl.run import ensemble_static, run
from iclwl.training.program import Program, compiled, member_inputs

# L = 4 context pairs; the query (class 1) shares its class with items 0 and 2
CLASSES = jnp.array([[1, 2, 1, 3, 1]])  # (B=1, L+1)
L, N_REL = 4, 2


def causal_uniform(T: int) -> jnp.ndarray:
    """(1, 1, T, T): every token attends equally to itself and all tokens before it."""
    w = np.tril(np.ones((T, T)))
    return jnp.asarray(w / w.sum(-1, keepdims=True))[None, None]


def one_hot_rows(T: int, targets: dict[int, dict[int, float]]) -> jnp.ndarray:
    """(1, 1, T, T): row t puts the given weights on the given tokens; rows not given attend to themselves."""
    w = np.eye(T)
    for row, weights in targets.items():
        w[row] = 0.0
        for col, v in weights.items():
            w[row, col] = v
    return jnp.asarray(w)[None, None]


def test_exact_induction_pattern_scores_one():
    T = 2 * L + 1  # interleaved: labels of items 0 and 2 are tokens 1 and 5; the query is token 8
    m = attention_measures(one_hot_rows(T, {8: {1: 0.5, 5: 0.5}}), CLASSES, "interleaved")
    assert (float(m.induction[0]), float(m.relevant_mass[0]), float(m.irrelevant_mass[0])) == (1.0, 1.0, 0.0)
    # concat: the relevant pair tokens 0 and 2 hold the labels
    m = attention_measures(one_hot_rows(L + 1, {4: {0: 0.25, 2: 0.75}}), CLASSES, "concat")
    assert (float(m.induction[0]), float(m.relevant_mass[0]), float(m.irrelevant_mass[0])) == (1.0, 1.0, 0.0)
    # attention on the relevant *items* (not their labels) is relevant mass but no induction
    m = attention_measures(one_hot_rows(T, {8: {0: 0.5, 4: 0.5}}), CLASSES, "interleaved")
    assert (float(m.induction[0]), float(m.relevant_mass[0])) == (0.0, 1.0)


def test_uniform_attention_scores_the_uniform_share():
    T = 2 * L + 1
    m = attention_measures(causal_uniform(T), CLASSES, "interleaved")
    np.testing.assert_allclose(m.induction, [N_REL / T], rtol=1e-6)  # 2 of the 9 tokens the query sees
    np.testing.assert_allclose(m.relevant_mass, [2 * N_REL / T], rtol=1e-6)  # both tokens of each relevant pair
    np.testing.assert_allclose(m.irrelevant_mass, [2 * (L - N_REL) / T], rtol=1e-6)
    # label token 2i + 1 sees 2i + 2 tokens, one of them its item
    np.testing.assert_allclose(m.prev_token, [np.mean([1 / (2 * i + 2) for i in range(L)])], rtol=1e-6)
    m = attention_measures(causal_uniform(L + 1), CLASSES, "concat")
    np.testing.assert_allclose(m.induction, [N_REL / (L + 1)], rtol=1e-6)
    np.testing.assert_allclose(m.irrelevant_mass, [(L - N_REL) / (L + 1)], rtol=1e-6)
    assert np.isnan(m.prev_token[0])  # no separate label token


def test_previous_token_pattern_scores_one():
    T = 2 * L + 1
    m = attention_measures(one_hot_rows(T, {2 * i + 1: {2 * i: 1.0} for i in range(L)}), CLASSES, "interleaved")
    assert float(m.prev_token[0]) == 1.0
    assert float(m.induction[0]) == 0.0  # the query attends to itself


def test_sequences_without_a_relevant_item_are_left_out():
    T = 2 * L + 1
    weights = jnp.concatenate([one_hot_rows(T, {8: {1: 1.0}}), causal_uniform(T)])  # (2, 1, T, T)
    classes = jnp.array([[1, 2, 3, 4, 1], [2, 3, 4, 5, 1]])  # only the first holds the query's class
    m = attention_measures(weights, classes, "interleaved")
    assert float(m.induction[0]) == 1.0
    m = attention_measures(weights[1:], classes[1:], "interleaved")
    assert np.isnan(m.induction[0]) and np.isnan(m.relevant_mass[0])
    assert headline({k: np.asarray(v)[None] for k, v in m._asdict().items()})["induction"] is None


def test_prediction_sources_of_a_hand_built_batch():
    # L = 3; the query's class is 1 unless novel (-1); memorised: the query class's label, -1 where none
    rows = [  # context labels, context classes, memorised, answer, expected source
        ([5, 6, 5], [1, 2, 1], 5, 5, "same_class"),  # also memorised: same class comes first
        ([4, 4, 9], [2, 1, 3], 5, 4, "same_class"),  # also on an irrelevant item
        ([6, 7, 6], [-1, -2, -1], -1, 6, "same_class"),  # novel classes
        ([6, 7, 8], [2, 3, 4], 5, 5, "memorised"),
        ([5, 7, 8], [2, 3, 4], 5, 5, "memorised"),  # memorised label on another class's item (CIWL): memory first
        ([6, 7, 8], [2, 3, 4], 5, 7, "context"),
        ([6, 7, 8], [2, 3, 4], 5, 0, "other"),
        ([6, 7, 8], [2, 3, 4], -1, 3, "other"),
    ]
    query_class = [-1 if r[1][0] < 0 else 1 for r in rows]
    labels = jnp.array([[*r[0], 0] for r in rows])
    classes = jnp.array([[*r[1], q] for r, q in zip(rows, query_class, strict=True)])
    logits = 10.0 * jnp.eye(10)[jnp.array([r[3] for r in rows])]  # (8, 10): the answer scores highest
    shares = prediction_sources(jnp.argmax(logits, -1), labels, classes, jnp.array([[r[2]] for r in rows]))
    expected = [sum(r[4] == s for r in rows) / len(rows) for s in SOURCES]
    assert np.asarray(shares).tolist() == expected == [3 / 8, 2 / 8, 1 / 8, 2 / 8]
    assert float(jnp.sum(shares)) == 1.0


def test_memorised_labels_follow_the_task_map():
    st = static_part(TaskSpec(n_classes=40, n_holdout=8, n_labels=8, polysemy=2))
    classes = jnp.array([[0, 3], [0, 5], [0, 35], [0, -1]])  # queries: classes 3 and 5, holdout 35, novel
    batch = Batch(jnp.zeros((4, 2, 1)), jnp.zeros((4, 2), jnp.int32), classes, jnp.zeros(4, jnp.int32),
                  jnp.zeros(4, bool))  # fmt: skip
    got = np.asarray(memorised_labels(st, batch)).tolist()
    assert got == [[6, 7], [2, 3], [-1, -1], [-1, -1]]  # (2k + sense) mod 8
    random_map = dataclasses.replace(st, label_map="random")
    assert np.all(np.asarray(memorised_labels(random_map, batch)) == -1)


# ------------------------------------------------------------------------------------------ in a real run


def test_rows_of_a_real_run_carry_the_measures(tmp_path):
    cfg = tiny(
        train=TrainConfig(steps=10, batch_size=8, chunk_steps=10),
        probes=ProbeConfig(n_eval=16, n_log=0, every=10, names=("icl_novel", "iwl_no_support")),
        logging=LoggingConfig(progress=False, plot=False),
        checkpoint=CheckpointConfig(enabled=False),
    )
    run(cfg, tmp_path)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["probe"] != "train"]
    layers, heads = cfg.model.n_layers, cfg.model.n_heads
    assert len(rows) == 2 * 2  # steps 0 and 10, two probes
    for r in rows:
        assert set(MECHANISM_SCALARS) | set(MECHANISM_LISTS) <= set(r)
        assert sum(r[f"src_{s}"] for s in SOURCES) == pytest.approx(1.0, abs=1e-6)
        assert all(len(r[k]) == layers and all(len(h) == heads for h in r[k]) for k in MECHANISM_LISTS)
        assert r["prev_token"] is not None and 0.0 <= r["prev_token"] <= 1.0
        if r["probe"] == "iwl_no_support":  # the query's class is never in the context
            assert r["induction"] is None and r["relevant_mass"] is None
        else:
            assert 0.0 <= r["induction"] <= r["relevant_mass"] <= 1.0
            assert r["relevant_mass"] + r["irrelevant_mass"] <= 1.0 + 1e-6
        if r["probe"] == "icl_novel":  # holdout classes: nothing memorised
            assert r["src_memorised"] == 0.0
    # the report reads the run and adds its mechanisms files
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "report" / "mechanisms.png").stat().st_size > 0
    assert "| ICL onset | induction onset |" in (tmp_path / "report" / "mechanisms.md").read_text()


def test_switched_off_the_rows_are_as_before_and_accuracies_do_not_move():
    def evaluate(mechanisms: bool):
        cfg = tiny(probes=ProbeConfig(n_eval=32, names=("icl_novel",), mechanisms=mechanisms))
        st = ensemble_static(cfg)
        ens = compiled(Program.of(cfg, st))
        init, mem = member_inputs(cfg)
        return jax.device_get(ens.evaluate(make_universe(st), ens.init(init).params, mem))

    on, off = evaluate(True), evaluate(False)
    assert off.attention is None and off.sources is None
    # the measures come from the same forward pass: the accuracies are those of an evaluation without them
    np.testing.assert_array_equal(on.acc, off.acc)
    np.testing.assert_allclose(on.loss, off.loss, rtol=1e-5)
    names = ["icl_novel"]
    assert set(probe_rows(0, off, names, [{"seed": 0}])[0]) == {"step", "member", "probe", "acc", "loss", "acc_common",
                                                           "acc_rare", "seed"}  # fmt: skip
    assert set(MECHANISM_SCALARS) <= set(probe_rows(0, on, names, [{"seed": 0}])[0])


def test_report_marks_the_onsets_of_icl_and_induction(tmp_path):
    # n_labels = 4: ICL onset level 0.625; measure level 0.5
    steps = [0, 10, 100, 1000]
    icl = [0.25, 0.5, 0.75, 1.0]  # ICL onset at 100
    induction = [0.1, 0.6, 0.9, 0.95]  # induction onset at 10
    prev = [0.2, 0.3, 0.4, 0.45]  # never
    write_config(tmp_path / "config.json", Config(task=TaskSpec(n_labels=4)))
    rows = []
    for i, s in enumerate(steps):
        mech = {"induction": induction[i], "prev_token": prev[i], "relevant_mass": 1.0, "irrelevant_mass": 0.0,
                "src_same_class": 0.5, "src_memorised": 0.25, "src_context": 0.25, "src_other": 0.0}  # fmt: skip
        rows.append({"step": s, "member": 0, "probe": "icl_novel", "acc": icl[i], "loss": 1.0, "seed": 0, **mech,
                     "induction_lh": per_head(np.array([[0.0], [induction[i]]]))})  # fmt: skip
        rows.append({"step": s, "member": 0, "probe": "iwl_no_support", "acc": 0.25, "loss": 1.0, "seed": 0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    text = (tmp_path / "report" / "mechanisms.md").read_text()
    assert "| - | 100 | 10 | never | 1.000 | 0.250 | 0.950 | 0.450 | 1.000 / 0.000 |" in text
    assert "| - | 0.500 | 0.250 | 0.250 | 0.000 |" in text  # no icl_flip, no in_dist: the sources of icl_novel
    assert main([str(tmp_path), "--mechanism-probe", "iwl_no_support"]) == 2  # logged no measures
    assert main([str(tmp_path), "--measure-level", "0.95"]) == 0
    assert "| - | 100 | 1000 | never |" in (tmp_path / "report" / "mechanisms.md").read_text()
