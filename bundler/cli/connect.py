"""The options every command that talks to a server shares, as the Medplum CLI names them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import BundlerError
from ..load.concurrency import AUTO, MOST
from ..medplum.auth import BearerToken, ClientCredentials, MedplumAuth
from ..medplum.client import FhirClient
from .common import SECRETS

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(func: F) -> F:
    """--base-url/--client-id/--client-secret (or MEDPLUM_* variables), --token, --allow-insecure, --timeout."""
    options = [
        click.option("--base-url", envvar="MEDPLUM_BASE_URL", metavar="URL",
                     help="Medplum server root, e.g. https://api.medplum.com/ [env MEDPLUM_BASE_URL]"),
        click.option("--client-id", envvar="MEDPLUM_CLIENT_ID", help="OAuth2 client id [env MEDPLUM_CLIENT_ID]"),
        click.option("--client-secret", envvar="MEDPLUM_CLIENT_SECRET", show_envvar=False,
                     help="OAuth2 client secret [env MEDPLUM_CLIENT_SECRET]; prefer the variable."),
        click.option("--token", envvar="MEDPLUM_TOKEN", help="A ready bearer token instead of client credentials."),
        click.option("--allow-insecure", is_flag=True, help="Allow plain http to a host that is not loopback."),
        click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds per request."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_client(base_url: str | None, client_id: str | None, client_secret: str | None, token: str | None,
                allow_insecure: bool, timeout: float, concurrency: int | str = 4) -> FhirClient:
    """A client for the options given; `concurrency` the most requests it keeps connections for ("auto": what
    `load --concurrency auto` may go up to)."""
    if not base_url:
        raise BundlerError("no server: give --base-url or set MEDPLUM_BASE_URL")
    SECRETS.add(client_secret)
    SECRETS.add(token)
    if token:
        auth: MedplumAuth = BearerToken(token)
    elif client_id and client_secret:
        auth = ClientCredentials(client_id, client_secret)
    else:
        raise BundlerError("no credentials: give --client-id and --client-secret (or MEDPLUM_CLIENT_ID and "
                           "MEDPLUM_CLIENT_SECRET), or --token")
    most = MOST if concurrency == AUTO or not isinstance(concurrency, int) else concurrency
    return FhirClient(base_url, auth, timeout=timeout, allow_insecure=allow_insecure, concurrency=most,
                      secrets=SECRETS)


def with_client(func: F) -> F:
    """Pass a ready FhirClient as `client` in place of the connection options."""

    @functools.wraps(func)
    def wrapper(*args: Any, base_url: str | None, client_id: str | None, client_secret: str | None,
                token: str | None, allow_insecure: bool, timeout: float, **kwargs: Any) -> Any:
        client = make_client(base_url, client_id, client_secret, token, allow_insecure, timeout,
                             kwargs.get("concurrency", 4))
        with client:
            return func(*args, client=client, **kwargs)

    return wrapper  # type: ignore[return-value]
