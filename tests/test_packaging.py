"""The package builds as a wheel (python -m build, no isolation: torch must be
importable at build time), installs, and works from anywhere."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_builds_installs_and_self_checks(tmp_path):
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", ROOT, str(src)], check=True)
    # The compiler cache hits when paths are taken relative to the clone.
    env = dict(os.environ, CCACHE_BASEDIR=str(src))
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist")],
        cwd=src,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("torch_relu_ext-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert any(n.startswith("torch_relu_ext/_C") and n.endswith(".so") for n in names)
    assert "torch_relu_ext/py.typed" in names
    assert "torch_relu_ext/integrations/lightning.py" in names
    assert "Requires-Dist: torch>=2.11" in meta
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    run = subprocess.run(
        [sys.executable, "-m", "torch_relu_ext"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(target)),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert str(target) in run.stdout and "self-check cpu: OK" in run.stdout
