"""pytest fixtures for testing code that sends thread bundles to Medplum (`pip install thread-bundler[testing]`).

Installed with the package as the pytest plugin `thread_bundler` (entry point `pytest11`), so the
fixtures are there in every test session without a conftest:

    def test_my_bot_posts_a_thread(medplum_client):
        my_bot.post(medplum_client)                     # e.g. medplum_client.transaction(body, entries=n)
        assert_same_thread(spec, fetch_thread(medplum_client, spec["thread"]))

``medplum_server`` (session): a `MedplumServer` (base_url, client_id, client_secret, local). By default
a local Medplum FHIR server (`bundler.localserver.LocalServer`, needs `npm`) started on a free
loopback port the first time a test asks for it and stopped at the end of the session. When
``MEDPLUM_BASE_URL``, ``MEDPLUM_CLIENT_ID`` and ``MEDPLUM_CLIENT_SECRET`` are all set, that Medplum is
used instead and nothing is started. The server keeps what each test loads: give each test's threads
keys of their own, made in the test body (``f"t-{uuid.uuid4()}"``: hypothesis repeats the examples it
generates, and a generated key comes back), or call ``medplum_server.reset()`` on a local server.

``medplum_client`` (function): a `bundler.client.FhirClient` logged in to ``medplum_server`` with its
client credentials, closed after the test.

This module runs in every pytest session of anyone who installs the package, so it imports only
pytest and the standard library; the server and client code (and hypothesis, which it never needs)
are imported when a test first asks for a fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .client import FhirClient
    from .localserver import LocalServer

__all__ = ["REMOTE_ENV", "MedplumServer", "medplum_client", "medplum_server", "remote_from_env"]

REMOTE_ENV = ("MEDPLUM_BASE_URL", "MEDPLUM_CLIENT_ID", "MEDPLUM_CLIENT_SECRET")
"""Set all three to test against a running Medplum instead of a local server."""


@dataclass(frozen=True)
class MedplumServer:
    """A Medplum server to test against. ``base_url`` is the server root and ends with ``/``;
    ``local`` is the `LocalServer` when one was started for the session, else None (a remote one)."""

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    local: LocalServer | None = field(default=None, repr=False)

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}fhir/R4/"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}oauth2/token"

    def client(self, **options: Any) -> FhirClient:
        """A new `FhirClient` logged in with this server's client credentials (close it when done);
        `options` go to `FhirClient` (timeout=, concurrency=, ...)."""
        from .client import ClientCredentials, FhirClient

        return FhirClient(self.base_url, ClientCredentials(self.client_id, self.client_secret), **options)

    def reset(self) -> None:
        """Empty the local server's store. A remote server cannot be emptied: RuntimeError."""
        if self.local is None:
            raise RuntimeError("cannot empty a remote Medplum (MEDPLUM_BASE_URL is set): give each test's threads "
                               "unique keys instead")
        self.local.reset()


def remote_from_env(environ: dict[str, str] | None = None) -> MedplumServer | None:
    """The remote Medplum named by ``MEDPLUM_BASE_URL``/``_CLIENT_ID``/``_CLIENT_SECRET``, or None when
    none of them is set; ValueError naming the missing ones when only some are."""
    env = os.environ if environ is None else environ
    values = {name: env.get(name, "") for name in REMOTE_ENV}
    missing = [name for name, value in values.items() if not value]
    if len(missing) == len(REMOTE_ENV):
        return None
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: set all of {', '.join(REMOTE_ENV)} to test against a "
                         "running Medplum, or none of them to start a local server")
    base_url = values["MEDPLUM_BASE_URL"]
    return MedplumServer(base_url=base_url if base_url.endswith("/") else base_url + "/",
                         client_id=values["MEDPLUM_CLIENT_ID"], client_secret=values["MEDPLUM_CLIENT_SECRET"])


@pytest.fixture(scope="session")
def medplum_server() -> Iterator[MedplumServer]:
    """A Medplum server for the session: the remote one of ``MEDPLUM_BASE_URL`` & co, else a local one."""
    try:
        remote = remote_from_env()
    except ValueError as exc:
        pytest.fail(str(exc), pytrace=False)
    if remote is not None:
        yield remote
        return
    from .localserver import LocalServer, LocalServerError

    server = LocalServer(port=0)
    try:
        server.start()
    except LocalServerError as exc:
        pytest.fail(f"could not start a local Medplum server for medplum_server: {exc}\n(it needs npm; or set "
                    f"{', '.join(REMOTE_ENV)} to use a running Medplum)", pytrace=False)
    try:
        yield MedplumServer(base_url=server.base_url, client_id=server.client_id,
                            client_secret=server.client_secret, local=server)
    finally:
        server.stop()


@pytest.fixture
def medplum_client(medplum_server: MedplumServer) -> Iterator[FhirClient]:
    """A `FhirClient` logged in to ``medplum_server``, closed after the test."""
    client = medplum_server.client()
    try:
        yield client
    finally:
        client.close()
