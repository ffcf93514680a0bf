"""Our backfill, end to end: the worker subprocess from an empty cursor to the chain head,
with its resident memory sampled from ``/proc/<pid>/status`` every 20 ms."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from indexer.contracts import REPO_ROOT


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler(threading.Thread):
    """(seconds since ``origin``, RSS in MB) of a process, every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.origin = time.perf_counter()
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            value = rss_kb(self.pid)
            if value is None:
                return
            self.samples.append((time.perf_counter() - self.origin, value / 1024))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)


@dataclass
class BackfillResult:
    elapsed: float
    events: int
    steps: list[dict[str, Any]]
    summary: dict[str, Any]
    rss: list[tuple[float, float]]
    """(seconds since the start of the backfill, RSS MB)."""
    ready_rss_mb: float
    profile: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return [
            (s["from"], s["to"])
            for s in self.steps
            if s["outcome"] == "progressed" and s["from"] is not None
        ]

    def rss_sample_at_fraction(self, fraction: float, first: int, head: int) -> tuple[float, float]:
        """(time, RSS) of the first sample after the step that took the cursor past
        ``fraction`` of the chain."""
        goal = first + fraction * (head - first)
        for step in self.steps:
            if step["to"] is not None and step["to"] >= goal:
                later = [(t, mb) for t, mb in self.rss if t >= step["t"]]
                return later[0] if later else self.rss[-1]
        return self.rss[-1]

    def rss_at_fraction(self, fraction: float, first: int, head: int) -> float:
        """RSS right after the step that took the cursor past ``fraction`` of the chain."""
        return self.rss_sample_at_fraction(fraction, first, head)[1]


def run_backfill(
    config: dict[str, Any],
    profile_to: Path | None = None,
    postgres_cpu: Callable[[int | None], float | None] | None = None,
) -> BackfillResult:
    """Run the worker; ``postgres_cpu(pid)`` (CPU seconds of a process, when readable) gives
    the CPU its PostgreSQL backend used during the backfill."""
    cmd = [
        sys.executable,
        *(config.pop("worker", None) or ["-m", "bench.worker"]),
        orjson.dumps(config).decode(),
    ]
    if profile_to is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        # BENCH_PROFILE_IDLE=0: leave out samples of threads waiting (on PostgreSQL, a socket,
        # a lock); BENCH_PROFILE_GIL=1: only samples of the thread holding the GIL.
        idle = ["--idle"] if os.environ.get("BENCH_PROFILE_IDLE", "1") == "1" else []
        idle += ["--gil"] if os.environ.get("BENCH_PROFILE_GIL") == "1" else []
        cmd = [
            py_spy,
            "record",
            "--rate",
            "250",
            "--format",
            "speedscope",
            *idle,
            "--output",
            str(profile_to),
            "--",
            *cmd,
        ]
    process = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        ready = _next_record(process.stdout)
        if not ready.get("ready"):
            raise RuntimeError(f"the backfill worker did not start: {ready}")
        pid = _python_pid(process.pid) if profile_to is not None else process.pid
        sampler = RssSampler(pid)
        sampler.start()
        backends = ready.get("backend_pids") or [ready.get("backend_pid")]
        pg_before = _backends_cpu(postgres_cpu, backends)
        process.stdin.write("go\n")
        process.stdin.flush()
        steps: list[dict[str, Any]] = []
        summary: dict[str, Any] = {}
        while True:
            record = _next_record(process.stdout)
            if not record:
                break
            if "error" in record:
                raise RuntimeError(f"backfill failed: {record['error']}")
            if record.get("done"):
                summary = record
                pg_after = _backends_cpu(postgres_cpu, backends)
                process.stdin.write("done\n")
                process.stdin.flush()
                break
            steps.append(record)
        sampler.stop()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if not summary:
        raise RuntimeError(f"the backfill worker exited with {process.returncode} before the end")
    offset = sampler.samples[0][0] if sampler.samples else 0.0
    rss = [(t - offset, mb) for t, mb in sampler.samples]
    extra: dict[str, Any] = {}
    if pg_before is not None and pg_after is not None:
        extra["postgres_writer_cpu_s"] = pg_after[0] - pg_before[0]
        if summary.get("reader_pids", backends[1:]) == backends[1:]:  # no reader reopened
            extra["postgres_cpu_s"] = sum(pg_after) - sum(pg_before)
    return BackfillResult(
        elapsed=summary["elapsed"],
        events=summary["events"],
        steps=steps,
        summary=summary,
        rss=rss,
        ready_rss_mb=ready["rss_kb"] / 1024,
        profile=str(profile_to) if profile_to else None,
        extra=extra,
    )


def _backends_cpu(
    postgres_cpu: Callable[[int | None], float | None] | None, pids: list[int | None]
) -> list[float] | None:
    """CPU seconds of each of the worker's PostgreSQL backends (the writer's first, then the
    reader's); None when one is not readable."""
    if postgres_cpu is None:
        return None
    seconds = [postgres_cpu(pid) for pid in pids]
    return None if any(s is None for s in seconds) else [s for s in seconds if s is not None]


def _next_record(stream: Any) -> dict[str, Any]:
    """The next JSON line of the worker ({} at the end); other lines (py-spy's) are shown."""
    for line in stream:
        if line.startswith("{"):
            return dict(orjson.loads(line))
        sys.stderr.write(line)
    return {}


def _python_pid(wrapper: int, timeout: float = 10.0) -> int:
    """The worker's PID under ``py-spy record`` (its child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{wrapper}/task/{wrapper}/children").read_text().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    return wrapper
