"""Shared fixtures: a Medplum server to test against.

``medplum_target`` (session): the server of our own pytest plugin's ``medplum_server`` fixture
(``bundler.testing.pytest_plugin``, the one users get): a local Medplum server started once per session on a
free port, or, when ``MEDPLUM_BASE_URL``, ``MEDPLUM_CLIENT_ID`` and ``MEDPLUM_CLIENT_SECRET`` are all
set, that remote Medplum (nothing is started).

``project`` (function): a clean slate per test. On the local server the store and quota are emptied
before the test and the default settings restored after it. On a remote server nothing can be
emptied, so tests must put ``project.prefix`` (unique per test) into their thread keys and
identifiers.

``local_server`` (function) / marker ``local_only``: for tests that need switches only the local
server has (transaction-bundles off, quota, short token TTL, checkReferencesOnWrite); skipped with
a reason on a remote server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bundler.medplum.localserver import LocalServer
from bundler.testing.pytest_plugin import MedplumServer, remote_from_env

LOCAL_ONLY_REASON = "needs a switch only the local Medplum server has (remote MEDPLUM_BASE_URL is set)"


MedplumTarget = MedplumServer
"""Where the tests send FHIR traffic: the plugin's session server (``local`` is the LocalServer, if any)."""


@dataclass(frozen=True)
class Project:
    """A clean slate for one test; ``prefix`` is unique per test (use it in identifiers)."""

    target: MedplumTarget
    prefix: str

    @property
    def server(self) -> LocalServer | None:
        return self.target.local

    def configure(self, **settings: Any) -> None:
        """Change local server settings for this test (restored afterwards); skips on a remote server."""
        if self.target.local is None:
            pytest.skip(LOCAL_ONLY_REASON)
        self.target.local.configure(**settings)


FUZZ_EXAMPLES = 100
"""Examples per fuzz test in a default run (derandomized: the same ones each run, so CI is steady)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz-examples", type=int, default=None, metavar="N",
                     help=f"Examples per fuzz test (tests/test_fuzz*.py), with fresh random seeds each run "
                          f"[default: {FUZZ_EXAMPLES}, the same ones each run].")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "local_only: needs the local Medplum server's switches; skipped against a remote Medplum"
    )
    from fuzzing import register_fuzz_profile

    examples = config.getoption("--fuzz-examples")
    register_fuzz_profile(examples or FUZZ_EXAMPLES, derandomize=examples is None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("local_only") is not None and _remote() is not None:
        pytest.skip(LOCAL_ONLY_REASON)


def _remote() -> MedplumServer | None:
    try:
        return remote_from_env()
    except ValueError:
        return None  # half-set: medplum_server fails the tests that need a server, naming what is missing


@pytest.fixture(scope="session")
def medplum_target(medplum_server: MedplumServer) -> MedplumTarget:
    """The plugin's session server (ours, `bundler.testing.pytest_plugin`, the one users get)."""
    return medplum_server


@pytest.fixture
def project(medplum_target: MedplumTarget) -> Iterator[Project]:
    server = medplum_target.local
    if server is not None:
        server.reset()
    try:
        yield Project(target=medplum_target, prefix=f"t{uuid.uuid4().hex[:12]}")
    finally:
        if server is not None and server.running:
            server.restore_defaults()


@pytest.fixture
def local_server(project: Project) -> LocalServer:
    """The local server of this test's project (settings restored after the test); skips on a remote one."""
    if project.server is None:
        pytest.skip(LOCAL_ONLY_REASON)
    return project.server
