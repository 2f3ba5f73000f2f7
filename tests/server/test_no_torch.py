"""The HTTP layer imports without torch (and without transformers, which would pull it in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError("blocked: " + name)
        return None

sys.meta_path.insert(0, Block())
import server.app, server.run, server.routes, engine.core.text_stream  # noqa
from tests.fakes import FakeEngine
app = server.app.create_app(FakeEngine())
assert "torch" not in sys.modules and "transformers" not in sys.modules
print("ok", len(app.routes))
"""


def test_server_imports_without_torch():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_blocker_really_blocks():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = SCRIPT.split("import server.app")[0] + "import torch\n"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "blocked: torch" in out.stderr
