"""Plot speedup over bf16 against M from `gpu_speed.py layers` JSON files, as a dependency-free SVG.

    python benchmarks/plot_speedup.py benchmarks/results/h100/layers_v5.json \
        benchmarks/results/h100/layers_v5b_m1.json --out docs/speedup_vs_m.svg

Rows of later files replace rows of earlier ones with the same (N, K, M). One panel per method (SINQ, tinygemm),
one line per N x K shape, log-scale M on x, speedup over bf16 (same run) on y, a dashed line at 1.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d"]
PANEL_W, PANEL_H, MARGIN = 360, 260, 48


NEEDED = ("N", "K", "M", "bf16_us", "sinq_us", "tinygemm_us")


def load_rows(paths: list[Path]) -> dict[tuple[int, int, int], dict]:
    """The rows of `gpu_speed.py layers` JSON files, keyed by (N, K, M); ValueError naming the file otherwise."""
    rows = {}
    for path in paths:
        try:
            loaded = json.loads(path.read_text())["rows"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a readable `gpu_speed.py layers` JSON file ({error!r})") from error
        for row in loaded:
            missing = [key for key in NEEDED if key not in row]
            if missing:
                raise ValueError(f"{path}: a row lacks {missing}: {row}")
            rows[(row["N"], row["K"], row["M"])] = row
    return rows


def panel(rows, column: str, title: str, x0: int, y_max: float) -> list[str]:
    """SVG elements of one panel: axes, a dashed 1x line, one polyline per shape."""
    ms = sorted({m for _, _, m in rows})
    shapes = sorted({(n, k) for n, k, _ in rows})

    def x(m):
        return x0 + MARGIN + (math.log2(m) - math.log2(ms[0])) / max(1e-9, math.log2(ms[-1] / ms[0])) * PANEL_W

    def y(v):
        return MARGIN + PANEL_H - v / y_max * PANEL_H

    out = [(f'<text x="{x0 + MARGIN + PANEL_W / 2}" y="{MARGIN - 16}" text-anchor="middle" '
            f'font-size="14">{title}</text>'),
           f'<rect x="{x0 + MARGIN}" y="{MARGIN}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#444"/>',
           (f'<line x1="{x0 + MARGIN}" x2="{x0 + MARGIN + PANEL_W}" y1="{y(1)}" y2="{y(1)}" stroke="#888" '
            'stroke-dasharray="4 3"/>')]  # fmt: skip
    for m in ms:
        out.append(f'<text x="{x(m)}" y="{MARGIN + PANEL_H + 16}" text-anchor="middle" font-size="11">{m}</text>')
    for tick in range(int(y_max) + 1):
        out.append(f'<text x="{x0 + MARGIN - 6}" y="{y(tick) + 4}" text-anchor="end" font-size="11">{tick}×</text>')
    for colour, (n, k) in zip(COLOURS, shapes):
        points = [(m, rows[(n, k, m)]) for m in ms if (n, k, m) in rows]
        if len(points) > 1:
            path = " ".join(f"{x(m):.1f},{y(r['bf16_us'] / r[column]):.1f}" for m, r in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{x(m):.1f}" cy="{y(r["bf16_us"] / r[column]):.1f}" r="3" fill="{colour}"/>'
                for m, r in points]  # fmt: skip
    return out


def render(rows) -> str:
    speedups = [r["bf16_us"] / r[c] for r in rows.values() for c in ("sinq_us", "tinygemm_us")]
    y_max = math.ceil(max(speedups))
    width, height = 2 * (PANEL_W + 2 * MARGIN), PANEL_H + 2 * MARGIN + 40
    body = panel(rows, "sinq_us", "SINQ 4-bit g64 / bf16", 0, y_max)
    body += panel(rows, "tinygemm_us", "tinygemm int4 g64 / bf16", PANEL_W + 2 * MARGIN, y_max)
    shapes = sorted({(n, k) for n, k, _ in rows})
    for i, (colour, (n, k)) in enumerate(zip(COLOURS, shapes)):
        lx = MARGIN + i * 136
        body.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{colour}"/>')
        body.append(f'<text x="{lx + 16}" y="{height - 12}" font-size="12">{n}×{k}</text>')
    body.append(f'<text x="{width / 2}" y="{MARGIN + PANEL_H + 32}" text-anchor="middle" font-size="12">'
                "M (activation rows, log scale)</text>")  # fmt: skip
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">\n'
            '<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layers_json", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        rows = load_rows(args.layers_json)
    except ValueError as error:
        parser.error(str(error))
    if not rows:
        parser.error("the files hold no rows")
    svg = render(rows)
    tmp = args.out.with_suffix(".svg.tmp")
    tmp.write_text(svg)
    tmp.replace(args.out)  # atomic: a failed run leaves the old plot
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
