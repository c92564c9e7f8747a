"""Every Python snippet of README.md runs as written, in a fresh process as a
user would paste it."""

import os
import re
import subprocess
import sys

from helpers import ROOT, child_env


def readme_snippets():
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), re.M | re.S)


def test_readme_python_snippets_run(tmp_path):
    snippets = readme_snippets()
    assert snippets, "README.md has no ```python block"
    for i, code in enumerate(snippets):
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=300
        )
        assert proc.returncode == 0, f"README snippet {i}:\n{code}\n{proc.stdout}{proc.stderr}"
