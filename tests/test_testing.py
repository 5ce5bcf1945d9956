"""bundler.testing and bundler.testing.pytest_plugin: the assertions, the fixtures (run in a pytester session, as a
user's test suite would), the plugin's light import, and examples/ run as a user would run them."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bundler.build import build_bundle
from bundler.check import validate
from bundler.medplum.localserver import cache_root
from bundler.spec import parse_spec
from bundler.testing import assert_same_thread, assert_valid_thread_bundle
from bundler.testing.mutations import MUTATIONS
from bundler.testing.pytest_plugin import REMOTE_ENV, remote_from_env
from bundler.testing.strategies import bundles, invalid_bundles, thread_specs

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
SERVER_CACHE = cache_root()  # read before pytester moves HOME, so its sessions reuse the installed local server
QUICK = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
SPEC = {"thread": "lab-1", "topic": "Lab results", "subject": "homer",
        "participants": {"homer": {"reference": "Patient/homer-1", "display": "Homer"},
                         "alice": {"reference": "Practitioner/alice-1"}},
        "messages": [{"sender": "alice", "sent": "2024-04-10T10:00:00Z", "text": "Results are in."},
                     {"sender": "homer", "sent": "2024-04-10T12:05:00+02:00", "text": "Thanks!", "reply_to": "1"}]}


# --- assert_valid_thread_bundle ------------------------------------------------------------------------


@QUICK
@given(bundles(max_messages=4))
def test_valid_bundles_pass_as_dicts_and_as_json(bundle: dict[str, Any]) -> None:
    assert_valid_thread_bundle(bundle)
    assert_valid_thread_bundle(orjson.dumps(bundle))


@QUICK
@given(invalid_bundles(max_messages=3))
def test_invalid_bundles_fail_listing_every_issue(bundle: dict[str, Any]) -> None:
    issues = validate(bundle)
    errors = [i for i in issues if i.severity == "error"]
    with pytest.raises(AssertionError) as info:
        assert_valid_thread_bundle(bundle)
    lines = str(info.value).splitlines()
    assert lines[0] == (f"{len(errors)} error{'s' * (len(errors) != 1)}, {len(issues) - len(errors)} "
                        f"warning{'s' * (len(issues) - len(errors) != 1)} in the bundle:")
    assert lines[1:] == [f"  {i.severity}[{i.code}] {i.path}: {i.message}" for i in issues]
    if not errors:  # warnings only
        assert_valid_thread_bundle(bundle, allow_warnings=True)
    else:
        with pytest.raises(AssertionError):
            assert_valid_thread_bundle(bundle, allow_warnings=True)


def test_limits_and_warnings_options() -> None:
    big = MUTATIONS["limit.body-size"](build_bundle(SPEC), random.Random(1))
    with pytest.raises(AssertionError, match=r"warning\[limit\.body-size\] Bundle: "):
        assert_valid_thread_bundle(big)  # a warning: posted as is, it is refused; the loader cuts it into parts
    assert_valid_thread_bundle(big, allow_warnings=True)
    assert_valid_thread_bundle(big, limits="none")
    header_only = build_bundle({k: v for k, v in SPEC.items() if k != "messages"})
    header_only["entry"][0]["resource"]["topic"]["text"] = f"see {header_only['entry'][0]['fullUrl']}"
    with pytest.raises(AssertionError, match=r"^0 errors, 1 warning in the bundle:\n  warning\[ref\.in-text\] "):
        assert_valid_thread_bundle(header_only)
    assert_valid_thread_bundle(header_only, allow_warnings=True)


# --- assert_same_thread (against a simulated server) ------------------------------------------------


def as_stored(bundle: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """What a server returns for a bundle's resources: ids and meta added, urn references rewritten."""
    ids = {e["fullUrl"]: str(uuid.UUID(int=rng.getrandbits(128), version=4)) for e in bundle["entry"]}
    text = orjson.dumps([e["resource"] for e in bundle["entry"]]).decode()
    for urn, rid in ids.items():
        text = text.replace(f'"{urn}"', f'"Communication/{rid}"')
    out = []
    for resource, rid in zip(json.loads(text), ids.values(), strict=True):
        out.append({**resource, "id": rid, "meta": {"versionId": "1", "lastUpdated": "2024-04-10T10:00:00.000Z"}})
    rng.shuffle(out)
    return out


