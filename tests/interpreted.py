"""Triton kernels run on CPU tensors in Triton's interpreter, for tests: a fresh Python with
TRITON_INTERPRET=1 runs a script that prints "ok" when its checks pass. Skipped where Triton is absent
(CPU builds of torch, as in CI); on a GPU the same kernels run in the gpu-marked tests."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed (CPU-only torch)"
)


def run_interpreted(tmp_path: Path, code: str, timeout: int = 600) -> None:
    """Run `code` (dedented) in a fresh interpreter with TRITON_INTERPRET=1; it must print "ok"."""
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(code))
    path = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    res = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
