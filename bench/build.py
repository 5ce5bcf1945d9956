"""Builder throughput: spec → Bundle → bytes, beside the ceiling of serialising prebuilt dicts.

    python bench/build.py --messages 100000 [--markdown]

The ceiling is orjson serialising bundles of the same shape that were built beforehand: the cost
of producing the bytes alone. The builder's target is at least half of it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, markdown_table, synthetic_specs

from bundler import build_bundle, dumps, parse_spec
from bundler.build import bundle_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-thread", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
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


if __name__ == "__main__":
    main()
