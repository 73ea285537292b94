"""`pip install .` gives the whole package: every module, its data file, and requirements.txt as its dependencies."""

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_module_and_file_and_declares_the_runtime_requirements(tmp_path):
    # Built from a copy of what the build reads, so that its build/ and egg-info never land in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "ghostnet_jax", source / "ghostnet_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("ghostnet_jax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    package = {str(path.relative_to(ROOT)) for path in (ROOT / "ghostnet_jax").rglob("*") if path.is_file()}
    package = {name for name in package if "__pycache__" not in name}
    assert package <= names, sorted(package - names)
    requirements = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0]
    ]
    assert sorted(metadata.get_all("Requires-Dist")) == sorted(requirements)
