"""Charts of the benchmark: `make bench`'s results.json, and a compare.sh results.csv beside it.

The tables in summary.txt hold every number; a picture shows at once where throughput flattens
with concurrency, where p99 climbs, and how far the project is from the raw-driver ceiling.

    .venv/bin/python bench/chart.py bench-results/bench_<ts> [--compare DIR] [--out DIR]

Writes bench.png + bench.svg (requests/s and p99 per route and concurrency; GET /users/{id}
rps / pgbench tps when pgbench ran) and, when there is compare data (`--compare`, else the newest
bench-results/compare_* beside the results dir), compare.png + compare.svg (project/bare and
project/tutorial requests/s, project p99 / bare p99). Runs whose status is not ok are left out
and named in the figure's note. Needs matplotlib (the `bench` extra); pyplot is never imported,
so there is no screen and no global figure state: each Figure is drawn on the Agg canvas.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.typing import HashableList

# compare.sh's route names, shown as the labels `make bench` gives the same requests
COMPARE_ROUTES = {
    "user": "GET /users/{id}",
    "users": "GET /users?limit=100",
    "post": "GET /posts/{id}",
    "post_create": "POST /posts",
    "transfer": "POST /transfers",
}
NOTE_WIDTH = 130  # characters per line of a figure's note


class ChartError(Exception):
    """The input cannot be drawn (missing, unreadable, no runs); the message is for humans."""


@dataclass(frozen=True, slots=True)
class Bar:
    """One value of one route at one concurrency: a bar of a grouped bar chart."""

    route: str
    conc: int
    value: float


@dataclass(frozen=True, slots=True)
class BenchData:
    """What bench.png shows, read from one `make bench` results.json."""

    source: Path
    title: str
    routes: list[str]  # in run order, with the routes whose every run failed (an empty group)
    rps: list[Bar]
    p99_ms: list[Bar]
    pgbench_ratio: list[Bar]  # GET /users/{id} rps / pgbench tps; empty without pgbench
    pgbench: str  # how pgbench ran, for the panel's title
    skipped: list[str]
    error: str


@dataclass(frozen=True, slots=True)
class CompareData:
    """What compare.png shows, read from one compare.sh results.csv: ratios of medians."""

    source: Path
    title: str
    routes: list[str]
    vs_bare: list[Bar]
    vs_tutorial: list[Bar]
    p99_vs_bare: list[Bar]
    skipped: list[str]


# ------------------------------------------------------------------------------------ load


def load_bench(results_dir: Path) -> BenchData:
    """The runs of `results_dir/results.json` (bench/run.py's shape); ChartError if none."""
    path = results_dir / "results.json"
    try:
        results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        runs: list[dict[str, Any]] = results.get("runs") or []
        if not runs:
            why = results.get("error") or f"mode {results.get('mode')!r}"
            raise ChartError(f"{path}: no scenario runs to draw ({why})")
        pgb = results.get("pgbench") or {}
        tps = float(pgb.get("tps") or 0)
        routes: list[str] = []
        rps: list[Bar] = []
        p99: list[Bar] = []
        ratio: list[Bar] = []
        skipped: list[str] = []
        for run in runs:
            label, conc = str(run.get("label") or run["scenario"]), int(run["conc"])
            if label not in routes:
                routes.append(label)
            if run["status"] != "ok":
                skipped.append(f"{label} c={conc} ({run['status']})")
                continue
            rps.append(Bar(label, conc, float(run["rps"])))
            p99.append(Bar(label, conc, float(run["percentiles_ms"].get("99", math.nan))))
            if run["scenario"] == "users_id" and tps:
                ratio.append(Bar(label, conc, float(run["rps"]) / tps))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ChartError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    env = results.get("environment") or {}
    args = results.get("args") or {}
    changed = env.get("git_changed_files")
    title = (
        f"make bench {env.get('date', '?')}  git {env.get('git_rev', '?')}"
        f"{f' (+{changed} changed files)' if changed else ''}  {args.get('duration', '?')} s per "
        f"run, {args.get('users', '?')} users  {env.get('cpus', '?')} CPUs, load "
        f"{' '.join(env.get('loadavg') or ['?'])}"
    )
    pgbench = f"{tps:,.0f} tps, {pgb.get('clients', '?')} clients" if tps else ""
    return BenchData(
        path, title, routes, rps, p99, ratio, pgbench, skipped, str(results.get("error") or "")
    )


def load_compare(compare_dir: Path) -> CompareData:
    """Medians over rounds per route x app x concurrency (as compare.sh's summarize.py takes
    them), as the three ratios of the summary; ChartError if the CSV has no runs."""
    path = compare_dir / "results.csv"
    samples: dict[tuple[str, str, int], list[dict[str, str]]] = defaultdict(list)
    routes: list[str] = []
    skipped: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        for row in rows:
            name = row.get("route") or "user"  # the first CSVs had no route column: all `user`
            route, conc = COMPARE_ROUTES.get(name, name), int(row["conc"])
            if route not in routes:
                routes.append(route)
            if row["status"] != "ok":
                skipped.append(f"{route} {row['app']} c={conc} r{row['round']} ({row['status']})")
                continue
            samples[(route, row["app"], conc)].append(row)

        def median(app: str, cell: tuple[str, int], key: str) -> float | None:
            found = samples.get((cell[0], app, cell[1]))
            return statistics.median(float(r[key]) for r in found) if found else None

        def ratio(mine: float | None, theirs: float | None) -> float | None:
            return mine / theirs if mine is not None and theirs else None

        cells = sorted({(r, c) for r, app, c in samples if app == "project"}, key=lambda k: k[1])
        lists: tuple[list[Bar], list[Bar], list[Bar]] = ([], [], [])
        for cell in cells:
            rps = median("project", cell, "rps")
            values = (
                ratio(rps, median("bare", cell, "rps")),
                ratio(rps, median("tutorial", cell, "rps")),
                ratio(median("project", cell, "p99_ms"), median("bare", cell, "p99_ms")),
            )
            for bars, value in zip(lists, values, strict=True):
                if value is not None:
                    bars.append(Bar(*cell, value))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ChartError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    if not rows:
        raise ChartError(f"{path}: no runs to draw")
    title = f"compare.sh {compare_dir.name}{_backend(compare_dir)}: medians over rounds"
    return CompareData(path, title, routes, *lists, skipped)


def _backend(compare_dir: Path) -> str:
    """`, SQLite` when env.txt says BACKEND=sqlite: `bare` is then raw aiosqlite, not asyncpg."""
    try:
        lines = (compare_dir / "env.txt").read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return ", SQLite" if any(line.startswith("sqlite:") for line in lines) else ", PostgreSQL"


def newest_compare(base: Path) -> Path | None:
    """The newest `compare_<timestamp>` dir with a results.csv under `base` (names sort by time)."""
    found = sorted(p.parent for p in base.glob("compare_*/results.csv"))
    return found[-1] if found else None


# ------------------------------------------------------------------------------------ draw


def draw_bench(data: BenchData) -> Figure:
    """Requests/s and p99 per route (groups) and concurrency (bars); pgbench's ratio below."""
    colors = _colors([*data.rps, *data.p99_ms])
    layout: list[HashableList[str]] = [["rps", "rps"], ["p99", "p99"]]
    if data.pgbench_ratio:
        layout.append(["pgbench", "."])  # one route only: half the width is plenty
    fig = Figure(figsize=(11, 3.4 * len(layout) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplot_mosaic(layout, height_ratios=[1, 1, 0.8][: len(layout)])
    fig.suptitle(data.title, fontsize=10)
    _bars(axes["rps"], data.routes, data.rps, colors, lambda v: f"{v:,.0f}")
    axes["rps"].set_title("requests/s per route and concurrency (higher is better)", fontsize=10)
    axes["rps"].set_ylabel("requests/s")
    _bars(axes["p99"], data.routes, data.p99_ms, colors, _ms)
    spread = _spread(data.p99_ms)
    if spread:
        axes["p99"].set_yscale("log")
    axes["p99"].set_title("p99 latency per route and concurrency (lower is better)", fontsize=10)
    axes["p99"].set_ylabel("p99 ms" + (" (log scale)" if spread else ""))
    if data.pgbench_ratio:
        ax = axes["pgbench"]
        routes = list(dict.fromkeys(b.route for b in data.pgbench_ratio))
        _bars(ax, routes, data.pgbench_ratio, colors, lambda v: f"{v:.3f}")
        ax.set_title(f"requests/s / pgbench tps of the same SQL ({data.pgbench})", fontsize=10)
        ax.set_ylabel("share of pgbench")
    extra = [f"error: {data.error}"] if data.error else []
    fig.supxlabel(_note(data.source, data.skipped, extra), **_NOTE_STYLE)
    return fig


def draw_compare(data: CompareData) -> Figure:
    """The three ratios of compare.sh's summary per route and concurrency, 1.0 marked."""
    colors = _colors([*data.vs_bare, *data.vs_tutorial, *data.p99_vs_bare])
    panels = [
        (data.vs_bare, "project / bare requests/s (1.0 = as fast as the raw-driver app)"),
        (data.vs_tutorial, "project / tutorial requests/s (above 1.0 = faster than the tutorial)"),
        (data.p99_vs_bare, "project p99 / bare p99 (lower is better)"),
    ]
    fig = Figure(figsize=(11, 3.2 * len(panels) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(data.title, fontsize=10)
    for ax, (bars, title) in zip(fig.subplots(len(panels), 1), panels, strict=True):
        _bars(ax, data.routes, bars, colors, lambda v: f"{v:.2f}")
        ax.axhline(1.0, color="0.25", linestyle="--", linewidth=1, zorder=1)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ratio")
    fig.supxlabel(_note(data.source, data.skipped), **_NOTE_STYLE)
    return fig


# a figure's note sits in supxlabel, the one footer constrained layout makes room for
_NOTE_STYLE: dict[str, Any] = {"x": 0.01, "ha": "left", "fontsize": 8, "color": "0.3"}


def _colors(bars: Sequence[Bar]) -> dict[int, str]:
    """One color per concurrency, the same in every panel of a figure."""
    return {conc: f"C{i}" for i, conc in enumerate(sorted({b.conc for b in bars}))}


def _bars(
    ax: Axes,
    routes: Sequence[str],
    bars: Sequence[Bar],
    colors: dict[int, str],
    label: Callable[[float], str],
) -> None:
    """Routes along x, a bar per concurrency in each route's group, its value written on top."""
    concs = sorted({b.conc for b in bars})
    width = 0.8 / max(len(concs), 1)
    where = {route: i for i, route in enumerate(routes)}
    for k, conc in enumerate(concs):
        mine = [b for b in bars if b.conc == conc and math.isfinite(b.value)]
        xs = [where[b.route] - 0.4 + width * (k + 0.5) for b in mine]
        drawn = ax.bar(
            xs, [b.value for b in mine], width, label=f"c={conc}", color=colors[conc], zorder=2
        )
        ax.bar_label(drawn, labels=[label(b.value) for b in mine], fontsize=7, padding=1)
    ax.set_xticks(range(len(routes)), list(routes))
    ax.set_xlim(-0.5, len(routes) - 0.5)
    ax.margins(y=0.15)  # room for the value labels
    ax.grid(axis="y", color="0.9", zorder=0)
    if concs:
        ax.legend(
            title="concurrency",
            fontsize=8,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1, 1),
        )
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="0.4")


def _spread(bars: Sequence[Bar]) -> bool:
    """Whether values span so much that a linear axis would flatten the small ones."""
    values = [b.value for b in bars if math.isfinite(b.value) and b.value > 0]
    return bool(values) and max(values) / min(values) > 30


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _note(source: Path, skipped: Sequence[str], extra: Sequence[str] = ()) -> str:
    """The source, any extra lines, then the skipped runs, never one split across lines."""
    lines = [f"source: {source}", *extra]
    chunks: list[list[str]] = [[]]
    for item in skipped:
        if chunks[-1] and len("; ".join([*chunks[-1], item])) > NOTE_WIDTH:
            chunks.append([])
        chunks[-1].append(item)
    if skipped:
        lines.append(f"left out, status not ok ({len(skipped)}): " + "; ".join(chunks[0]))
        lines += ["    " + "; ".join(chunk) for chunk in chunks[1:]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ write


def save(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.svg. The SVG keeps its text as text (searchable, and tests read it)
    and carries no date, so redrawing the same results gives the same file."""
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=110)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "asyncblog"}):
        fig.savefig(svg, metadata={"Date": None})
    return [png, svg]


def write_charts(
    results_dir: Path, compare_dir: Path | None = None, out: Path | None = None
) -> list[Path]:
    """bench.png/.svg from `results_dir`, and compare.png/.svg from `compare_dir` (default: the
    newest compare.sh run beside `results_dir`, if any), into `out` (default `results_dir`).
    Returns the paths written; ChartError when an input cannot be drawn."""
    out = out or results_dir
    out.mkdir(parents=True, exist_ok=True)
    written = save(draw_bench(load_bench(results_dir)), out / "bench")
    compare_dir = compare_dir or newest_compare(results_dir.resolve().parent)
    if compare_dir is not None:
        written += save(draw_compare(load_compare(compare_dir)), out / "compare")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "results_dir", type=Path, metavar="RESULTS_DIR", help="a bench-results/bench_<ts> dir"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="COMPARE_DIR",
        help="a compare.sh results dir (default: the newest compare_* beside RESULTS_DIR, if any)",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="default: RESULTS_DIR")
    args = parser.parse_args(argv)
    try:
        paths = write_charts(args.results_dir, args.compare, args.out)
    except ChartError as exc:
        print(f"chart: ERROR: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
