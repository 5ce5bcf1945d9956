"""What the client and the journal do with what they are given: tokens a server echoes, next links
to another origin, answers that are not what FHIR promises, connection problems in words, journal
files that are not journals. Through the fault proxy, against the real server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from faultproxy import FaultProxy, Rule
from loadkit import (
    POST,
    assert_exactly_once,
    cli,
    client_for,
    copies,
    env,
    errors,
    header_value,
    load,
    specs_for,
    write_specs,
)

from bundler import parse_spec
from bundler.errors import ServerError, UnknownOutcome
from bundler.load import Outcome
from bundler.medplum.auth import transport_problem
from bundler.testing.strategies import sample_specs
from bundler.vocabulary import identifier_token, query_decode, search_query

BUNDLE = {"Content-Type": "application/fhir+json"}


def _token(proxy: FaultProxy) -> str:
    """The bearer token the client sent (as the proxy saw it)."""
    auth = next(e.headers["authorization"] for e in proxy.log if "authorization" in e.headers)
    assert auth.startswith("Bearer ")
    return auth.removeprefix("Bearer ")


def _everything(folder: Path) -> str:
    return "".join(p.read_bytes().decode(errors="replace") for p in folder.rglob("*") if p.is_file())


# --- 5. a server that echoes our Authorization header --------------------------------------------------


def test_a_token_a_server_echoes_reaches_no_journal_report_or_output(project: Any, tmp_path: Path) -> None:
    data = sample_specs(3, 2, prefix=project.prefix, seed=6)
    write_specs(tmp_path / "threads", data)
    out = tmp_path / "out"
    args = ["load", str(tmp_path / "threads"), "--journal", str(out / "j.sqlite"), "--report", str(out / "r.json"),
            "--no-progress"]
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=400, echo_headers=True, method="POST", path=POST,
                       body_contains=header_value(data[1]["thread"])))
        proxy.add(Rule("status", status=400, echo_headers=True, method="GET", path=r"Communication\?_count=1&"))
        environ = {**env(project), "MEDPLUM_BASE_URL": proxy.url}
        loaded = cli(args, environ)
        doctor_text = cli(["doctor"], environ)
        doctor_json = cli(["doctor", "--format", "json"], environ)
        token = _token(proxy)
    assert loaded.returncode == 1 and "failed" in loaded.stderr
    stored = _everything(out)
    assert "bad request; headers were" in stored, "the echoed text did reach the journal and the report..."
    assert "Bearer ***" in stored and token not in stored, "...scrubbed of the token"
    for run in (loaded, doctor_text, doctor_json):
        assert token not in run.stdout + run.stderr
    assert doctor_text.returncode == 1 and "FAIL" in doctor_text.stdout and "Bearer ***" in doctor_text.stdout
    report = json.loads(doctor_json.stdout)
    assert report["ok"] is False and any("Bearer ***" in c["detail"] for c in report["checks"])
    with client_for(project) as client:  # the refused thread is not there, the others once
        counts = copies(client, [parse_spec(d) for d in data], whole_store=project.server is not None)
    assert {v: n for v, n in counts.items() if data[1]["thread"] in v} == {
        v: 0 for v in counts if data[1]["thread"] in v}
    assert all(n == 1 for v, n in counts.items() if data[1]["thread"] not in v)


# --- 6. next links ----------------------------------------------------------------------------------------


@pytest.fixture
def capture() -> Iterator[list[dict[str, str]]]:
    """A server on another loopback address that records every request's headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    seen.append({"port": str(server.server_address[1])})
    yield seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("where", ["http://127.0.0.2:{port}/fhir/R4/Communication?page=2",
                                   "{proxy}/fhir/R4/Communication?page=2",
                                   "http://127.0.0.1:1/fhir/R4/Communication?page=2",
                                   "https://{host}/fhir/R4/Communication?page=2",
                                   "http://127.0.0.2:{port}/somewhere/else/fhir/R4/Communication?page=2"])
