"""`import bundler`: `__all__` is the public API, pinned here, so a name leaves or joins it only on purpose."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import bundler
from bundler import errors

PUBLIC = {
    # building and checking
    "DEFAULT_IDENTIFIER_SYSTEM", "build_bundle", "build_bundles", "bundle_bytes", "BuildSummary", "build_files",
    "generate", "ThreadSpec", "load_specs", "parse_spec", "Issue", "validate", "validate_files",
    # talking to a server
    "BearerToken", "ClientCredentials", "FhirClient", "DoctorReport", "doctor", "LoadReport", "VerifyResult", "load",
    "verify", "DedupeResult", "dedupe", "ExportReport", "export", "MigrateSummary", "iter_threads", "migrate",
    # what goes wrong
    "Problem", "BundlerError", "SpecError", "OptionError", "ServerError", "AuthError", "Throttled", "Unreachable",
    "UnknownOutcome", "NotAtomic", "FileLocked", "JournalError", "JournalBusy", "LocalServerError", "PortInUse",
}


def test_all_is_the_pinned_public_api() -> None:
    assert len(bundler.__all__) == len(set(bundler.__all__)), "a name twice in __all__"
    assert set(bundler.__all__) == PUBLIC


def test_every_public_name_is_importable() -> None:
    assert sorted(bundler.__all__) == sorted(bundler._WHERE)  # each name says where it lives, and only those
    for name in bundler.__all__:
        assert getattr(bundler, name) is not None, name
    assert set(bundler.__all__) <= set(dir(bundler))


def test_a_name_outside_the_api_is_not_there() -> None:
    for name in ("dumps", "full_url", "check_bundles", "BundleInvalid", "no_such_name"):
        assert name not in bundler.__all__
        with pytest.raises(AttributeError):
            getattr(bundler, name)


def test_every_exception_is_public_and_under_the_base_error() -> None:
    """Each exception class of `bundler.errors` is in `__all__`, and a `BundlerError`: callers catch one base."""
    ours = {name for name, value in vars(errors).items()
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__}
    assert ours == {name for name in bundler.__all__
                    if inspect.isclass(getattr(bundler, name)) and issubclass(getattr(bundler, name), BaseException)}
    for name in ours:
        assert issubclass(getattr(bundler, name), bundler.BundlerError), name


def test_import_bundler_imports_none_of_the_stages() -> None:
    """`import bundler` loads no stage until a name is used (the pytest plugin imports `bundler.testing` cheaply)."""
    code = "import sys, bundler; print(sorted(m for m in sys.modules if m.startswith('bundler.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
