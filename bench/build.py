"""Builder throughput: spec → Bundle → bytes, beside the ceiling of serialising prebuilt dicts.

    python bench/build.py --messages 100000 [--markdown] [--spec]

The ceiling is orjson serialising bundles of the same shape that were built beforehand: the cost
of producing the bytes alone. The builder's target is at least half of it.

`--spec` also measures the builder's input, the spec objects: making them in Python as migrate does
(keywords; a thread's Participants, Messages, Coding and ThreadSpec), reading them from data
(`parse_spec`), and the memory a parsed spec holds, per message.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, markdown_table, synthetic_specs

from bundler import build_bundle, parse_spec
from bundler.build import bundle_bytes, dumps
from bundler.spec import Coding, Message, Participant, ThreadSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-thread", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--spec", action="store_true", help="also measure making and reading spec objects")
    args = parser.parse_args()
    threads = args.messages // args.per_thread
    specs = [parse_spec(s) for s in synthetic_specs(threads, args.per_thread)]
    prebuilt = [build_bundle(s) for s in specs]
    messages = threads * args.per_thread

    def ceiling() -> None:
        for b in prebuilt:
            orjson.dumps(b)

    def builder() -> None:
        for s in specs:
            dumps(build_bundle(s))

    def fast_bytes() -> None:
        for s in specs:
            bundle_bytes(s)

    def builder_only() -> None:
        for s in specs:
            build_bundle(s)

    t_ceiling = best_of(args.repeat, ceiling)
    t_builder = best_of(args.repeat, builder)
    t_dicts = best_of(args.repeat, builder_only)
    t_fast = best_of(args.repeat, fast_bytes)
    rows = [
        ["ceiling: orjson.dumps of prebuilt bundles", f"{messages / t_ceiling:,.0f}", "1.00"],
        ["**bundle_bytes: spec → bytes**", f"{messages / t_fast:,.0f}", f"{t_ceiling / t_fast:.2f}"],
        ["build_bundle then orjson.dumps", f"{messages / t_builder:,.0f}", f"{t_ceiling / t_builder:.2f}"],
        ["build_bundle alone: spec → dicts", f"{messages / t_dicts:,.0f}", f"{t_ceiling / t_dicts:.2f}"],
    ]
    header = [f"{messages:,} messages in {threads:,} threads", "messages/s", "× ceiling"]
    if args.markdown:
        print(markdown_table(header, rows))
    else:
        for row in [header, *rows]:
            print(f"{row[0]:<48} {row[1]:>14} {row[2]:>10}")
    ratio = t_ceiling / t_fast
    print(f"\ntarget ≥ 0.50 × ceiling: {'met' if ratio >= 0.5 else 'NOT met'} ({ratio:.2f})", file=sys.stderr)
    if args.spec:
        print()
        spec_objects(synthetic_specs(threads, args.per_thread), args.repeat, args.markdown)


def spec_objects(data: list[dict[str, Any]], repeat: int, markdown: bool) -> None:
    """µs per message to make spec objects (as migrate does, and from data) and bytes a parsed spec holds."""
    messages = sum(len(d["messages"]) for d in data)
    rows = [(d, [(m["id"], m["sender"], m["sent"], m.get("text"), m.get("reply_to")) for m in d["messages"]])
            for d in data]

    def messages_only() -> None:
        for _, ms in rows:
            for mid, sender, sent, text, reply_to in ms:
                Message(id=mid, sender=sender, sent=sent, text=text, attachments=(), recipient=None,
                        reply_to=reply_to, status=None)

    def threads() -> None:  # what migrate's assemble makes of a conversation
        for d, ms in rows:
            people = {a: Participant(a, p["reference"], p.get("display")) for a, p in d["participants"].items()}
            system, code = d["category"][0].split("|", 1)
            ThreadSpec(key=d["thread"], topic=d["topic"], participants=people, messages=tuple(
                Message(id=mid, sender=sender, sent=sent, text=text, attachments=(), recipient=None,
                        reply_to=reply_to, status=None) for mid, sender, sent, text, reply_to in ms),
                subject=d["subject"], sender=d["sender"], sent=d["sent"], category=(Coding(code, system),))

    def parse() -> None:
        for d in data:
            parse_spec(d)

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [parse_spec(d) for d in data]
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    header = [f"spec objects, {messages:,} messages", "µs per message"]
    table = [["Message(...) by keyword, as migrate", f"{best_of(repeat, messages_only) / messages * 1e6:.2f}"],
             ["a thread as migrate makes it: Participant, Message, Coding, ThreadSpec",
              f"{best_of(repeat, threads) / messages * 1e6:.2f}"],
             ["parse_spec: data → ThreadSpec", f"{best_of(repeat, parse) / messages * 1e6:.2f}"],
             ["memory a parsed spec holds, bytes per message", f"{held / messages:,.0f}"]]
    if markdown:
        print(markdown_table(header, table))
    else:
        for row in [header, *table]:
            print(f"{row[0]:<72} {row[1]:>14}")


if __name__ == "__main__":
    main()
