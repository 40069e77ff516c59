"""The wheel: built from the checkout, installed into a fresh virtual environment outside it, its commands train
and report from an unrelated directory with the packaged configs (and a user's config directory beside them)."""

import json
import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the wheel of iclwl; its dependencies come from this environment's site-packages
    (a path file, so this environment's editable iclwl is not seen there)."""
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("iclwl-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "deps.pth").write_text("\n".join(deps) + "\n")
    with zipfile.ZipFile(wheel) as z:  # a wheel is a zip laid out as site-packages: no pip needed to install it
        z.extractall(purelib)
    bin_dir = venv / "bin"
    for name, target in (("iclwl-train", "iclwl.cli.train"), ("iclwl-report", "iclwl.cli.report")):
        script = bin_dir / name
        call = "main()" if target == "iclwl.cli.train" else "sys.exit(main())"
        script.write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom {target} import main\n{call}\n")
        script.chmod(0o755)
    entry_points = next(purelib.glob("iclwl-*.dist-info")) / "entry_points.txt"
    return bin_dir, wheel, entry_points.read_text()


def test_the_wheel_carries_configs_commands_and_metadata(installed):
    _, wheel, entry_points = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "iclwl/conf/config.yaml" in names and "iclwl/conf/experiment/chan2024_n_cpu.yaml" in names
    assert "iclwl/py.typed" in names and any(n.endswith("LICENSE") for n in names)
    for command in ("iclwl-train = iclwl.cli.train:main", "iclwl-report = iclwl.cli.report:main",
                    "iclwl-reference = iclwl.cli.reference:main",
                    "iclwl-reproduce = iclwl.cli.reproduce:main"):  # fmt: skip
        assert command in entry_points


def test_installed_commands_train_and_report_from_any_directory(installed, tmp_path):
    bin_dir, _, _ = installed
    work = tmp_path / "elsewhere"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nname: mine\ntask:\n  n_classes: 72\n  n_holdout: 8\n  D: 8\nmodel:\n  d_model: 16\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(JAX_PLATFORMS="cpu", WANDB_MODE="disabled", PATH=f"{bin_dir}:{env['PATH']}")
    train = subprocess.run(
        ["iclwl-train", "--config-dir", "my_conf", "experiment=mine", "train.steps=20", "train.chunk_steps=10",
         "probes.n_eval=32", "probes.mechanisms=false", "logging.progress=false", "hydra.run.dir=run"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    prov = json.loads((work / "run" / "provenance.json").read_text())
    assert prov["iclwl_version"] and prov["git_commit"] is None  # installed: a version, no checkout
    assert json.loads((work / "run" / "config.json").read_text())["name"] == "mine"
    report = subprocess.run(["iclwl-report", "run"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert (work / "run" / "report" / "summary.md").exists()
    where = subprocess.run([str(bin_dir / "python"), "-c", "import iclwl; print(iclwl.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert str(ROOT) not in where.stdout  # the wheel's copy ran, not the checkout's