@QUICK
@given(thread_specs(max_messages=4), st.randoms(use_true_random=False))
def test_a_stored_thread_is_the_same_as_its_spec(spec: dict[str, Any], rng: random.Random) -> None:
    stored = as_stored(build_bundle(spec), rng)
    assert_same_thread(spec, stored)
    assert_same_thread(parse_spec(spec), stored)
    assert_same_thread(spec, {"resourceType": "Bundle", "type": "searchset",
                              "entry": [{"resource": r} for r in stored]})


def test_differences_are_listed_one_per_line() -> None:
    stored = as_stored(build_bundle(SPEC), random.Random(1))
    reply = next(r for r in stored if "inResponseTo" in r)
    reply["payload"][0]["contentString"] = "Thanks!!"
    with pytest.raises(AssertionError) as info:
        assert_same_thread(SPEC, stored)
    assert str(info.value).splitlines() == [
        "thread 'lab-1' differs from its spec (1 difference):",
        "  messages[2] (2).payload[0].contentString: expected 'Thanks!', got 'Thanks!!'"]
    with pytest.raises(AssertionError) as info:
        assert_same_thread(SPEC, [r for r in stored if r is not reply])
    assert str(info.value).splitlines()[1:] == [
        "  messages[2] (2): not on the server (identifier urn:thread-bundler:thread|lab-1/2)"]
    with pytest.raises(AssertionError, match="not on the server"):
        assert_same_thread(SPEC, [])


def test_other_identifier_systems() -> None:
    system = "https://example.org/threads"
    stored = as_stored(build_bundle(SPEC, identifier_system=system), random.Random(2))
    assert_same_thread(SPEC, stored, identifier_system=system)
    with pytest.raises(AssertionError, match="has no urn:thread-bundler:thread identifier"):
        assert_same_thread(SPEC, stored)


# --- the pytest plugin, in a user's session --------------------------------------------------------


@pytest.fixture
def user_session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester session that loads the plugin only through `-p bundler.testing.pytest_plugin` (so the tests
    hold before and after its pytest11 entry point is installed; loading it twice is an error). Run it
    with `runpytest_subprocess`: an in-process run unloads the modules it imported (httpcore's among
    them), which leaves this session's httpx raising exceptions of a stale module."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("THREAD_BUNDLER_CACHE", str(SERVER_CACHE))
    return pytester


USER_TESTS = '''
import orjson, uuid
import pytest
from bundler.build import build_bundle
from bundler.testing import assert_same_thread, fetch_thread

def spec():
    return {"thread": f"t-{uuid.uuid4()}", "topic": "Lab results",
            "participants": {"homer": {"reference": "Patient/homer-1"}, "dr": {"reference": "Practitioner/d-1"}},
            "messages": [{"sender": "dr", "sent": "2024-04-10T10:00:00Z", "text": "Results are in 🧪"},
                         {"sender": "homer", "sent": "2024-04-10T10:05:00Z", "text": "شكرا", "reply_to": "1"}]}

def post(client, thread):
    bundle = build_bundle(thread)
    client.transaction(orjson.dumps(bundle), entries=len(bundle["entry"]))

def test_a_posted_thread_reads_back_the_same(medplum_server, medplum_client):
    assert medplum_server.is_local is IS_LOCAL
    thread = spec()
    post(medplum_client, thread)
    assert_same_thread(thread, fetch_thread(medplum_client, thread["thread"]))

def test_a_difference_fails(medplum_client):
    thread = spec()
    post(medplum_client, thread)
    thread["messages"][1]["text"] = "merci"
    with pytest.raises(AssertionError, match=r"\\.payload\\[0\\]\\.contentString: expected 'merci'"):
        assert_same_thread(thread, fetch_thread(medplum_client, thread["thread"]))

def test_one_server_per_session(medplum_server, medplum_client, pytestconfig):
    assert medplum_client.root == medplum_server.base_url
    (pytestconfig.rootpath / "base_url").write_text(medplum_server.base_url)
'''


