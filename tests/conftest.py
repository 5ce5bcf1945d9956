"""Shared fixtures: a Medplum server to test against.

``medplum_target`` (session): the server of our own pytest plugin's ``medplum_server`` fixture
(``bundler.testing.pytest_plugin``, the one users get): a local Medplum server started once per session on a
free port, or, when ``MEDPLUM_BASE_URL``, ``MEDPLUM_CLIENT_ID`` and ``MEDPLUM_CLIENT_SECRET`` are all
set, that remote Medplum (nothing is started).

``THREAD_BUNDLER_TEST_PROJECTS`` names a folder of env files, one per kind of Medplum project, as
``../shared/real-medplum/up`` writes them (`main.env`, `strict.env`, `defaults.env`, `bench.env`): a test
that asks for a kind of project (``project.configure(check_references_on_write=True)``: a strict one;
``transaction_bundles=False``: one that runs transactions as batches) gets that project, and a test marked
``volume`` (many writes) gets the one whose quota is lifted. ``.ci/real-medplum`` runs the suite that way.

``project`` (function): a clean slate per test. On the local server the store and quota are emptied
before the test and the default settings restored after it. On a remote server nothing can be
emptied, so tests must put ``project.prefix`` (unique per test) into their thread keys and
identifiers.

``local_server`` (function) / marker ``local_only``: for tests that need switches only the local
server has (quota, short token TTL, faults inside the server); skipped with a reason on a remote server.

Every test that talks to a server (it uses one of `SERVER_FIXTURES`) is marked ``wire``: ``pytest -m wire``
runs just those, as the real-Medplum pass does.
"""

from __future__ import annotations

import os
import shlex
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

from bundler.medplum.localserver import LocalServer
from bundler.testing.pytest_plugin import MedplumServer, remote_from_env

LOCAL_ONLY_REASON = "needs a switch only the local Medplum server has (remote MEDPLUM_BASE_URL is set)"
PROJECTS_ENV = "THREAD_BUNDLER_TEST_PROJECTS"
"""A folder of env files, one per kind of project (`PROJECT_FILES`), as ../shared/real-medplum/up writes them."""
PROJECT_FILES = {"atomic": "main.env", "strict": "strict.env", "non-atomic": "defaults.env", "volume": "bench.env"}
KIND_SETTINGS: dict[str, dict[str, Any]] = {"atomic": {}, "strict": {"check_references_on_write": True},
                                           "non-atomic": {"transaction_bundles": False}}
"""The local server's settings that make it each kind of project (`project_kind` is their inverse)."""
"""Kind of project → its env file: atomic transactions; atomic and checkReferencesOnWrite; transactions run as
batches (a new project's default); atomic with the quota lifted (for tests that write a lot)."""
SERVER_FIXTURES = frozenset({"project", "local_server", "medplum_target", "medplum_server", "medplum_client"})


MedplumTarget = MedplumServer
"""Where the tests send FHIR traffic: the plugin's session server (``local`` is the LocalServer, if any)."""


def project_kind(settings: Mapping[str, Any]) -> str | None:
    """The kind of real project that has these local-server `settings`, or None when no kind does (a quota, a
    token lifetime: switches only the local server has)."""
    if not set(settings) <= {"transaction_bundles", "check_references_on_write"}:
        return None
    atomic = settings.get("transaction_bundles", True)
    strict = settings.get("check_references_on_write", False)
    return {(True, False): "atomic", (True, True): "strict", (False, False): "non-atomic"}.get((atomic, strict))


@dataclass
class Project:
    """A clean slate for one test; ``prefix`` is unique per test (use it in identifiers). ``target`` is the
    server (and project) the test talks to: `configure` may move it to another kind of project."""

    target: MedplumTarget
    prefix: str
    kinds: Mapping[str, MedplumTarget] = field(default_factory=dict)  # remote projects by kind, when known
    kind: str = "atomic"

    @property
    def server(self) -> LocalServer | None:
        return self.target.local

    def configure(self, **settings: Any) -> None:
        """Change local server settings for this test (restored afterwards). On a remote Medplum: move to the
        project of that kind (`project_kind`), or skip when there is none."""
        if self.target.local is not None:
            self.target.local.configure(**settings)
            return
        kind = project_kind(settings)
        if kind is None or kind not in self.kinds:
            pytest.skip(f"no remote project with {settings} ({PROJECTS_ENV} names the kinds there are)")
        self.kind, self.target = kind, self.kinds[kind]


