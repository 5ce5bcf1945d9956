"""How fast `bundler.validate` is, beside fhir.resources' own model validation, on builder bundles.

    python bench/validate.py --messages 100000             # a table
    python bench/validate.py --messages 100000 --markdown  # the same as Markdown, for README.md

Threads of `--per-thread` messages (+1 header each) are built with `build_bundle`; every variant runs on
the same bundles in the same run. Resources/s counts headers and messages.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bundler.build import build_bundle
from bundler.check import validate, validate_many


def make_bundles(messages: int, per_thread: int) -> list[dict[str, Any]]:
    out = []
    for t in range(max(1, messages // per_thread)):
        spec = {"thread": f"bench-{t}", "topic": "Lab results", "subject": "p", "sender": "d",
                "sent": "2024-04-10T09:00:00Z",
                "participants": {"p": {"reference": f"Patient/{t:08d}-0000-4000-8000-000000000000",
                                       "display": "Homer Simpson"},
                                 "d": {"reference": "Practitioner/0d4e3f2a-7b8c-4d9e-8f01-2a3b4c5d6e7f",
                                       "display": "Dr. Alice Smith"}},
                "messages": [{"sender": "d" if k % 2 else "p", "sent": f"2024-04-10T10:{k % 60:02d}:00Z",
                              "text": f"Message {k}: your results are ready, see the attached report.",
                              **({"reply_to": str(k - 1)} if k > 1 else {})} for k in range(1, per_thread + 1)]}
        out.append(build_bundle(spec))
    return out


def timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-thread", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    from fhir.resources.R4B.bundle import Bundle

    bundles = make_bundles(args.messages, args.per_thread)
    resources = sum(len(b["entry"]) for b in bundles)
    validate(bundles[0])  # warm up: imports, model classes
    Bundle.model_validate(bundles[0])

    def serial(structure: bool) -> None:
        for b in bundles:
            if validate(b, structure=structure):
                raise SystemExit("a builder bundle did not validate clean")

    def pool(structure: bool) -> None:
        if any(validate_many(bundles, structure=structure, workers=args.workers)):
            raise SystemExit("a builder bundle did not validate clean")

    def fhir_models() -> None:
        for b in bundles:
            Bundle.model_validate(b)

    rows = [
        ("fhir.resources Bundle.model_validate (R4B)", timed(fhir_models)),
        ("validate(structure=False): rules only, 1 process", timed(lambda: serial(False))),
        (f"validate_many(structure=False), {args.workers} processes", timed(lambda: pool(False))),
        ("validate(): rules + FHIR structure, 1 process", timed(lambda: serial(True))),
        (f"validate_many(): rules + FHIR structure, {args.workers} processes", timed(lambda: pool(True))),
    ]
    base = rows[0][1]
    head = f"{resources:,} resources ({len(bundles):,} bundles of {args.per_thread} messages + header), " \
           f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    if args.markdown:
        print(head + "\n")
        print("| check | seconds | resources/s | vs fhir.resources |")
        print("|---|---:|---:|---:|")
        for name, sec in rows:
            print(f"| {name} | {sec:.2f} | {resources / sec:,.0f} | {base / sec:.2f}× |")
    else:
        print(head)
        print(f"{'check':<62} {'seconds':>8} {'resources/s':>12} {'vs fhir.resources':>18}")
        for name, sec in rows:
            print(f"{name:<62} {sec:>8.2f} {resources / sec:>12,.0f} {base / sec:>17.2f}x")


if __name__ == "__main__":
    main()