def test_next_links_are_followed_at_our_own_base_url_only(project: Any, capture: list[dict[str, str]],
                                                          where: str) -> None:
    """Medplum writes next links at its configured base URL, which a proxy, a tunnel or `localhost` for `127.0.0.1`
    make another: the next page is asked of our base URL, by the link's path below the FHIR base, and nothing, no
    token, goes to the other origin."""
    port = capture.pop()["port"]
    with FaultProxy(project.target.base_url) as proxy:
        host = proxy.url.split("//", 1)[1].split("/", 1)[0]
        link = where.format(port=port, proxy=proxy.url.rstrip("/"), host=host)
        first = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                 "link": [{"relation": "next", "url": link}]}
        last = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        proxy.add(Rule("status", status=200, method="GET", path=r"Communication\?page=2$", headers=BUNDLE,
                       body=json.dumps(last)))
        proxy.add(Rule("status", status=200, method="GET", path="Communication", headers=BUNDLE,
                       body=json.dumps(first)))
        with client_for(project, proxy.url) as client:
            assert list(client.search_pages("Communication", {"_count": "1"})) == [first, last]
        asked = [e.path for e in proxy.log if e.method == "GET"]
        assert asked[-1].endswith("/fhir/R4/Communication?page=2"), asked
    assert capture == [], "nothing, and no token, reached the other origin"


def test_a_search_goes_out_as_search_query_writes_it(project: Any) -> None:
    """The client's GET searches are encoded by vocabulary.search_query (httpx sends the query as it is): each value
    read back by the server as given, a '+' as a '+'."""
    value = identifier_token("urn:x", f"{project.prefix}+1 é&b=c?d#e,f|g")
    params = {"identifier": value, "_count": "2"}
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        assert client.search("Patient", params) == []
        (path,) = [e.path for e in proxy.log if e.method == "GET" and "/Patient" in e.path]
    assert path.endswith("/fhir/R4/Patient?" + search_query(params)), path
    query = path.split("?", 1)[1]
    assert [query_decode(part.split("=", 1)[1]) for part in query.split("&")] == [value, "2"]


def test_a_next_link_that_names_no_fhir_path_or_the_page_itself_is_a_clear_error(project: Any) -> None:
    with FaultProxy(project.target.base_url) as proxy:
        for link, says in [("https://elsewhere.example/page/2", r"the server's next page is at "
                                                                 r"https://elsewhere.example/page/2, not below a FHIR "
                                                                 r"base \(fhir/R4/\): not followed"),
                           (f"{proxy.url.rstrip('/')}/fhir/R4/Communication?_count=1", "its next link is the page "
                                                                                       "itself")]:
            page = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                    "link": [{"relation": "next", "url": link}]}
            proxy.clear()
            proxy.add(Rule("status", status=200, method="GET", path="Communication", headers=BUNDLE,
                           body=json.dumps(page)))
            with client_for(project, proxy.url) as client, pytest.raises(ServerError, match=says):
                client.search("Communication", {"_count": "1"})


# --- answers that are not what FHIR promises -------------------------------------------------------------