@pytest.mark.local_only
def test_plugin_starts_a_local_server_for_the_session(user_session: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REMOTE_ENV:
        monkeypatch.delenv(name, raising=False)
    user_session.makepyfile(test_user=USER_TESTS.replace("IS_LOCAL", "True"))
    result = user_session.runpytest_subprocess("-p", "bundler.testing.pytest_plugin")
    result.assert_outcomes(passed=3)
    base_url = (user_session.path / "base_url").read_text()
    assert base_url.startswith("http://127.0.0.1:")
    host, port = base_url.removeprefix("http://").rstrip("/").split(":")
    with pytest.raises(ConnectionRefusedError):  # stopped at the end of the session
        socket.create_connection((host, int(port)), timeout=2)


def _use_target(monkeypatch: pytest.MonkeyPatch, target: Any) -> None:
    """Point the plugin at our conftest's `medplum_target`, as a user points it at a running Medplum."""
    monkeypatch.setenv("MEDPLUM_BASE_URL", target.base_url.rstrip("/"))
    monkeypatch.setenv("MEDPLUM_CLIENT_ID", target.client_id)
    monkeypatch.setenv("MEDPLUM_CLIENT_SECRET", target.client_secret)


def test_plugin_uses_the_medplum_named_in_the_environment(user_session: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          medplum_target: Any) -> None:
    _use_target(monkeypatch, medplum_target)
    user_session.makepyfile(test_user=USER_TESTS.replace("IS_LOCAL", "False") + '''
def test_a_remote_server_is_not_emptied(medplum_server):
    assert medplum_server.base_url == "''' + medplum_target.base_url + '''"
    with pytest.raises(RuntimeError, match="cannot empty a remote Medplum"):
        medplum_server.reset()
''')
    result = user_session.runpytest_subprocess("-p", "bundler.testing.pytest_plugin")
    result.assert_outcomes(passed=4)
    assert (user_session.path / "base_url").read_text() == medplum_target.base_url


def test_plugin_refuses_a_half_set_environment(user_session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in REMOTE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDPLUM_BASE_URL", "https://medplum.example.org/")
    user_session.makepyfile(test_user="def test_x(medplum_client):\n    pass\n")
    result = user_session.runpytest_subprocess("-p", "bundler.testing.pytest_plugin")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*MEDPLUM_CLIENT_ID, MEDPLUM_CLIENT_SECRET not set: set all of*"])
    assert remote_from_env({}) is None
    assert remote_from_env(dict.fromkeys(REMOTE_ENV, "x")).base_url == "x/"  # type: ignore[union-attr]


def test_plugin_imports_nothing_heavy_and_works_without_hypothesis(tmp_path: Path) -> None:
    (tmp_path / "test_it.py").write_text("def test_nothing(medplum_client):\n    pass\n")
    script = textwrap.dedent('''
        import sys
        sys.modules["hypothesis"] = None  # as if not installed: importing it raises ImportError
        import bundler, pytest
        before = set(sys.modules)
        import bundler.testing.pytest_plugin
        added = sorted(set(sys.modules) - before)
        light = {"bundler.testing", "bundler.testing.pytest_plugin", "bundler.testing.server", "bundler.vocabulary"}
        assert set(added) <= light, added  # the standard library only beyond these: no httpx, pydantic, ...
        args = ["-p", "bundler.testing.pytest_plugin", "-p", "no:cacheprovider", "--fixtures", sys.argv[1]]
        sys.exit(pytest.main(args))
    ''')
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "test_it.py")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "medplum_server [session scope]" in done.stdout and "medplum_client" in done.stdout


# --- examples/ ------------------------------------------------------------------------------------


def test_the_example_tests_pass_as_a_user_would_run_them(user_session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                          medplum_target: Any) -> None:
    _use_target(monkeypatch, medplum_target)  # this session's server: no second one to start
    assert [p.name for p in (ROOT / "examples").glob("*.py")] == ["test_my_bundles.py"]  # one file, complete
    (user_session.path / "test_my_bundles.py").write_text((ROOT / "examples" / "test_my_bundles.py").read_text())
    result = user_session.runpytest_subprocess("-p", "bundler.testing.pytest_plugin")
    result.assert_outcomes(passed=2)


def test_a_failing_example_never_prints_the_client_secret() -> None:
    """Hypothesis prints a failing example field by field (a dataclass's too, repr=False or not): a server's secret
    would land in a CI log."""
    from bundler.testing import MedplumServer

    server = MedplumServer("http://127.0.0.1:1/", "the-client-id", "s3cret-never-shown")

    @settings(database=None, phases=[Phase.explicit, Phase.generate])
    @given(st.just(server))
    def fails(s: Any) -> None:
        raise AssertionError("no")

    with pytest.raises(AssertionError) as info:
        fails()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "the-client-id" in notes and "s3cret-never-shown" not in notes
