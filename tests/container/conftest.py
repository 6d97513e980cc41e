"""Fixtures of the container tests: the docker CLI and image of ``make image``, cleaned-up containers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.container.docker import Containers, Docker, find_docker


@pytest.fixture(scope="session")
def docker() -> Docker:
    return find_docker()


@pytest.fixture
def containers(docker: Docker) -> Iterator[Containers]:
    made = Containers(docker)
    yield made
    made.remove()
