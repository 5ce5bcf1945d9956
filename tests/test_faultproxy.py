"""Tests for the fault-injecting proxy, against a tiny stdlib upstream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

try:
    from tests.faultproxy import FaultProxy, Rule, throttled
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from faultproxy import FaultProxy, Rule, throttled  # type: ignore[no-redef]

CONN_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    url: str
    seen: list[Seen] = field(default_factory=list)
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    state: Upstream  # set per fixture on a subclass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = urlsplit(self.path)
        with self.state.lock:
            self.state.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if url.path == "/count" and self.command == "POST":
                self.state.count += 1
            count = self.state.count
        if url.path == "/count":
            self._send(201 if self.command == "POST" else 200, json.dumps({"count": count}).encode())
        elif url.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:  # echo
            status = int(parse_qs(url.query).get("status", ["200"])[0])
            echo = {
                "method": self.command,
                "path": self.path,
                "body": body.decode(),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            self._send(
                status, json.dumps(echo).encode(), (("X-Upstream", "yes"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"))
            )

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any


class _UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    handler = type("Handler", (_UpstreamHandler,), {})
    server = _UpstreamServer(("127.0.0.1", 0), handler)
    handler.state = state = Upstream(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url, seed=1) as p:
        yield p


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=10) as c:
        yield c


def test_forwards_faithfully(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    r = client.put(
        "/echo/Patient/1?status=201&x=a%20b",
        content=b'{"a":1}',
        headers={"Authorization": "Bearer tok", "X-Custom": "v", "Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 201
    assert r.headers["x-upstream"] == "yes"
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
    echo = r.json()
    assert (echo["method"], echo["path"], echo["body"]) == ("PUT", "/echo/Patient/1?status=201&x=a%20b", '{"a":1}')
    assert echo["headers"]["authorization"] == "Bearer tok"
    assert echo["headers"]["x-custom"] == "v"
    assert echo["headers"]["content-type"] == "application/fhir+json"
    assert echo["headers"]["host"] == urlsplit(upstream.url).netloc
    # keep-alive: more requests on the same client, incl. bodyless ones, chunked responses, HEAD
    assert client.get("/echo").json()["body"] == ""
    assert client.delete("/echo/x").json()["method"] == "DELETE"
    r = client.get("/chunked")
    assert r.content == b"hello chunked world"
    assert r.headers["content-length"] == str(len(r.content)) and "transfer-encoding" not in r.headers
    assert client.head("/echo").status_code == 200
    # chunked request bodies are de-chunked and forwarded with a Content-Length
    assert client.post("/echo", content=iter([b"ab", b"cd"])).json()["body"] == "abcd"
    assert upstream.seen[-1].headers["content-length"] == "4"
    assert [e.action for e in proxy.log] == ["forwarded"] * 6
    assert [e.upstream_status for e in proxy.log[:2]] == [201, 200]


def test_upstream_base_path_kept_in_url(upstream: Upstream) -> None:
    with FaultProxy(upstream.url + "/fhir/R4/", seed=0) as p:
        assert p.url.endswith("/fhir/R4")
        assert httpx.get(p.url + "/Patient").json()["path"] == "/fhir/R4/Patient"


def test_nth_status(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    rule = proxy.add(Rule("status", status=503, method="POST", path=r"^/count", nth=2))
    codes = [client.post("/count").status_code for _ in range(4)]
    client.get("/count")  # does not match (GET)
    assert codes == [201, 503, 201, 201]
    assert upstream.count == 3
    assert (rule.seen, rule.fired) == (4, 1)
    assert [e.action for e in proxy.log] == ["forwarded", "status 503", "forwarded", "forwarded", "forwarded"]


def test_throttled_429_body_and_headers(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(throttled(retry_after=2, body_contains='"resourceType":"Bundle"', every=2))
    bundle = b'{"resourceType":"Bundle","type":"transaction"}'
    codes = [client.post("/echo", content=bundle).status_code for _ in range(4)]
    assert codes == [200, 429, 200, 429]
    assert client.post("/echo", content=b"{}").status_code == 200  # body does not match
    assert client.post("/echo", content=bundle).status_code == 200
    r = client.post("/echo", content=bundle)
    assert r.status_code == 429
    assert r.headers["ratelimit"] == '"requests";r=0;t=2'
    assert r.json()["issue"][0]["code"] == "throttled"


def _pattern(upstream: Upstream, seed: int) -> list[int]:
    with FaultProxy(upstream.url, seed=seed) as p, httpx.Client(base_url=p.url) as c:
        p.add(Rule("status", status=502, fraction=0.5))
        return [c.get("/echo").status_code for _ in range(40)]


def test_fraction_reproducible_with_seed(upstream: Upstream) -> None:
    a, b, other = _pattern(upstream, 42), _pattern(upstream, 42), _pattern(upstream, 43)
    assert a == b
    assert a != other
    assert set(a) == {200, 502} and 5 < a.count(502) < 35


def test_drop_before(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(Rule("drop_before", method="POST", nth=1))
    with pytest.raises(CONN_ERRORS):
        client.post("/count", json={"x": 1})
    assert upstream.count == 0 and upstream.seen == []
    assert client.post("/count").json() == {"count": 1}  # a new connection works again
    assert [e.action for e in proxy.log] == ["drop-before", "forwarded"]


def test_drop_after(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(Rule("drop_after", method="POST", path="/count", times=1))
    with pytest.raises(CONN_ERRORS):
        client.post("/count")
    assert upstream.count == 1  # committed upstream, yet the client saw no response
    assert proxy.log[0].action == "drop-after" and proxy.log[0].upstream_status == 201
    assert client.post("/count").json() == {"count": 2}  # blind retry duplicates


def test_drop_with_reset(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(Rule("drop_after", nth=1, reset=True))
    with pytest.raises(CONN_ERRORS):
        client.post("/count")
    assert upstream.count == 1
    assert client.get("/count").status_code == 200


def test_delay(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(Rule("delay", delay=0.3, path="/slow"))
    proxy.add(Rule("delay_response", delay=0.2, path="/slow", nth=2))
    proxy.add(Rule("status", status=504, delay=0.1, path="/slow", nth=3))
    assert client.get("/slow").status_code == 200  # (the log says what was waited: no stopwatch on a busy machine)
    assert client.get("/fast").status_code == 200
    assert client.get("/slow").status_code == 200
    assert client.get("/slow").status_code == 504
    assert [e.actions for e in proxy.log] == [
        ["delay 0.3", "forwarded"],
        ["forwarded"],
        ["delay 0.3", "delay-response 0.2", "forwarded"],
        ["delay 0.3", "delay 0.1", "status 504"],
    ]
    proxy.add(Rule("delay_response", delay=1.0, times=1))
    with pytest.raises(httpx.ReadTimeout):  # response held back past the client's timeout
        client.get("/fast", timeout=0.3)
    assert proxy.log[-1].upstream_status == 200  # upstream answered; the client never saw it


def test_times_cap(proxy: FaultProxy, client: httpx.Client) -> None:
    rule = proxy.add(Rule("status", status=503, times=2))
    assert [client.get("/echo").status_code for _ in range(4)] == [503, 503, 200, 200]
    assert (rule.seen, rule.fired) == (4, 2)
    proxy.clear()
    assert client.get("/echo").status_code == 200


def test_first_terminal_rule_wins_all_rules_count(proxy: FaultProxy, client: httpx.Client) -> None:
    first = proxy.add(Rule("status", status=502, nth=2))
    second = proxy.add(Rule("status", status=504, every=2))
    assert [client.get("/echo").status_code for _ in range(4)] == [200, 502, 200, 504]
    assert (first.seen, first.fired, second.seen, second.fired) == (4, 1, 4, 1)


def test_concurrent_clients(upstream: Upstream, proxy: FaultProxy) -> None:
    rule = proxy.add(Rule("status", status=503, method="POST", every=5))
    barrier = threading.Barrier(8)

    def worker(i: int) -> list[int]:
        with httpx.Client(base_url=proxy.url, timeout=10) as c:
            barrier.wait()
            return [c.post("/count", json={"w": i, "n": n}).status_code for n in range(10)]

    with ThreadPoolExecutor(8) as pool:
        codes = [code for result in pool.map(worker, range(8)) for code in result]
    assert len(proxy.log) == 80 and rule.seen == 80
    assert codes.count(503) == 16 == rule.fired
    assert upstream.count == 64 == codes.count(201)
    assert [e.seq for e in proxy.log] == list(range(1, 81))
    # the decision is a function of arrival order: every 5th logged request was refused
    assert [i for i, e in enumerate(proxy.log, 1) if e.action == "status 503"] == list(range(5, 81, 5))


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        Rule("explode")
    with pytest.raises(ValueError):
        Rule("status")
    with pytest.raises(ValueError):
        Rule("drop_before", fraction=1.5)


def test_wait_returns_once_the_log_satisfies_the_condition(proxy: FaultProxy, client: httpx.Client) -> None:
    assert not proxy.wait(lambda log: len(log) >= 1, timeout=0.05)  # nothing arrived: False after the timeout
    posted = threading.Event()

    def post_three() -> None:
        for _ in range(3):
            client.post("/count")
        posted.set()

    thread = threading.Thread(target=post_three)
    thread.start()
    assert proxy.wait(lambda log: sum(e.method == "POST" for e in log) >= 3, timeout=30)
    thread.join()
    assert posted.is_set() and len(proxy.log) == 3


def test_hold_forwards_once_its_condition_holds(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(Rule("hold", method="POST", path="/count", nth=1,
                   until=lambda log: any(e.method == "GET" and e.upstream_status for e in log)))
    answers: list[int] = []
    thread = threading.Thread(target=lambda: answers.append(client.post("/count").json()["count"]))
    thread.start()
    assert proxy.wait(lambda log: len(log) == 1, timeout=10)
    assert upstream.count == 0  # held: not forwarded yet
    with httpx.Client(base_url=proxy.url) as other:
        assert other.get("/count").json() == {"count": 0}  # this GET, once answered, releases the held POST
    thread.join(10)
    assert answers == [1] and upstream.count == 1
    assert proxy.log[0].actions == ["hold"] and proxy.log[0].upstream_status == 201


def test_late_request_reaches_the_upstream_after_the_client_gave_up(upstream: Upstream, proxy: FaultProxy,
                                                                     client: httpx.Client) -> None:
    proxy.add(Rule("late", method="POST", path="/count", times=1))
    with pytest.raises(httpx.ReadTimeout):
        client.post("/count", timeout=0.3)
    assert proxy.wait(lambda log: "delivered-late" in log[0].actions, timeout=10)
    assert upstream.count == 1 and proxy.log[0].upstream_status == 201  # it landed, after the client gave up
    assert proxy.log[0].actions == ["late", "delivered-late"]


def test_late_request_behind_a_gateway_504_lands_when_allowed(upstream: Upstream, proxy: FaultProxy,
                                                               client: httpx.Client) -> None:
    proxy.add(Rule("late", status=504, method="POST", times=1,
                   until=lambda log: any(e.method == "GET" and e.upstream_status for e in log)))
    assert client.post("/count").status_code == 504  # the gateway gave up; the request is still on its way
    assert upstream.count == 0
    assert client.get("/count").json() == {"count": 0}  # lets it land
    assert proxy.wait(lambda log: log[0].upstream_status == 201, timeout=10)
    assert upstream.count == 1


def test_a_server_that_echoes_headers(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add(Rule("status", status=400, echo_headers=True))
    r = client.get("/echo", headers={"Authorization": "Bearer secret-token-value"})
    assert r.status_code == 400 and "Bearer secret-token-value" in r.json()["issue"][0]["diagnostics"]
