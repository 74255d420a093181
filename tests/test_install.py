"""The package as a user installs it: a wheel (not the source tree) runs an experiment from another
directory, with its configuration read from the package data, and ``MMSIM_CONF`` replaces it."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, unpacked into a directory of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp.glob("mmsim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mmsim/conf/config.yaml" in names and "mmsim/conf/experiment/baseline.yaml" in names
    target = tmp / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    return target


def _run(target: Path, cwd: Path, args: list[str], **env_extra) -> subprocess.CompletedProcess:
    # -S: no site processing, so the editable install of the checkout (a .pth hook) is not seen; the
    # wheel comes first on the path and the dependencies from this interpreter's site-packages.
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if k != "MMSIM_CONF"}
    env.update(PYTHONPATH=os.pathsep.join([str(target), *deps]), JAX_PLATFORMS="cpu", **env_extra)
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_runs_an_experiment_from_anywhere(installed, tmp_path):
    where = _run(
        installed, tmp_path, ["-c", "import mmsim, mmsim.config as c; print(mmsim.__file__); print(c.conf_dir())"]
    )
    assert where.returncode == 0, where.stderr[-3000:]
    module, conf = where.stdout.split()
    assert module.startswith(str(installed)) and conf.startswith(str(installed))
    out = _run(
        installed,
        tmp_path,
        [
            "-m",
            "mmsim.run",
            "experiment=baseline",
            "sim.n_paths=8",
            "sim.horizon_s=20",
            "sim.n_trace=0",
            "compile_cache_dir=null",
            "hydra.run.dir=out",
        ],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["n_paths"] == 8 and m["experiment"] == "baseline"
    assert (tmp_path / "out" / "paths.parquet").exists()


@pytest.mark.slow
def test_mmsim_conf_replaces_the_packaged_configuration(installed, tmp_path):
    conf = tmp_path / "myconf"
    shutil.copytree(installed / "mmsim" / "conf", conf)
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\nname: mine\n")
    ok = _run(
        installed,
        tmp_path,
        ["-c", "import mmsim.config as c; print(c.compose(['experiment=mine']).name)"],
        MMSIM_CONF=str(conf),
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "mine", ok.stderr[-3000:]
    bad = _run(installed, tmp_path, ["-c", "import mmsim.config as c; c.conf_dir()"], MMSIM_CONF=str(tmp_path))
    assert bad.returncode != 0 and "MMSIM_CONF" in bad.stderr and "config.yaml" in bad.stderr
