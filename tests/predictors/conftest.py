"""Fixtures for the predictors tests (helpers live in predictor_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from predictor_fixtures import MMLU_TEST, tiny_checkpoint


@pytest.fixture(scope="session")
def qwen3_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint("qwen3_moe", tmp_path_factory.mktemp("qwen3_moe"))


@pytest.fixture(scope="session")
def deepseek_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint("deepseek_v2", tmp_path_factory.mktemp("deepseek_v2"))


@pytest.fixture(scope="session")
def mmlu_csv() -> Path:
    path = MMLU_TEST / "abstract_algebra_test.csv"
    if not path.exists():
        pytest.skip(f"MMLU data not found at {MMLU_TEST}")
    return path
