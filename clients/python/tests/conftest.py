"""The suite runs against a live engine named by the environment, as
`cargo test -p harness --test engine clients::` starts it:
TXENGINE_URL, TXENGINE_ADMIN_TOKEN, TXENGINE_API_KEY and, for the fault
test, TXENGINE_KAFKA_PID (its broker, stopped and resumed by the test)."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

CASES_FILE = pathlib.Path(__file__).resolve().parents[2] / "cases.json"
CASES = json.loads(CASES_FILE.read_text())


def engine_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set: run through `cargo test -p harness --test engine clients::`")
    return value


@pytest.fixture(scope="session")
def url() -> str:
    return engine_env("TXENGINE_URL")


@pytest.fixture(scope="session")
def admin_token() -> str:
    return engine_env("TXENGINE_ADMIN_TOKEN")


@pytest.fixture(scope="session")
def api_key() -> str:
    return engine_env("TXENGINE_API_KEY")
