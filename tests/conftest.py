"""Shared test helpers: the reference fixtures live in tests/fixtures (see its README)."""

import pytest
import torch
from project_paths import FIXTURES


def load_fixture(name: str):
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"reference fixture {path} is missing (tests/fixtures/README.md lists them)")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def na_reference():
    return load_fixture("na_reference.pt")


@pytest.fixture(scope="session")
def m2f_reference():
    return load_fixture("m2f_dinat_reference.pt")
