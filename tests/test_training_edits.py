"""Training-time edits (``intervene``): a zeroed head learns nothing, a clamped head's queries and keys learn
nothing, only inside the window; the probes see the edit; a grid of edits is members of one program."""

import dataclasses

import jax
import numpy as np
import pytest
from test_training import TINY_MODEL, tiny, train

from data_gen import ConfigError
from iclwl.config import InterveneConfig, ProbeConfig, SweepConfig, from_dict, schema_dict
from iclwl.run import ensemble_static
from iclwl.training.program import Program, compiled, member_inputs

TWO_HEADS = dataclasses.replace(TINY_MODEL, n_heads=2)  # d = 16: heads of 8
DH = TWO_HEADS.d_model // TWO_HEADS.n_heads


def edited(**fields) -> InterveneConfig:
    return InterveneConfig(**{"layer": 1, "head": 0, **fields})


def head_parts(params, layer: int, head: int, member: int = 0) -> dict[str, np.ndarray]:
    """One head's query, key and value columns of qkv and its rows of the output projection."""
    attn = params["blocks"][layer]["attn"]
    qkv, out = np.asarray(attn["qkv"]["kernel"].value[member]), np.asarray(attn["out"]["kernel"].value[member])
    d, cols = TWO_HEADS.d_model, slice(head * DH, (head + 1) * DH)
    return {"q": qkv[:, cols], "k": qkv[:, d:][:, cols], "v": qkv[:, 2 * d :][:, cols], "out": out[cols]}


def initial(cfg):
    """The parameters member seed 0 starts from."""
    ens = compiled(Program.of(cfg, ensemble_static(cfg)))
    return ens.init(member_inputs(cfg)[0]).params


def test_zeroed_head_learns_nothing_and_the_other_does():
    cfg = tiny(model=TWO_HEADS, intervene=edited(kind="zero"))
    before, (after, _, _) = initial(cfg), train(cfg, [0], 20)
    for name, value in head_parts(after.params, 1, 0).items():  # its output is zero: no gradient reaches it
        np.testing.assert_array_equal(value, head_parts(before, 1, 0)[name], err_msg=name)
    for name, value in head_parts(after.params, 1, 1).items():
        assert not np.allclose(value, head_parts(before, 1, 1)[name]), name


def test_clamped_head_learns_values_not_queries_or_keys_and_only_inside_its_window():
    cfg = tiny(model=TWO_HEADS, intervene=edited(kind="clamp", pattern="previous_token", stop=20))
    before = head_parts(initial(cfg), 1, 0)
    inside = head_parts(train(cfg, [0], 20)[0].params, 1, 0)
    np.testing.assert_array_equal(inside["q"], before["q"])  # the pattern does not depend on them
    np.testing.assert_array_equal(inside["k"], before["k"])
    assert not np.allclose(inside["v"], before["v"])
    after = head_parts(train(cfg, [0], 30)[0].params, 1, 0)  # steps 21 .. 30 are past the window
    assert not np.allclose(after["q"], before["q"]) and not np.allclose(after["k"], before["k"])


def test_probes_see_the_clamp_inside_its_window_unless_told_not_to():
    probes = ProbeConfig(n_eval=64, n_log=3, names=("in_dist",), mechanisms=True)
    clamp = edited(kind="clamp", pattern="induction")
    _, _, seen = train(tiny(model=TWO_HEADS, probes=probes, intervene=clamp), [0], 10)
    # the clamped head puts all of the query's attention on the labels of its class's items: induction score 1
    np.testing.assert_allclose(seen.attention.induction[0, 0, 1, 0], 1.0, rtol=1e-6)
    assert seen.attention.induction[0, 0, 1, 1] < 0.9
    _, _, unseen = train(tiny(model=TWO_HEADS, probes=probes, intervene=dataclasses.replace(clamp, probes=False)),
                         [0], 10)  # fmt: skip
    assert unseen.attention.induction[0, 0, 1, 0] < 0.9