@pytest.mark.parametrize(("body", "says"), [
    ([1, 2], "expected a Bundle, got a list"),
    ({"resourceType": "Bundle", "entry": [5]}, r"its entry\[0\] is a number, not an object"),
    ({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Communication"}}]},
     r"its entry\[0\] has no resource with an id"),
    ({"resourceType": "Bundle", "link": "next"}, "its link is text, not a list"),
    ("not json at all", "expected a Bundle, got nothing"),
])
def test_a_malformed_search_answer_is_a_clear_error(project: Any, body: Any, says: str) -> None:
    with FaultProxy(project.target.base_url) as proxy:
        text = body if isinstance(body, str) else json.dumps(body)
        proxy.add(Rule("status", status=200, method="GET", path="Communication", headers=BUNDLE, body=text))
        with client_for(project, proxy.url) as client, \
                pytest.raises(ServerError, match=rf"search Communication: the server's answer is not what FHIR "
                                                 rf"promises: {says}"):
            client.find_identifiers("Communication", ["urn:x|y"])


def test_a_malformed_transaction_answer_is_an_unknown_outcome_and_reconciled(project: Any, tmp_path: Path) -> None:
    specs = specs_for(project, 2, 2)
    with FaultProxy(project.target.base_url) as proxy, client_for(project, proxy.url) as client:
        # answered 200 with something unreadable: whatever the server did is unknown, so it is reconciled
        # (searched for) like a lost answer, never taken for a refusal nor for success
        proxy.add(Rule("status", status=200, method="POST", path=POST, headers=BUNDLE, times=1,
                       body_contains=header_value(specs[0].key), body='{"resourceType": "Bundle", "entry": [5]}'))
        report = load(specs, client, journal=tmp_path / "j.sqlite", late_margin=0.2)
        assert report.ok, [t.error for t in report.threads]
        assert any(e.method == "GET" and specs[0].key in e.path for e in proxy.log), "searched for"
        with pytest.raises(UnknownOutcome, match="transaction: the server's answer is not what FHIR promises"):
            proxy.add(Rule("status", status=200, method="POST", path=POST, headers=BUNDLE, body="[1, 2]"))
            client.transaction(b"{}", entries=1)
    with client_for(project) as client:
        assert_exactly_once(client, specs, project)


def test_a_token_answer_that_is_not_a_token_is_a_clear_error(project: Any, tmp_path: Path) -> None:
    with FaultProxy(project.target.base_url) as proxy:
        proxy.add(Rule("status", status=200, path="oauth2/token", headers={"Content-Type": "application/json"},
                       body='{"access_token": "abcdefgh", "token_type": "Bearer", "expires_in": "soon"}'))
        (tmp_path / "t.json").write_text(json.dumps(sample_specs(1, 1, prefix=project.prefix)))
        run = cli(["load", str(tmp_path / "t.json"), "--journal", str(tmp_path / "j.sqlite")],
                  {**env(project), "MEDPLUM_BASE_URL": proxy.url})
    assert run.returncode == 2 and errors(run) == 1
    assert "the token endpoint answered expires_in 'soon', not a number of seconds" in run.stderr
    assert "abcdefgh" not in run.stderr
    assert not (tmp_path / "j.sqlite").exists()


# --- connection problems in words ------------------------------------------------------------------------


def test_connection_problems_are_said_in_words(project: Any) -> None:
    request = httpx.Request("GET", "https://example.org/")
    assert transport_problem(httpx.ConnectError("[Errno 111] Connection refused", request=request)) == \
        "connection refused"
    assert transport_problem(httpx.ConnectTimeout("timed out", request=request)) == "connection timed out"
    assert transport_problem(httpx.ReadTimeout("timed out", request=request), timeout=60) == \
        "no answer within 60 s"
    assert transport_problem(httpx.ConnectError("[Errno -2] Name or service not known", request=request)) == \
        "host name not found"
    tls = httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate "
                             "(_ssl.c:1006)", request=request)
    assert transport_problem(tls) == "TLS failed (certificate verify failed: self-signed certificate)"
    assert transport_problem(httpx.RemoteProtocolError("x", request=request)) == \
        "the server closed the connection without answering"
    # and for real: TLS spoken to a plain HTTP server
    plain = project.target.base_url.replace("http://", "https://")
    with client_for(project, plain, max_attempts=1) as client, \
            pytest.raises(Exception, match=r"cannot reach https://.*: TLS failed") as caught:
        client.search("Communication", {"_count": "1"})
    assert "Error" not in str(caught.value)  # no httpx class name


# --- a journal file that is not a journal ------------------------------------------------------------


@pytest.mark.parametrize("content", ["garbage", "truncated", "other-tables"])
def test_a_corrupt_journal_is_refused_before_anything_is_sent(project: Any, tmp_path: Path, content: str) -> None:
    journal = tmp_path / "j.sqlite"
    if content == "garbage":
        journal.write_bytes(b"this is not a database\n" * 100)
    elif content == "truncated":
        with client_for(project) as client:
            load(specs_for(project, 20, 2), client, journal=journal)
        data = journal.read_bytes()
        journal.write_bytes(data[: len(data) // 3])
    else:
        import sqlite3

        with sqlite3.connect(journal) as db:
            db.execute("CREATE TABLE invoices (n)")
    (tmp_path / "t.json").write_text(json.dumps(sample_specs(2, 1, prefix=project.prefix)))
    with FaultProxy(project.target.base_url) as proxy:
        run = cli(["load", str(tmp_path / "t.json"), "--journal", str(journal)],
                  {**env(project), "MEDPLUM_BASE_URL": proxy.url})
        assert proxy.log == [], "the server is never touched"
    assert run.returncode == 2 and errors(run) == 1, run.stderr
    assert f"{journal} is not a usable journal" in run.stderr and "Move it away" in run.stderr
    assert "Nothing was sent" in run.stderr


def test_bad_specs_for_load_say_nothing_was_sent(project: Any, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("thread: x\n")
    run = cli(["load", str(tmp_path / "bad.yaml"), "--journal", str(tmp_path / "j.sqlite")], env(project))
    assert run.returncode == 2 and run.stderr.rstrip().endswith("; nothing sent")
    assert Outcome.FAILED  # (the outcome names are what reports show)
