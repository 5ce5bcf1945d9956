"""Deterministic fault-injecting HTTP/1.1 reverse proxy for tests (stdlib only).

    with FaultProxy("http://127.0.0.1:8103", seed=7) as proxy:
        proxy.add(Rule("status", status=503, method="POST", nth=2))
        proxy.add(Rule("drop_after", path=r"^/fhir/R4/?$", fraction=0.3))
        client = httpx.Client(base_url=proxy.url)   # same path layout as upstream

Rules are evaluated in the order they were added, under one lock, for every request:

* a rule *matches* when all of its filters hold (``method``, ``path`` regex searched in
  path+query, ``body_contains``, ``predicate(event)``); every matching rule counts the
  request in ``rule.seen``, even when an earlier rule already decided the outcome;
* a matching rule *fires* when ``fired < times``, the count condition holds (``nth`` only:
  seen == nth; ``every`` only: seen % every == 0; both: nth, nth+every, ...), and, if
  ``fraction`` is set, a draw from the rule's own RNG (seeded from the proxy seed and the
  rule's position) is below it. The RNG is only drawn when the count condition holds;
* ``delay`` / ``delay_response`` rules accumulate and evaluation continues; the first
  firing ``status`` / ``drop_before`` / ``drop_after`` rule decides and later rules only
  count. A terminal rule's own ``delay`` is waited before it acts.

So a run is reproducible for a given seed and request sequence (concurrent clients make the
arrival order, not the decision logic, nondeterministic). Every request is appended to
``proxy.log`` as an :class:`Event` whose ``actions`` read e.g. ``["delay 0.5", "forwarded"]``,
``["status 503"]``, ``["drop-before"]``, ``["drop-after"]`` (plus ``"upstream-error"`` when the
upstream is unreachable, answered with a 502, and ``"stopped"`` when ``stop()`` cut a delay).
``wait(condition, timeout)`` blocks until the log satisfies a condition: tests wait on requests, not time.

Actions: ``status`` (answer without forwarding; ``headers``/``body`` optional, see
:func:`throttled`; ``echo_headers=True`` puts the request's headers, Authorization included, into an
OperationOutcome's diagnostics, as a careless server or gateway does), ``delay`` (wait before
forwarding), ``delay_response`` (forward, then wait before answering: the client may time out after
the upstream committed), ``drop_before`` (close without forwarding), ``drop_after`` (forward,
upstream commits, close without answering), ``hold`` (forward only once ``until(log)`` holds, or
``release()`` is called; then answer as usual, if the client is still there), and ``late`` (a
request that reaches the server after the client gave up on it: the client gets ``status`` at once,
e.g. a gateway's 504, or nothing until it times out and closes the connection; only then, and once
``until(log)`` holds if given, is the request forwarded; the event's actions then read
``["late", "delivered-late"]`` and ``upstream_status`` is set).
Drops close cleanly (httpx: RemoteProtocolError) or with ``reset=True`` send a TCP RST
(httpx: ReadError). ``clear()`` drops all rules; rule RNGs are keyed by position since then.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

ACTIONS = ("status", "delay", "delay_response", "drop_before", "drop_after", "hold", "late")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
    | {"upgrade", "expect", "host", "content-length"}  # the last ones are recomputed
)
THROTTLED_BODY = (
    b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"throttled",'
    b'"details":{"text":"Too many requests"}}]}'
)


@dataclass
class Event:
    """One request seen by the proxy; ``actions[-1]`` is the outcome."""

    seq: int
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    actions: list[str] = field(default_factory=list)
    upstream_status: int | None = None
    delivered_after: int | None = None  # a late request: how many requests the proxy had seen when it landed

    @property
    def action(self) -> str:
        return self.actions[-1] if self.actions else ""


@dataclass
class Rule:
    action: str  # one of ACTIONS
    status: int | None = None
    delay: float = 0.0
    method: str | None = None
    path: str | None = None  # regex, re.search on path+query
    body_contains: str | bytes | None = None
    predicate: Callable[[Event], bool] | None = None
    nth: int | None = None  # 1-based, counts matching requests
    every: int | None = None
    fraction: float | None = None
    times: int | None = None  # max firings
    headers: dict[str, str] = field(default_factory=dict)  # for 'status'
    body: bytes | str | None = None  # for 'status'
    reset: bool = False  # drops: send TCP RST instead of a clean FIN
    echo_headers: bool = False  # for 'status': the request's headers in the OperationOutcome
    until: Callable[[list[Event]], bool] | None = None  # for 'hold' and 'late': forward once this holds
    seen: int = 0
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")
        needs = {"status": "status", "hold": "until"}.get(self.action)  # (hold: or let it go by proxy.release())
        if needs is not None and getattr(self, needs) is None:
            raise ValueError(f"a {self.action!r} rule needs {needs}=")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")
        if (self.nth is not None and self.nth < 1) or (self.every is not None and self.every < 1):
            raise ValueError("nth and every are >= 1")
        self._path_re = re.compile(self.path) if self.path is not None else None

    def matches(self, ev: Event) -> bool:
        if self.method is not None and self.method.upper() != ev.method:
            return False
        if self._path_re is not None and not self._path_re.search(ev.path):
            return False
        if self.body_contains is not None:
            needle = self.body_contains
            if (needle.encode() if isinstance(needle, str) else needle) not in ev.body:
                return False
        return self.predicate is None or self.predicate(ev)

    def _due(self) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        n = self.seen
        if self.nth is not None and (n < self.nth if self.every else n != self.nth):
            return False
        if self.every is not None and (n - (self.nth or 0)) % self.every:
            return False
        return self.fraction is None or self._rng.random() < self.fraction


def throttled(retry_after: int = 2, **match: Any) -> Rule:
    """A Medplum-style 429 (OperationOutcome + RateLimit header)."""
    headers = {"Content-Type": "application/fhir+json", "RateLimit": f'"requests";r=0;t={retry_after}'}
    return Rule("status", status=429, headers=headers, body=THROTTLED_BODY, **match)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # default 5 overflows with a burst of concurrent connects
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # client resets and proxy stops are expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _proxy(self) -> None:
        self.server.proxy._handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _proxy


def _read_body(h: BaseHTTPRequestHandler) -> bytes | None:
    """Request body (de-chunked), or None when the request carried no body framing."""
    if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while size := int(h.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
        while h.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)
    length = h.headers.get("Content-Length")
    return h.rfile.read(int(length)) if length is not None else None


def _strip(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    listed = {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in listed]


def _respond(
    h: BaseHTTPRequestHandler,
    status: int,
    reason: str | None,
    headers: list[tuple[str, str]],
    body: bytes,
    upstream_length: str | None = None,
) -> None:
    bodyless = h.command == "HEAD" or status in (204, 304) or status < 200
    h.send_response_only(status, reason)
    for k, v in _strip(headers):
        h.send_header(k, v)
    if not bodyless:
        h.send_header("Content-Length", str(len(body)))
    elif upstream_length is not None:
        h.send_header("Content-Length", upstream_length)
    if h.close_connection:
        h.send_header("Connection", "close")
    h.end_headers()
    if not bodyless and body:
        h.wfile.write(body)


class FaultProxy:
    def __init__(self, upstream: str, *, seed: int = 0, upstream_timeout: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port[/base], got {upstream!r}")
        self.upstream, self.seed, self.upstream_timeout = upstream, seed, upstream_timeout
        self._host, self._port = parts.hostname, parts.port or 80
        self._netloc, self._base = parts.netloc, parts.path.rstrip("/")
        self.rules: list[Rule] = []
        self.log: list[Event] = []
        self.url = ""
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # notified as each request is logged
        self._stopping = threading.Event()
        self._released = False
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- rules -----------------------------------------------------------------------
    def add(self, rule: Rule) -> Rule:
        with self._lock:
            rule.seen = rule.fired = 0
            rule._rng = random.Random(f"{self.seed}/{len(self.rules)}")
            self.rules.append(rule)
        return rule

    def clear(self, *, log: bool = False) -> None:
        with self._lock:
            self.rules.clear()
            if log:
                self.log.clear()

    def release(self) -> None:
        """Let every request held by a ``hold`` (or waiting ``late``) rule go, whatever its ``until`` says."""
        with self._arrived:
            self._released = True
            self._arrived.notify_all()

    def wait(self, condition: Callable[[list[Event]], bool], timeout: float) -> bool:
        """Block until ``condition(log)`` holds (checked now and as each request arrives); False if it
        still does not after ``timeout`` seconds."""
        with self._arrived:
            return self._arrived.wait_for(lambda: condition(self.log), timeout)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{self._base}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # interrupts pending delays
        with self._arrived:
            self._arrived.notify_all()  # and held requests
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # end idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    # -- request handling ------------------------------------------------------------
    def _handle(self, h: _Handler) -> None:
        raw = _read_body(h)
        body = raw or b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._lock:
            ev = Event(len(self.log) + 1, h.command, h.path, headers, body)
            pre = post = 0.0
            term: Rule | None = None
            for rule in self.rules:
                if not rule.matches(ev):
                    continue
                rule.seen += 1
                if term is not None or not rule._due():
                    continue
                rule.fired += 1
                if rule.action == "delay":
                    pre += rule.delay
                    ev.actions.append(f"delay {rule.delay:g}")
                elif rule.action == "delay_response":
                    post += rule.delay
                    ev.actions.append(f"delay-response {rule.delay:g}")
                else:
                    term = rule
                    if rule.delay:
                        ev.actions.append(f"delay {rule.delay:g}")
                    if rule.action == "drop_after":
                        post += rule.delay
                    elif rule.action != "late":  # a late request's delay counts from when the client gave up
                        pre += rule.delay
            if term is None:
                ev.actions.append("forwarded")
            elif term.action == "status":
                ev.actions.append(f"status {term.status}")
            else:
                ev.actions.append(term.action.replace("_", "-"))
            self.log.append(ev)
            self._arrived.notify_all()

        if pre and self._stopping.wait(pre):
            ev.actions.append("stopped")
            return self._drop(h, reset=False)
        if term is not None and self._acted(h, term, ev, raw):
            return None
        try:
            status, reason, rhdrs, data = self._forward(h, raw)
        except (OSError, http.client.HTTPException) as exc:
            ev.actions.append("upstream-error")
            return _respond(h, 502, None, [("Content-Type", "text/plain")], f"upstream error: {exc!r}\n".encode())
        with self._arrived:  # what `wait` and `until` conditions may be waiting for
            ev.upstream_status = status
            self._arrived.notify_all()
        if post and self._stopping.wait(post):
            ev.actions.append("stopped")
            return self._drop(h, reset=False)
        if term is not None and term.action == "drop_after":
            return self._drop(h, term.reset)
        length = next((v for k, v in rhdrs if k.lower() == "content-length"), None)
        _respond(h, status, reason, rhdrs, data, length)

    def _acted(self, h: _Handler, term: Rule, ev: Event, raw: bytes | None) -> bool:
        """Carry out a terminal rule that answers (or drops, or delivers late) instead of forwarding now; False
        when the request is to be forwarded as usual (a held one, once let go; a drop-after)."""
        if term.action == "drop_before":
            self._drop(h, term.reset)
        elif term.action == "status":
            self._status(h, term, ev)
        elif term.action == "late":
            self._late(h, term, ev, raw)
        elif term.action == "hold" and not self._held(term):
            ev.actions.append("stopped")
            self._drop(h, reset=False)
        else:
            return False
        return True

    def _status(self, h: _Handler, term: Rule, ev: Event) -> None:
        assert term.status is not None
        data = term.body.encode() if isinstance(term.body, str) else term.body
        hdrs = list(term.headers.items())
        if term.echo_headers:
            seen = "; ".join(f"{k}: {v}" for k, v in ev.headers.items())
            data = json.dumps({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "processing", "diagnostics": f"bad request; headers were {seen}"}]
            }).encode()
            hdrs = [("Content-Type", "application/fhir+json")]
        if data is None:
            data = f"{term.status} injected by FaultProxy\n".encode()
            hdrs.append(("Content-Type", "text/plain; charset=utf-8"))
        _respond(h, term.status, None, hdrs, data)

    def _held(self, term: Rule) -> bool:
        """Wait until the rule's ``until`` holds (or ``release()``); False when the proxy stops first."""
        with self._arrived:
            self._arrived.wait_for(lambda: self._stopping.is_set() or self._released
                                   or (term.until is not None and term.until(self.log)))
        return not self._stopping.is_set()

    def _late(self, h: _Handler, term: Rule, ev: Event, raw: bytes | None) -> None:
        """Answer ``term.status`` now (or nothing until the client gives up), then forward the request."""
        if term.status is not None:
            h.close_connection = True
            _respond(h, term.status, None, [("Content-Type", "text/plain")], f"{term.status} from a gateway\n".encode())
        else:
            self._until_client_gone(h)
        if (term.until is not None or term.delay) and not self._held_late(term):
            return
        try:
            status, _, _, _ = self._forward(h, raw)
        except (OSError, http.client.HTTPException):
            status = None
        with self._arrived:
            ev.upstream_status = status
            ev.delivered_after = len(self.log)
            ev.actions.append("delivered-late")
            self._arrived.notify_all()
        h.close_connection = True

    def _held_late(self, term: Rule) -> bool:
        if term.delay and self._stopping.wait(term.delay):
            return False
        return term.until is None or self._held(term)

    def _until_client_gone(self, h: _Handler) -> None:
        """Block until the client closes its connection (it gave up), or the proxy stops."""
        conn = h.connection
        while not self._stopping.is_set():
            ready, _, _ = select.select([conn], [], [], 0.02)
            if ready:
                try:
                    if not conn.recv(1, socket.MSG_PEEK):
                        return
                except OSError:
                    return
        h.close_connection = True

    def _forward(self, h: _Handler, body: bytes | None) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self.upstream_timeout)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self._netloc)
            for k, v in _strip(list(h.headers.items())):
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()  # read() de-chunks
        finally:
            conn.close()

    @staticmethod
    def _drop(h: _Handler, reset: bool) -> None:
        """Close the client connection without a response (the server closes it after us)."""
        h.close_connection = True
        if reset:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
