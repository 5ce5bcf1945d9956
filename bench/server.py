"""Throughput of the local Medplum server for thread bundles (1 header + N messages) from one client.

    python bench/server.py --seconds 10

Starts a LocalServer (quota off) unless MEDPLUM_BASE_URL / MEDPLUM_CLIENT_ID / MEDPLUM_CLIENT_SECRET
are set (then it measures that server; only the atomic row, since its mode can't be switched).
Self-contained: bundles are built inline with uuid4 urns, one plain httpx loop, no concurrency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from bundler.medplum.localserver import LocalServer

SYSTEM = "https://thread-bundler.test/bench"


@dataclass
class Result:
    label: str
    bundles: int
    resources: int
    seconds: float
    latencies_ms: list[float]

    @property
    def tx_per_s(self) -> float:
        return self.bundles / self.seconds

    @property
    def resources_per_s(self) -> float:
        return self.resources / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def thread_bundle(messages: int, run: str, n: int) -> dict[str, Any]:
    header_urn = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": header_urn,
            "resource": {
                "resourceType": "Communication",
                "status": "in-progress",
                "identifier": [{"system": SYSTEM, "value": f"{run}-{n}"}],
                "topic": {"text": f"Bench thread {n}"},
            },
            "request": {"method": "POST", "url": "Communication"},
        }
    ]
    previous: str | None = None
    for i in range(messages):
        message_urn = f"urn:uuid:{uuid.uuid4()}"
        resource: dict[str, Any] = {
            "resourceType": "Communication",
            "status": "in-progress",
            "identifier": [{"system": SYSTEM, "value": f"{run}-{n}-{i}"}],
            "partOf": [{"reference": header_urn}],
            "sent": f"2024-03-01T10:{i % 60:02d}:00Z",
            "payload": [{"contentString": f"Message {i} of bench thread {n}."}],
        }
        if previous:
            resource["inResponseTo"] = [{"reference": previous}]
        entries.append(
            {"fullUrl": message_urn, "resource": resource, "request": {"method": "POST", "url": "Communication"}}
        )
        previous = message_urn
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def token(base_url: str, client_id: str, client_secret: str) -> str:
    response = httpx.post(
        f"{base_url}oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
    )
    response.raise_for_status()
    access_token: str = response.json()["access_token"]
    return access_token


def measure(label: str, client: httpx.Client, seconds: float, messages: int) -> Result:
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    bundles = resources = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        body = thread_bundle(messages, run, bundles)
        t0 = time.perf_counter()
        response = client.post("", json=body)
        latencies.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{label}: HTTP {response.status_code}: {response.text[:500]}")
        entries = response.json()["entry"]
        if any(entry["response"]["status"] != "201" for entry in entries):
            raise SystemExit(f"{label}: unexpected entry statuses {[e['response']['status'] for e in entries]}")
        bundles += 1
        resources += len(entries)
    return Result(label, bundles, resources, time.perf_counter() - start, latencies)


def print_table(results: list[Result], messages: int) -> None:
    print(f"\nthread bundles of 1 header + {messages} messages, one client, sequential requests\n")
    head = f"{'mode':<28} {'bundles':>8} {'tx/s':>8} {'resources/s':>12} {'p50 ms':>8} {'p95 ms':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.label:<28} {r.bundles:>8} {r.tx_per_s:>8.1f} {r.resources_per_s:>12.0f} "
            f"{statistics.median(r.latencies_ms):>8.1f} {r.percentile(0.95):>8.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measured row")
    parser.add_argument("--messages", type=int, default=10, help="messages per thread bundle")
    args = parser.parse_args(argv)

    remote = [os.environ.get(k, "") for k in ("MEDPLUM_BASE_URL", "MEDPLUM_CLIENT_ID", "MEDPLUM_CLIENT_SECRET")]
    results: list[Result] = []
    if all(remote):
        base_url = remote[0] if remote[0].endswith("/") else remote[0] + "/"
        headers = {"Authorization": f"Bearer {token(base_url, remote[1], remote[2])}"}
        with httpx.Client(base_url=f"{base_url}fhir/R4/", headers=headers, timeout=60) as client:
            results.append(measure(f"remote {base_url}", client, args.seconds, args.messages))
    else:
        with LocalServer(quota=False) as server:
            headers = {"Authorization": f"Bearer {token(server.base_url, server.client_id, server.client_secret)}"}
            with httpx.Client(base_url=server.fhir_base, headers=headers, timeout=60) as client:
                measure("warm-up", client, min(2.0, args.seconds), args.messages)
                server.reset()
                results.append(measure("transaction (atomic)", client, args.seconds, args.messages))
                server.reset()
                server.configure(transaction_bundles=False)
                results.append(measure("transaction as batch", client, args.seconds, args.messages))
    print_table(results, args.messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
