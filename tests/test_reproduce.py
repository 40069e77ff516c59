"""iclwl-reproduce: every entry composes into valid configs whose seeds redraw the data; bad input is
one line and exit 2; an entry trains and writes its report (a tiny entry, registered for the test)."""

import pytest

from iclwl.cli import reproduce
from iclwl.cli.compose import compose
from iclwl.config import members


@pytest.mark.parametrize("name", list(reproduce.ENTRIES))
def test_every_entry_composes_with_seeds_that_redraw_the_data(name):
    entry = reproduce.ENTRIES[name]
    for extra in entry.jobs.values():
        cfg = compose([f"experiment={entry.experiment}", *extra, *reproduce.seed_overrides(3)])
        coords = members(cfg)
        assert {(c["seed"], c["data_seed"]) for c in coords} == {(0, 0), (1, 1), (2, 2)}
        assert len(coords) % 3 == 0


def test_list_and_bad_input(capsys):
    assert reproduce.main(["--list"]) == 0
    assert "chan2024_n" in capsys.readouterr().out
    assert reproduce.main(["no_such_entry"]) == 2
    assert "entry = no_such_entry: unknown" in capsys.readouterr().err
    assert reproduce.main(["chan2024_n", "--seeds", "0"]) == 2
    assert "--seeds = 0" in capsys.readouterr().err


def test_an_entry_trains_every_job_and_reports_over_its_seeds(tmp_path, monkeypatch):
    """A tiny entry of two jobs (they differ in a dynamic setting, so they share one compiled program), 2 seeds."""
    jobs = {f"N_{n}": (f"sweep.N=[{n}]",) for n in (64, 128)}
    tiny = reproduce.Entry("chan2024_n_debug", "a tiny N sweep", jobs=jobs, probes=("icl_flip", "iwl_no_support"),
                           groups=True)  # fmt: skip
    monkeypatch.setitem(reproduce.ENTRIES, "tiny", tiny)
    monkeypatch.setattr(reproduce, "seed_overrides", lambda n: [*_seeds(n), "train.steps=20", "probes.n_eval=64",
                                                                "probes.mechanisms=false", "checkpoint.enabled=false",
                                                                "logging.plot=false"])  # fmt: skip
    assert reproduce.main(["tiny", "--out", str(tmp_path), "--seeds", "2"]) == 0
    summary = (tmp_path / "tiny" / "report" / "summary.md").read_text()
    assert "N=64" in summary and "N=128" in summary and "icl_flip:rare" in summary
    assert all(line.rstrip().endswith("| 2 |") for line in summary.splitlines() if line.startswith("| N="))
    assert {p.name for p in (tmp_path / "tiny").iterdir()} == {"N_64", "N_128", "report"}
    assert (tmp_path / "tiny" / "report" / "curves.png").stat().st_size > 0


def _seeds(n: int) -> list[str]:
    seeds = "[" + ",".join(map(str, range(n))) + "]"
    return [f"train.seeds={seeds}", f"train.data_seeds={seeds}"]
