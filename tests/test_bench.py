"""Smoke test of the benchmark machinery (``python -m bench``) at a tiny size.

It checks that one run goes through every phase (chain, backfill, floor, naive loop, live
path, reorgs, report) and that the JSON it prints is complete and self-consistent. Timings
are never asserted: SPEC §7's targets are for the full benchmark, not for this.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.db import ADMIN_URL

pytestmark = pytest.mark.anvil

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "events",
    "floor_events_per_s",
    "naive_events_per_s",
    "backfill_events_per_s",
    "ratio_to_floor",
    "ratio_to_naive",
    "peak_rss_mb",
    "rss_mb_at_25",
    "rss_mb_at_100",
    "live_p95_ms",
    "poll_interval_ms",
    "reorg_32_s",
)


def test_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path: Path, pg_template: str) -> None:
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "bench", "--events", "2000", "--json",
        "--naive-events", "300", "--live-blocks", "4", "--reorg-trials", "1",
        "--backfill-runs", "1", "--out", str(out), "--admin-url", ADMIN_URL,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    for key in KEYS:
        assert key in result, key
        assert isinstance(result[key], int | float) and math.isfinite(result[key]), key
    assert result["events"] >= 2000
    for key in ("floor_events_per_s", "naive_events_per_s", "backfill_events_per_s"):
        assert result[key] > 0, key
    assert result["ratio_to_floor"] == pytest.approx(
        result["backfill_events_per_s"] / result["floor_events_per_s"], rel=0.01
    )
    assert result["ratio_to_naive"] == pytest.approx(
        result["backfill_events_per_s"] / result["naive_events_per_s"], rel=0.01
    )
    assert 0 < result["rss_mb_at_25"] <= result["peak_rss_mb"]
    assert 0 < result["rss_mb_at_100"] <= result["peak_rss_mb"]
    assert result["poll_interval_ms"] == 500
    assert result["live_p95_ms"] > 0
    assert result["reorg_32_s"] > 0
    assert set(result["targets"]) == {
        "ratio_to_floor", "ratio_to_naive", "rss_flat", "live_p95", "reorg_32",
    }  # fmt: skip

    stored = json.loads((out / "latest.json").read_text())
    assert {k: stored[k] for k in KEYS} == {k: result[k] for k in KEYS}
    assert all(depth["verified"] for depth in stored["details"]["reorgs"].values())
    assert stored["details"]["live"]["events"] > 0
    report = (out / "report.md").read_text()
    assert "## Targets (SPEC §7)" in report
    assert "{_fmt(" not in report and "cpu.get(" not in report, "a placeholder left in"
    cpu = stored["details"]["backfill"]["cpu"]
    assert cpu["postgres_writer_s"] is not None and cpu["postgres_s"] >= cpu["postgres_writer_s"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "plot.png").stat().st_size > 1000
