"""The Medplum server a test talks to: a local one this session started, or the remote one the environment names.

Imports only the standard library: the pytest plugin uses it at collection time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..vocabulary import ServerUrls

if TYPE_CHECKING:
    from ..medplum.client import FhirClient
    from ..medplum.localserver import LocalServer

__all__ = ["REMOTE_ENV", "MedplumServer", "remote_from_env"]

REMOTE_ENV = ("MEDPLUM_BASE_URL", "MEDPLUM_CLIENT_ID", "MEDPLUM_CLIENT_SECRET")
"""Set all three to test against a running Medplum instead of a local server."""


@dataclass(frozen=True)
class MedplumServer(ServerUrls):
    """A Medplum server to test against. ``base_url`` is the server root and ends with ``/``;
    ``local`` is the `LocalServer` when one was started for the session, else None (a remote one)."""

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    local: LocalServer | None = field(default=None, repr=False)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis (and IPython) print it, in a failing example: as `repr`, without the secret (their
        printer would otherwise show every field of a dataclass)."""
        printer.text(repr(self))

    @property
    def is_local(self) -> bool:
        return self.local is not None

    def client(self, **options: Any) -> FhirClient:
        """A new `FhirClient` logged in with this server's client credentials (close it when done);
        `options` go to `FhirClient` (timeout=, concurrency=, ...)."""
        from ..medplum.client import ClientCredentials, FhirClient

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