settings.register_profile("suite", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""Every hypothesis test's settings (a test sets only its own `max_examples`): the same examples every run (a test
fails every run or never, and no `.hypothesis/` folder replays an old failure), no deadline (a busy machine is
not a slow test), and big examples allowed (our strategies make long texts and 50-entry bundles on purpose)."""
settings.register_profile("explore", settings.get_profile("suite"), derandomize=False,
                          database=settings.get_profile("default").database)
"""`pytest --hypothesis-profile=explore`: fresh random examples each run, failures kept in `.hypothesis/` and
tried first the next run: to look for new bugs rather than to hold the known ones."""
settings.load_profile("suite")  # here, not in pytest_configure: `--hypothesis-profile` is loaded after it

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
    config.addinivalue_line("markers", "wire: talks to a Medplum server (set on every test using one)")
    config.addinivalue_line("markers", "release: builds the sdist and the wheel and installs the wheel into a clean "
                                       "venv (a minute or two)")
    config.addinivalue_line("markers", "volume: writes a lot: on a real Medplum, gets the project whose quota is "
                                       "lifted")
    config.addinivalue_line("markers", "project_kind(kind): the test's project is of this kind from the start "
                                       f"({', '.join(KIND_SETTINGS)}): what project.configure would make it")
    from fuzzing import register_fuzz_profile

    examples = config.getoption("--fuzz-examples")
    register_fuzz_profile(examples or FUZZ_EXAMPLES, derandomize=examples is None)
    if os.environ.get(PROJECTS_ENV) or _remote() is not None:
        # against a remote server an example takes seconds, not milliseconds: a failure is shown as found,
        # not shrunk (hundreds of loads and logins)
        settings.register_profile("remote", phases=(Phase.explicit, Phase.reuse, Phase.generate))
        settings.load_profile("remote")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.wire)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("local_only") is not None and _remote() is not None:
        pytest.skip(LOCAL_ONLY_REASON)


def _remote() -> MedplumServer | None:
    try:
        return remote_from_env()
    except ValueError:
        return None  # half-set: medplum_server fails the tests that need a server, naming what is missing


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines (with or without `export`, shell-quoted or not) of an env file; comments skipped."""
    out = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        for word in words:
            name, eq, value = word.partition("=")
            if eq:
                out[name] = value
    return out


def remote_projects(folder: str | None = None) -> dict[str, MedplumServer]:
    """The remote projects `THREAD_BUNDLER_TEST_PROJECTS` names, by kind (those whose env file is there)."""
    folder = folder if folder is not None else os.environ.get(PROJECTS_ENV)
    if not folder:
        return {}
    out = {}
    for kind, name in PROJECT_FILES.items():
        path = Path(folder).expanduser() / name
        if path.is_file():
            server = remote_from_env(read_env_file(path))
            if server is not None:
                out[kind] = server
    if "atomic" not in out:
        raise pytest.UsageError(f"{PROJECTS_ENV}={folder}: no {PROJECT_FILES['atomic']} there (an atomic project)")
    return out


@pytest.fixture(scope="session")
def remote_kinds() -> dict[str, MedplumServer]:
    return remote_projects()


@pytest.fixture(scope="session")
def medplum_target(request: pytest.FixtureRequest, remote_kinds: dict[str, MedplumServer]) -> MedplumTarget:
    """The atomic project of `THREAD_BUNDLER_TEST_PROJECTS`, else the plugin's session server (ours,
    `bundler.testing.pytest_plugin`, the one users get)."""
    if remote_kinds:
        return remote_kinds["atomic"]
    server: MedplumTarget = request.getfixturevalue("medplum_server")
    return server


@pytest.fixture
def project(request: pytest.FixtureRequest, medplum_target: MedplumTarget, remote_kinds: dict[str, MedplumServer]
            ) -> Iterator[Project]:
    server = medplum_target.local
    if server is not None:
        server.reset()
    kinds = remote_kinds or ({} if server is not None else {"atomic": medplum_target})
    target, kind = medplum_target, "atomic"
    if request.node.get_closest_marker("volume") is not None and "volume" in kinds:
        target, kind = kinds["volume"], "volume"
    made = Project(target=target, prefix=f"t{uuid.uuid4().hex[:12]}", kinds=kinds, kind=kind)
    if (marker := request.node.get_closest_marker("project_kind")) is not None:
        made.configure(**KIND_SETTINGS[marker.args[0]])
    try:
        yield made
    finally:
        if server is not None and server.running:
            server.restore_defaults()


@pytest.fixture
def local_server(project: Project) -> LocalServer:
    """The local server of this test's project (settings restored after the test); skips on a remote one."""
    if project.server is None:
        pytest.skip(LOCAL_ONLY_REASON)
    return project.server


@pytest.fixture(autouse=True)
def journal_saves_are_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test that loads checks, after each journal save of a thread (which writes only the entries that
    changed since its last one: `ThreadLoad.dirty`), that the journal holds what a save of the whole thread would:
    a change the machine forgot to mark would leave the journal behind the server, and fail here."""
    from bundler.load.machine import ThreadLoad

    save = ThreadLoad._save

    def checked(self: ThreadLoad, *args: Any, **kwargs: Any) -> None:
        save(self, *args, **kwargs)
        journal = self.s.journal
        if self.s.plan is not None or journal.read_only:
            return
        row = journal.get_many([self.t.spec.key])[self.t.spec.key]
        ids, entries = self.records()
        assert row.ids == ids == self.ids, f"{self.t.spec.key}: the journal's ids are not the thread's"
        assert row.entries == entries, f"{self.t.spec.key}: the journal's entries are not the thread's"

    monkeypatch.setattr(ThreadLoad, "_save", checked)
