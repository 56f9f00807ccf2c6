"""A plain (non-editable) install carries what the main job needs: the recipes ship inside the package."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_built_wheel_runs_the_packaged_recipes_from_any_directory(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves the checkout as it was
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("unifork-*.whl")
    recipes = sorted(Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("unifork/configs/") and n.endswith(".toml"))
    assert recipes == sorted(p.name for p in (ROOT / "src" / "unifork" / "configs").glob("*.toml"))
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")  # what installing a pure-Python wheel puts on the path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = ("import unifork, unifork.quickstart; from unifork.train.recipe import load_recipe; "
             "assert 'site' in unifork.__file__; print(load_recipe('quickstart').stages[-1].name)")  # fmt: skip
    ran = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env={"PYTHONPATH": str(tmp_path / "site")},
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip() == "joint", ran.stderr
