"""bench/chart.py draws what `make bench` and compare.sh measured: every route in every panel, the
runs that failed named in the note instead of a crash."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.etree import ElementTree

import pytest

CHART_PY = Path(__file__).resolve().parents[2] / "bench" / "chart.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_TEXT = "{http://www.w3.org/2000/svg}text"
USERS, POSTS = "GET /users/{id}", "GET /posts/{id}"

# compare.sh's header, and its rows as its echo lines write them (a failed run has one more comma)
COMPARE_CSV = """\
route,app,conc,round,status,rps,p50_ms,p99_ms,max_ms,requests,non2xx,sock_connect,sock_read,\
sock_write,sock_timeout,server_log_errlines
user,project,16,1,ok,1500.25,9.87,21.5,48.3,15010,0,0,0,0,0,0
user,bare,16,1,ok,3000.5,4.91,10.75,30.1,30020,0,0,0,0,0,0
user,tutorial,16,1,ok,750.1,19.2,60.2,120.4,7510,0,0,0,0,0,0
user,project,64,1,ok,1600.9,38.1,95.3,201.2,16020,0,0,0,0,0,0
user,bare,64,1,ok,3200.4,19.6,40.1,88.7,32010,0,0,0,0,0,0
user,tutorial,64,1,ok,700.7,85.4,1020,1500,7010,0,0,0,0,0,0
post,project,16,1,ok,2100.3,7.1,15.2,40.8,21010,0,0,0,0,0,0
post,bare,16,1,ok,3900.2,3.8,8.4,22.9,39010,0,0,0,0,0,0
post,tutorial,16,1,ok,1000.6,15.3,33.3,70.1,10010,0,0,0,0,0,0
post,project,64,1,ok,2200.8,28.4,70.6,150.2,22010,0,0,0,0,0,0
post,bare,64,1,ok,4100.1,15.1,31.2,66.6,41010,0,0,0,0,0,0
post,tutorial,64,1,WRK_FAIL,,,,,,,,,,,,
"""


@pytest.fixture(scope="module")
def chart() -> Iterator[ModuleType]:
    """bench/chart.py loaded from its path: bench/ holds scripts, not a package."""
    spec = importlib.util.spec_from_file_location("bench_chart", CHART_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def wrk_run(scenario: str, label: str, conc: int, rps: float, p99: float) -> dict[str, Any]:
    """A run as bench/run.py stores it (WrkResult.to_json plus scenario, label, conc, status)."""
    requests = int(rps * 10)
    return {
        "scenario": scenario,
        "label": label,
        "conc": conc,
        "status": "ok",
        "rps": rps,
        "requests": requests,
        "duration_s": 10.0,
        "latency_avg_ms": p99 / 3,
        "latency_max_ms": p99 * 2,
        "percentiles_ms": {"50": p99 / 4, "75": p99 / 3, "90": p99 / 2, "99": p99},
        "non2xx": 0,
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "statuses": {"200": requests},
    }


def bench_results() -> dict[str, Any]:
    """Two scenarios x two concurrencies, GET /posts/{id} at c=64 failed, and pgbench."""
    return {
        "mode": "scenarios",
        "args": {"users": 2000, "posts": 3, "duration": 3, "concs": [16, 64]},
        "environment": {
            "date": "2026-12-01T10:00:00+00:00",
            "cpus": 2,
            "loadavg": ["0.52", "0.40", "0.31"],
            "git_rev": "e1ab8f3",
            "git_changed_files": 0,
        },
        "runs": [
            wrk_run("users_id", USERS, 16, 2000.0, 14.2),
            wrk_run("users_id", USERS, 64, 2100.0, 61.8),
            wrk_run("posts_id", POSTS, 16, 2600.0, 11.9),
            {
                "scenario": "posts_id",
                "label": POSTS,
                "conc": 64,
                "status": "failed",
                "error": "wrk failed (rc=1), see posts_id_c64.wrk",
            },
        ],
        "pgbench": {
            "tps": 10000.0,
            "clients": 64,
            "transactions": 30000,
            "failed": 0,
            "latency_avg_ms": 6.4,
            "max_connections": 100,
        },
        "ratios": {"users_id_c16": 0.2, "users_id_c64": 0.21},
    }


def svg_texts(path: Path) -> list[str]:
    """The text of every <text> element: tick labels, titles, the note's lines, bar values."""
    root = ElementTree.parse(path).getroot()  # noqa: S314 (a file this test just wrote)
    return ["".join(element.itertext()) for element in root.iter(SVG_TEXT)]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 10_000, f"{path}: {len(data)} bytes"


def test_charts_show_every_route_and_name_the_failed_runs(
    chart: ModuleType, tmp_path: Path
) -> None:
    bench_dir = tmp_path / "bench_20261201_100000"
    bench_dir.mkdir()
    (bench_dir / "results.json").write_text(json.dumps(bench_results()), encoding="utf-8")
    compare_dir = tmp_path / "compare_20261201_090000"  # found beside bench_dir by default
    compare_dir.mkdir()
    (compare_dir / "results.csv").write_text(COMPARE_CSV, encoding="utf-8")

    written = chart.write_charts(bench_dir)

    names = ["bench.png", "bench.svg", "compare.png", "compare.svg"]
    assert sorted(written) == sorted(bench_dir / name for name in names)
    assert_png(bench_dir / "bench.png")
    assert_png(bench_dir / "compare.png")

    bench = svg_texts(bench_dir / "bench.svg")
    for route in (USERS, POSTS):  # a tick label in the requests/s and in the p99 panel
        assert bench.count(route) >= 2, (route, bench)
    assert any("GET /posts/{id} c=64 (failed)" in text for text in bench), bench
    assert "0.200" in bench  # GET /users/{id} c=16: 2000 rps / 10000 pgbench tps

    compare = svg_texts(bench_dir / "compare.svg")
    for route in (USERS, POSTS):  # a tick label in each of the three ratio panels
        assert compare.count(route) >= 3, (route, compare)
    assert any("GET /posts/{id} tutorial c=64 r1 (WRK_FAIL)" in text for text in compare), compare
    assert "0.50" in compare  # GET /users/{id} c=16: project 1500.25 / bare 3000.5 rps


def test_a_results_file_without_scenario_runs_is_an_error_not_a_crash(
    chart: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"mode": "memory-check"}), encoding="utf-8")

    assert chart.main([str(tmp_path)]) == 1

    assert "no scenario runs" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
