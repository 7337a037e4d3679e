"""Fixtures for tests that drive a real proxy in front of the real test cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rlsproxy.auth.mint import mint_token
from rlsproxy.config import Config
from rlsproxy.devcluster import ALICE, BOB
from tests.support.proxy import JWT_SECRET, RunningProxy, base_config


@pytest.fixture
def make_proxy(pg: Any) -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def make(config: Config | None = None, **sections: Any) -> RunningProxy:
        running = RunningProxy(config or base_config(pg, **sections))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def proxy(make_proxy: Callable[..., RunningProxy]) -> RunningProxy:
    return make_proxy()


def token_for(sub: str | None, role: str | None = "authenticated", **kw: Any) -> str:
    return mint_token(JWT_SECRET, sub=sub, role=role, **kw)


@pytest.fixture
def alice_token() -> str:
    return token_for(ALICE)


@pytest.fixture
def bob_token() -> str:
    return token_for(BOB)
