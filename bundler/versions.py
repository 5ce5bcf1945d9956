"""What `thread-bundler --version` says: the package's version and the Medplum versions it is tested against.

The local server's @medplum packages are read from the lock file shipped with its sources
(`medplum-local/package-lock.json`, `bundler/medplum_local/` in a wheel), the real server's release from
`vocabulary.REAL_MEDPLUM_VERSION`: neither is written here.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import orjson

from . import assets
from .vocabulary import REAL_MEDPLUM_VERSION

DISTRIBUTION = "thread-bundler"

OLD_NAMES_REMOVED_IN = "0.2.0"
"""The release that drops the old option names (hidden aliases that warn, `cli.common.deprecated_alias`): they are
kept for one minor version after the renames (CHANGELOG.md), and a test fails once the package reaches this one."""


def package_version() -> str:
    """The installed distribution's version (pyproject's `version`)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # (a source tree on sys.path, not installed)
        return "unknown"


def local_medplum_packages() -> dict[str, str]:
    """The local server's direct @medplum dependencies and the versions its lock file installs, by name; empty
    when the server's sources are not there."""
    try:
        folder = assets.asset_dir("medplum-local")
        manifest: dict[str, Any] = orjson.loads((folder / "package.json").read_bytes())
        lock: dict[str, Any] = orjson.loads((folder / "package-lock.json").read_bytes())
    except (FileNotFoundError, OSError, orjson.JSONDecodeError):
        return {}
    installed = lock.get("packages", {})
    return {name: str(installed.get(f"node_modules/{name}", {}).get("version", spec))
            for name, spec in sorted(manifest.get("dependencies", {}).items()) if name.startswith("@medplum/")}


def version_text() -> str:
    """`thread-bundler --version`: two lines, the package and the Medplum versions it is tested against."""
    local = ", ".join(f"{name} {version}" for name, version in local_medplum_packages().items()) or "not shipped"
    return (f"thread-bundler {package_version()}\n"
            f"tested against Medplum server {REAL_MEDPLUM_VERSION} (@medplum/server, Postgres, Redis) and the local "
            f"server on {local}")
