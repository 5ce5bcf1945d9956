"""Charts of the benchmark tables in docs/benchmarks.md, as SVG files beside them (docs/img/bench-*.svg).

A table gets a chart when the line above it is a marker naming the chart and the columns to draw:

    <!-- chart: load-ceiling columns="× ceiling" -->
    | mode | resources | seconds | resources/s | × ceiling | ...

Each row is a group of horizontal bars (its first cell the label), one bar per named column, the value the
first number in the cell ("**121** (49)" is 121). The tables are the figures; the charts only draw them, so
after editing a table run this again (tests/test_docs.py fails while a chart differs from its table):

    python bench/charts.py            # write the charts
    python bench/charts.py --check    # exit 1 if a chart is not what its table draws
"""

from __future__ import annotations

import argparse
import re
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
OUT = ROOT / "docs" / "img"
MARKER = re.compile(r'^<!-- chart: (?P<name>[a-z0-9-]+) columns="(?P<columns>[^"]+)" -->$')
NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")
COLOURS = ("#3f51b5", "#ff7043", "#26a69a", "#ab47bc")
WIDTH, LABEL_WIDTH, BAR_HEIGHT, GAP = 760, 330, 16, 10


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def plain(text: str) -> str:
    return re.sub(r"[*`]", "", text)


def number(cell: str) -> float | None:
    found = NUMBER.search(plain(cell))
    return float(found.group().replace(",", "")) if found else None


def charts(page: str) -> dict[str, str]:
    """Chart name → SVG text, for every marked table of the page."""
    lines = page.splitlines()
    out: dict[str, str] = {}
    for n, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if marker is None:
            continue
        header = cells(lines[n + 1])
        wanted = [c.strip() for c in marker["columns"].split(";")]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise SystemExit(f"{PAGE.name}:{n + 1}: chart {marker['name']}: no column {missing} in {header}")
        rows = []
        for row_line in lines[n + 3:]:
            if not row_line.startswith("|"):
                break
            row = cells(row_line)
            values = [number(row[header.index(c)]) if header.index(c) < len(row) else None for c in wanted]
            if any(v is not None for v in values):
                rows.append((plain(row[0]), values))
        out[marker["name"]] = svg(rows, wanted)
    return out


def svg(rows: list[tuple[str, list[float | None]]], columns: list[str]) -> str:
    top = max((v or 0.0) for _, values in rows for v in values) or 1.0
    group = len(columns) * BAR_HEIGHT + GAP
    legend = 24 if len(columns) > 1 else 0
    height = legend + len(rows) * group + GAP
    span = WIDTH - LABEL_WIDTH - 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{height}" fill="white"/>']
    if legend:
        x = 10
        for i, column in enumerate(columns):
            parts.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}"/>')
            parts.append(f'<text x="{x + 16}" y="16">{escape(column)}</text>')
            x += 24 + 7 * len(column)
    for r, (label, values) in enumerate(rows):
        y0 = legend + GAP + r * group
        short = label if len(label) <= 52 else label[:51] + "…"
        parts.append(f'<text x="{LABEL_WIDTH - 8}" y="{y0 + len(columns) * BAR_HEIGHT / 2 + 4:.0f}" '
                     f'text-anchor="end"><title>{escape(label)}</title>{escape(short)}</text>')
        for i, value in enumerate(values):
            if value is None:
                continue
            y, w = y0 + i * BAR_HEIGHT, max(1.0, span * value / top)
            parts.append(f'<rect x="{LABEL_WIDTH}" y="{y}" width="{w:.1f}" height="{BAR_HEIGHT - 3}" '
                         f'fill="{COLOURS[i % len(COLOURS)]}"/>')
            shown = f"{value:,.2f}" if value < 10 else f"{value:,.0f}"
            parts.append(f'<text x="{LABEL_WIDTH + w + 4:.1f}" y="{y + BAR_HEIGHT - 5}">{shown}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare: exit 1 if a chart differs from its table")
    args = parser.parse_args(argv)
    stale = []
    for name, text in charts(PAGE.read_text(encoding="utf-8")).items():
        path = OUT / f"bench-{name}.svg"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.relative_to(ROOT).as_posix())
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(path.relative_to(ROOT))
    if stale:
        print(f"not what their tables draw: {', '.join(stale)} (run python bench/charts.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
