"""Fixtures shared by the integration tests: the backdoored upstream and firewalls before it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import FirewallFactory, running_firewalls, serving
from tests.integration.backdoored import Backdoored


@pytest.fixture
async def backdoored() -> AsyncIterator[tuple[Backdoored, str]]:
    model = Backdoored()
    async with serving(model.app()) as url:
        yield model, url


@pytest.fixture
async def fw_factory(backdoored: tuple[Backdoored, str], tmp_path: Path) -> AsyncIterator[FirewallFactory]:
    async with running_firewalls(backdoored[1], tmp_path) as start:
        yield start
