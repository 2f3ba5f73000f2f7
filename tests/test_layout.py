"""The code's shape, as docs/architecture.md and each subpackage's docstring state it.

- Dependencies point one way: each engine subpackage imports only the subpackages its docstring names
  (the table below); the engine never imports `predictors`, `server` or `moe_prefetch`; `predictors`
  never imports `server`; the HTTP layer imports no torch and only the torch-free parts of the engine.
- No module in `server/`, `engine/`, `predictors/` is over 400 lines, except the kernels listed.

Imports are read from the source (every `import` statement, also those inside functions), not by
importing, so the test sees what runs only on a GPU too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {  # engine subpackage -> the engine subpackages it may import (besides itself)
    "api": set(),
    "kernels": set(),
    "experts": {"api"},
    "model": {"api", "experts", "kernels"},
    "prefetch": {"api", "experts", "kernels", "model"},
    "runner": {"api", "experts", "kernels", "model", "prefetch"},
    "core": {"api"},
    "frontend": {"api", "core", "experts", "kernels", "model", "prefetch", "runner"},
}
SERVER_MAY_IMPORT = ("engine.api", "engine.core.tool_calls")
MAX_LINES = 400
LONGER: set[str] = set()  # modules allowed past the limit (none now)


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "assets" not in p.parts)


def imports(path: Path) -> set[str]:
    """Absolute module names `path` imports (`from a.b import c` gives a.b and a.b.c)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def subpackage(path: Path) -> str | None:
    rel = path.relative_to(ROOT / "engine").parts
    return rel[0] if len(rel) > 1 else None


def test_every_engine_module_is_in_a_subpackage_of_the_table():
    loose = [p.name for p in (ROOT / "engine").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules at the top of engine/: {loose}"
    found = {p.name for p in (ROOT / "engine").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert found == set(ALLOWED), found ^ set(ALLOWED)


@pytest.mark.parametrize("path", modules("engine"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_dependencies_point_one_way(path):
    sub = subpackage(path)
    names = imports(path)
    outside = sorted(n for n in names if n.split(".")[0] in ("predictors", "server", "moe_prefetch", "bench"))
    assert not outside, f"the engine imports {outside}"
    if sub is None:
        return
    used = {n.split(".")[1] for n in names if n.startswith("engine.") and n.count(".") >= 1}
    used &= set(ALLOWED)
    bad = sorted(used - ALLOWED[sub] - {sub})
    assert not bad, f"engine.{sub} may import {sorted(ALLOWED[sub]) or 'no other subpackage'}; imports {bad}"


@pytest.mark.parametrize("path", modules("engine/api"), ids=lambda p: p.name)
def test_api_is_torch_free(path):
    assert not {n for n in imports(path) if n.split(".")[0] in ("torch", "triton", "transformers")}


@pytest.mark.parametrize("path", modules("server"), ids=lambda p: p.name)
def test_server_imports_no_torch_and_only_the_engine_api(path):
    names = imports(path)
    assert not {n for n in names if n.split(".")[0] in ("torch", "triton", "transformers", "predictors")}
    engine = {n for n in names if n.startswith("engine")}
    bad = sorted(n for n in engine if not any(n == m or n.startswith(m + ".") for m in SERVER_MAY_IMPORT))
    assert not bad, f"the HTTP layer imports {bad}"


@pytest.mark.parametrize("path", modules("predictors"), ids=lambda p: p.name)
def test_predictors_never_import_the_server(path):
    assert not {n for n in imports(path) if n.split(".")[0] in ("server", "moe_prefetch")}


@pytest.mark.parametrize(
    "path",
    [p for pkg in ("engine", "server", "predictors") for p in modules(pkg)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_module_over_400_lines(path):
    rel = str(path.relative_to(ROOT))
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES or rel in LONGER, f"{rel}: {n} lines"
