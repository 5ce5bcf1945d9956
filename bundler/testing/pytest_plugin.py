"""pytest fixtures for testing code that sends thread bundles to Medplum (`pip install '.[testing]'` from a clone).

Installed with the package as the pytest plugin `thread_bundler` (entry point `pytest11`), so the
fixtures are there in every test session without a conftest:

    def test_my_bot_posts_a_thread(medplum_client):
        my_bot.post(medplum_client)                     # e.g. medplum_client.transaction(body, entries=n)
        assert_same_thread(spec, fetch_thread(medplum_client, spec["thread"]))

``medplum_server`` (session): a `MedplumServer` (base_url, client_id, client_secret, local). By default
a local Medplum FHIR server (`bundler.medplum.localserver.LocalServer`, needs `npm`) started on a free
loopback port the first time a test asks for it and stopped at the end of the session. When
``MEDPLUM_BASE_URL``, ``MEDPLUM_CLIENT_ID`` and ``MEDPLUM_CLIENT_SECRET`` are all set, that Medplum is
used instead and nothing is started. The server keeps what each test loads: give each test's threads
keys of their own, made in the test body (``f"t-{uuid.uuid4()}"``: hypothesis repeats the examples it
generates, and a generated key comes back), or call ``medplum_server.reset()`` on a local server.

``medplum_client`` (function): a `bundler.FhirClient` logged in to ``medplum_server`` with its
client credentials, closed after the test.

This module runs in every pytest session of anyone who installs the package, so it imports only
pytest and the standard library; the server and client code (and hypothesis, which it never needs)
are imported when a test first asks for a fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .server import REMOTE_ENV, MedplumServer, remote_from_env

if TYPE_CHECKING:
    from ..medplum.client import FhirClient

__all__ = ["REMOTE_ENV", "MedplumServer", "medplum_client", "medplum_server", "remote_from_env"]

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
    from ..errors import LocalServerError
    from ..medplum.localserver import LocalServer

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