def test_member_of_a_grid_of_edits_equals_its_single_run():
    """Members: head 0 and head 1 clamped, and no edit; each equals the run of its edit alone."""
    sweep = SweepConfig(mode="zip", intervene_kind=("clamp", "clamp", "none"), intervene_head=(0, 1, 0))
    grid, _, grid_probes = train(tiny(model=TWO_HEADS, sweep=sweep, intervene=edited(stop=15)), [4], 30)
    for m, (kind, head) in enumerate([("clamp", 0), ("clamp", 1), ("none", 0)]):
        one, _, one_probes = train(tiny(model=TWO_HEADS, intervene=edited(kind=kind, head=head, stop=15)), [4], 30)
        jax.tree.map(lambda a, b, m=m: np.testing.assert_allclose(a[m], b[0], rtol=2e-5, atol=2e-6),
                     grid.params, one.params)  # fmt: skip
        np.testing.assert_allclose(grid_probes.acc[m], one_probes.acc[0])
    plain, _, _ = train(tiny(model=TWO_HEADS), [4], 30)  # no edit anywhere: the default compiled path
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[2], b[0], rtol=2e-5, atol=2e-6), grid.params, plain.params)
    assert not np.allclose(grid.params["readout"]["kernel"].value[0], grid.params["readout"]["kernel"].value[1])


def config(**changes):
    data = schema_dict()
    data["model"].update(n_layers=2, n_heads=2)
    for path, value in changes.items():
        group, key = path.split(".")
        data[group][key] = value
    return data


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"intervene.kind": "clamp", "intervene.layer": 2}, "intervene.layer", "0 .. model.n_layers - 1 (1)"),
        ({"intervene.kind": "zero", "intervene.head": -1}, "intervene.head", "0 .. model.n_heads - 1 (1)"),
        ({"intervene.kind": "zero", "intervene.start": 9, "intervene.stop": 9}, "intervene.stop", "> intervene.start"),
        ({"intervene.kind": "zero", "intervene.start": 6000}, "intervene.start", "[0, train.steps = 6000)"),
        ({"intervene.kind": "zero", "model.arch": "lstm"}, "intervene.kind", "needs model.arch=transformer"),
        ({"intervene.kind": "squash"}, "intervene.kind", "must be one of none, zero, clamp"),
        ({"intervene.kind": "zero", "sweep.intervene_head": [0, 3]}, "sweep.intervene_head", "(member 1:"),
        ({"sweep.intervene_pattern": ["induction", "diagonal"]}, "sweep.intervene_pattern[1]", "must be one of"),
        ({"sweep.intervene_stop": [100, 1.5]}, "sweep.intervene_stop[1]", "must be an integer"),
    ],
)
def test_bad_edits_are_refused_naming_the_field(changes, field, rule):
    with pytest.raises(ConfigError) as e:
        from_dict(config(**changes))
    assert e.value.field == field and rule in str(e.value), str(e.value)


def test_an_edit_that_changes_nothing_is_accepted():
    cfg = from_dict(config(**{"intervene.layer": 7}))  # kind none: the other fields are not read
    assert cfg.intervene.layer == 7


def test_a_run_with_edits_and_ablations_records_both_and_reports_by_edit(tmp_path):
    from iclwl.cli.report import main
    from iclwl.record.files import read_metrics
    from iclwl.run import run

    probes = ProbeConfig(n_eval=32, n_log=2, names=("icl_novel", "iwl_no_support"), ablations="zero")
    cfg = tiny(probes=probes, sweep=SweepConfig(intervene_stop=(10, -1)), intervene=edited(kind="zero"))
    run(cfg, tmp_path / "run")
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["probe"] != "train"]
    assert {r["intervene_stop"] for r in rows} == {10, -1}
    for r in rows:
        assert np.asarray(r["ablate_drop_lh"], dtype=float).shape == (2, 1)
        assert r["ablate_topk_drop"] is not None and r["ablate_random_drop"] is not None
    # the zeroed head (layer 1) is zeroed in the probes too, inside the window: ablating it again changes nothing
    inside = [r for r in rows if r["intervene_stop"] == -1]
    assert all(r["ablate_drop_lh"][1][0] == 0.0 for r in inside)
    assert main([str(tmp_path / "run")]) == 0
    summary = (tmp_path / "run" / "report" / "summary.md").read_text()
    assert "| intervene_stop=-1 | icl_novel |" in summary and "| intervene_stop=10 | icl_novel |" in summary
    assert (tmp_path / "run" / "report" / "ablations.png").exists()
