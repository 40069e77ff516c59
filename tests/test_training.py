"""Training: ensembles equal single runs, an untrained model scores chance, tiny models really learn."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from data_gen import TaskSpec, make_universe
from iclwl.config import Config, ModelConfig, OptimConfig, ProbeConfig, TrainConfig, validate_config
from iclwl.run import ensemble_static, run
from iclwl.training.program import Program, compiled, member_inputs, streams
from iclwl.training.schedule import eval_schedule

TINY_TASK = TaskSpec(L=4, D=8, n_labels=8, n_classes=40, n_holdout=8, B=2, noise_scale=0.1)
TINY_MODEL = ModelConfig(n_layers=2, n_heads=1, d_model=16, mlp_ratio=2.0)


def tiny(**changes) -> Config:
    cfg = Config(
        task=TINY_TASK,
        model=TINY_MODEL,
        train=TrainConfig(steps=30, batch_size=16, chunk_steps=10),
        probes=ProbeConfig(n_eval=64, n_log=3, mechanisms=False),  # tests/test_mechanisms.py has them
    )
    return validate_config(dataclasses.replace(cfg, **changes))


def train(cfg: Config, seeds: list[int], steps: int):
    """Train members with these seeds for ``steps`` steps; return the final params and all chunk outputs."""
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=tuple(seeds)))
    st = ensemble_static(cfg)
    ens, uni = compiled(Program.of(cfg, st)), make_universe(st)
    init, mem = member_inputs(cfg)
    state = ens.init(init)
    outs = []
    for t in range(0, steps, cfg.train.chunk_steps):
        state, out = ens.chunk(uni, state, mem, jnp.int32(t), jnp.int32(steps), n=cfg.train.chunk_steps, trace=True)
        outs.append(out)
    return state, jax.tree.map(lambda *xs: np.concatenate(xs), *outs), ens.evaluate(uni, state.params, mem)


def test_streams_differ():
    s = streams(0)
    data = [jax.random.key_data(k) for k in s]
    assert not np.array_equal(data[0], data[1]) and not np.array_equal(data[1], data[2])
    assert not np.array_equal(data[0], data[2])


def assert_member_is_single_run(cfg: Config, seeds: list[int], m: int, steps: int = 30):
    """Member ``m`` of an ensemble with ``seeds`` ends with the params, losses and probe results (and measures)
    of a run of that seed alone; its neighbour, with another seed, does not."""
    ens_state, ens_out, ens_probes = train(cfg, seeds, steps)
    one_state, one_out, one_probes = train(cfg, [seeds[m]], steps)
    member = jax.tree.map(lambda a: a[m], ens_state.params)
    single = jax.tree.map(lambda a: a[0], one_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), member, single)
    np.testing.assert_allclose(ens_out.loss[:, m], one_out.loss[:, 0], rtol=1e-5)
    np.testing.assert_allclose(ens_probes.acc[m], one_probes.acc[0])
    assert ens_probes.measures.keys() == one_probes.measures.keys()
    for name, values in ens_probes.measures.items():
        np.testing.assert_allclose(values[m], one_probes.measures[name][0], rtol=1e-5, atol=1e-6)
    other = (m + 1) % len(seeds)
    assert not np.allclose(ens_out.loss[:, other], ens_out.loss[:, m]), "members with other seeds must differ"


def test_member_of_ensemble_equals_single_run():
    assert_member_is_single_run(tiny(), [3, 5, 7, 11], m=2)


def test_same_seed_same_run():
    _, a, _ = train(tiny(), [1], 20)
    _, b, _ = train(tiny(), [1], 20)
    np.testing.assert_array_equal(a.loss, b.loss)


def test_untrained_model_scores_chance():
    cfg = tiny(probes=ProbeConfig(n_eval=2000, mechanisms=False))
    st = ensemble_static(cfg)
    ens, uni = compiled(Program.of(cfg, st)), make_universe(st)
    init, mem = member_inputs(cfg)
    state = ens.init(init)
    probes = ens.evaluate(uni, state.params, mem)
    chance = 1 / cfg.task.n_labels
    # 2000 queries: a binomial standard error of 0.0074 at p = 1/8; an untrained argmax may lean to one label,
    # which the roughly uniform targets keep near chance too
    assert np.all(np.abs(np.asarray(probes.acc[0]) - chance) < 0.06), probes.acc
    np.testing.assert_allclose(probes.loss[0], np.log(cfg.task.n_labels), atol=0.5)


def test_tiny_model_learns_iwl():
    """Eight classes, no bursts, identity labels: the model memorises them (IWL probe near 1)."""
    task = dataclasses.replace(TINY_TASK, K=8, p_bursty=0.0, label_map="identity", n_labels=32)
    cfg = tiny(task=task, train=TrainConfig(steps=300, batch_size=32, chunk_steps=100), optim=OptimConfig(lr=3e-3))
    _, _, probes = train(cfg, [0], 300)
    names = ["in_dist", "icl_novel", "icl_flip", "iwl_no_support", "ciwl"]
    acc = dict(zip(names, np.asarray(probes.acc[0]), strict=True))
    assert acc["iwl_no_support"] > 0.95, acc
    assert acc["icl_flip"] < 0.2, acc  # it answers from memory, so shifted labels fail


def test_tiny_model_learns_icl():
    """Random labels in every sequence: only ICL can answer, and a 2-layer model learns to, on novel classes too.

    With 2 classes of 2 items in a context of 4, copying any context label scores 0.5: above 0.85 is real ICL.
    """
    task = dataclasses.replace(TINY_TASK, label_map="random", noise_scale=0.0, D=16, n_labels=8, L=4, B=2)
    cfg = tiny(
        task=task,
        model=dataclasses.replace(TINY_MODEL, d_model=32, n_heads=2),
        train=TrainConfig(steps=1200, batch_size=32, chunk_steps=100),
        optim=OptimConfig(lr=2e-3),
    )
    _, _, probes = train(cfg, [0], 1200)
    acc = dict(zip(["in_dist", "icl_novel", "iwl_no_support", "ciwl"], np.asarray(probes.acc[0]), strict=True))
    assert acc["icl_novel"] > 0.85, acc
    assert acc["iwl_no_support"] < 0.2, acc  # random labels leave nothing to memorise


def test_run_writes_record(tmp_path):
    cfg = tiny()
    table = run(cfg, tmp_path)
    for name in ("metrics.jsonl", "config.json", "provenance.json", "summary.md", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({r["step"] for r in rows})
    assert steps == eval_schedule(30, 3, 0).tolist()
    assert {r["probe"] for r in rows} == {"train", "in_dist", "icl_novel", "icl_flip", "iwl_no_support", "ciwl"}
    assert len(table) == 5


def test_runs_differing_in_dynamic_settings_share_one_program():
    a = tiny()
    b = dataclasses.replace(a, task=dataclasses.replace(a.task, N=64, p_bursty=0.5), optim=OptimConfig(lr=3e-3),
                            train=dataclasses.replace(a.train, seeds=(4, 5), max_members=1))  # fmt: skip
    c = dataclasses.replace(a, task=dataclasses.replace(a.task, L=2, B=1))  # a static change: another program
    ens = [compiled(Program.of(x, ensemble_static(x))) for x in (a, b, c)]
    assert ens[0] is ens[1] and ens[0] is not ens[2]
    for d in range(3, 12):  # more distinct programs than the cache keeps: the oldest are let go
        x = dataclasses.replace(a, model=dataclasses.replace(a.model, d_model=8 * d))
        compiled(Program.of(x, ensemble_static(x)))
    assert compiled.cache_info().currsize == 8
