"""``bench/results/``: ``latest.json`` (everything measured), ``report.md`` and ``plot.png``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Check = Callable[[dict[str, Any]], bool]
TARGETS: dict[str, tuple[str, Check]] = {
    "ratio_to_floor": ("backfill ≥ 0.5 × floor", lambda r: r["ratio_to_floor"] >= 0.5),
    "ratio_to_naive": ("backfill ≥ 10 × naive", lambda r: r["ratio_to_naive"] >= 10),
    "rss_flat": (
        "RSS at 100 % within 10 % of RSS at 25 %",
        lambda r: abs(r["rss_mb_at_100"] - r["rss_mb_at_25"]) <= 0.10 * r["rss_mb_at_25"],
    ),
    "live_p95": (
        "live p95 ≤ poll interval + 250 ms",
        lambda r: r["live_p95_ms"] <= r["poll_interval_ms"] + 250,
    ),
    "reorg_32": ("32-block reorg < 1 s", lambda r: r["reorg_32_s"] < 1.0),
}


def check_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, (label, test) in TARGETS.items():
        try:
            met: bool | None = bool(test(result))
        except (KeyError, TypeError):
            met = None
        out[key] = {"target": label, "met": met}
    return out


def plot(series: dict[str, Any], path: Path) -> bool:
    """Throughput and RSS over the backfill; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = series["steps"]
    rss = series["rss"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    times = [0.0] + [s["t"] for s in steps]
    totals = [0] + [s["total"] for s in steps]
    top.plot(times, [t / 1000 for t in totals], color="tab:blue", label="events indexed (k)")
    top.set_ylabel("events indexed (thousands)")
    rate_axis = top.twinx()
    rate_t, rate_v = [], []
    for previous, step in zip([{"t": 0.0}, *steps], steps, strict=False):
        if step["events"] and step["t"] > previous["t"]:
            rate_t.append(step["t"])
            rate_v.append(step["events"] / (step["t"] - previous["t"]) / 1000)
    rate_axis.step(rate_t, rate_v, where="pre", color="tab:orange", label="batch rate (k/s)")
    rate_axis.set_ylim(0, max(rate_v, default=1) * 1.25)
    rate_axis.set_ylabel("batch rate (thousand events/s)")
    top.set_title(
        f"Backfill: {series['events']:,} events in {series['elapsed']:.2f} s "
        f"({series['rate']:,.0f}/s; floor {series['floor_rate']:,.0f}/s, "
        f"naive {series['naive_rate']:,.0f}/s)",
        fontsize=10,
    )
    lines = top.get_legend_handles_labels()
    more = rate_axis.get_legend_handles_labels()
    top.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    bottom.plot([t for t, _ in rss], [mb for _, mb in rss], color="tab:green", label="RSS (MB)")
    for k, (label, (t, mb)) in enumerate(series["rss_marks"].items()):
        bottom.plot([t], [mb], "o", color="black")
        bottom.annotate(
            f"{label}: {mb:.0f} MB",
            (t, mb),
            textcoords="offset points",
            xytext=(4, 8 + 12 * k),
            fontsize=8,
        )
    bottom.set_ylim(0, max(mb for _, mb in rss) * 1.3)
    bottom.set_ylabel("resident memory (MB)")
    bottom.set_xlabel("seconds since the backfill started")
    bottom.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ratio(value: float | None, base: float | None, digits: int) -> str:
    return "–" if not value or not base else f"{value / base:.{digits}f}"


def _naive_row(r: dict[str, Any], d: dict[str, Any]) -> str:
    if not d.get("naive"):
        return "| naive web3.py loop | not measured (`--skip-naive`) |"
    return (
        f"| naive web3.py loop | {_fmt(r['naive_events_per_s'])}/s "
        f"(on the first {_fmt(d['naive']['events'])} events, extrapolated) |"
    )


def _live_row(r: dict[str, Any], d: dict[str, Any]) -> str:
    if not d.get("live"):
        return "| live latency | not measured (`--skip-live`) |"
    return (
        f"| live latency p50 / p95 / max (poll {r['poll_interval_ms']} ms) | "
        f"{r['live_p50_ms']:.0f} / {r['live_p95_ms']:.0f} / {r['live_max_ms']:.0f} ms "
        f"({d['live']['blocks']} blocks, {d['live']['events']} events) |"
    )


def _budget_lines(r: dict[str, Any], d: dict[str, Any], cpu: dict[str, Any]) -> list[str]:
    """The floor target as a time budget, beside the least time the measured CPU allows."""
    floor, cores = r.get("floor_events_per_s"), d["machine"]["cpus"]
    used = [cpu.get(k) for k in ("indexer_s", "postgres_s", "anvil_s")]
    if not floor or None in used or not cpu.get("postgres_writer_s"):
        return []
    budget = r["events"] / (0.5 * floor)
    spread = sum(used) / cores
    writer = cpu["postgres_writer_s"]

    def verdict(seconds: float) -> str:
        return "within it" if seconds <= budget else "**over it**"

    return [
        "",
        f"The target (0.5 × the floor) gives this chain **{budget:.2f} s**. The writing "
        f"backend's CPU alone: {writer:.2f} s, {verdict(writer)}; the CPU of the indexer, "
        f"PostgreSQL and anvil together, spread evenly over the {cores} CPUs: at least "
        f"{spread:.2f} s, {verdict(spread)}.",
    ]


def _write_floor_lines(r: dict[str, Any], d: dict[str, Any]) -> list[str]:
    wf = d.get("write_floor")
    if not wf:
        return []
    rows = ", ".join(f"{n:,} `{t}`" for t, n in wf["rows"].items())
    return [
        "",
        "## The write floor: PostgreSQL's own share",
        "",
        f"The rows the backfill ended with ({rows}) were read back and written again into a "
        "fresh database by `COPY`, in one transaction (SPEC §4: data and cursor commit "
        "together, so a batch is written by one backend): "
        f"**{wf['seconds']:.2f} s = {_fmt(r['write_floor_events_per_s'])} events/s, "
        f"{r['write_floor_ratio_to_floor']:.2f} × the RPC floor** "
        f"(backend CPU {_fmt(wf['postgres_cpu_s'], 2)} s; foreign keys checked "
        + (
            "once for the write, as the indexer does"
            if wf.get("foreign_keys_per_batch")
            else "row by row by PostgreSQL's triggers"
        )
        + "). No decoding, no RPC, every share "
        "written once with its final owner: no backfill into this schema on this server can "
        f"be faster. The backfill reached {wf['backfill_ratio_to_write_floor']:.2f} × this "
        "write floor.",
    ]


def markdown(result: dict[str, Any], plotted: bool) -> str:
    r = result
    d = r["details"]
    targets = r["targets"]
    lines = [
        "# AudiFi indexer benchmark",
        "",
        f"Run {d['run']['finished_at']} — `{d['run']['command']}`. "
        f"{d['machine']['cpus']} CPUs, load average before the run {d['machine']['load_before']}, "
        f"PostgreSQL {d['database']['server_version']} ({d['database']['where']}), "
        f"{d['chain']['anvil']}.",
        "",
        "## Results",
        "",
        "| measure | value |",
        "|---|---|",
        f"| events (AudiFi events indexed) | {_fmt(r['events'])} over {d['chain']['blocks']:,} "
        f"blocks, {d['chain']['masters']} master contracts |",
        f"| floor: bare `eth_getLogs`, parsed (bytes only) | {_fmt(r['floor_events_per_s'])}/s "
        f"({_fmt(d['floor']['bytes_events_per_s'])}/s) |",
        _naive_row(r, d),
        f"| **our backfill**, end to end with the domain tables | "
        f"**{_fmt(r['backfill_events_per_s'])}/s** ({d['backfill']['seconds']:.2f} s) |",
        # ratios from the rates themselves: rounding an already rounded ratio can move it
        f"| ratio to the floor (parsed; bytes only) | "
        f"{_ratio(r['backfill_events_per_s'], r['floor_events_per_s'], 2)} "
        f"({_ratio(r['backfill_events_per_s'], d['floor']['bytes_events_per_s'], 2)}) |",
        f"| ratio to naive | {_ratio(r['backfill_events_per_s'], r['naive_events_per_s'], 1)} |",
        f"| RPC requests (HTTP) during the backfill | {_fmt(d['backfill']['http_requests'])}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(d["backfill"]["rpc_calls"].items()))
        + " |",
        f"| RSS at 25 / 50 / 100 % of the chain | {r['rss_mb_at_25']:.0f} / "
        f"{r['rss_mb_at_50']:.0f} / {r['rss_mb_at_100']:.0f} MB (peak {r['peak_rss_mb']:.0f} MB;"
        f" {d['backfill']['ready_rss_mb']:.0f} MB before the first step) |",
        _live_row(r, d),
    ]
    for depth, info in sorted((d.get("reorgs") or {}).items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| reorg depth {depth}: median / max recovery | {info['median_s'] * 1000:.0f} / "
            f"{info['max_s'] * 1000:.0f} ms ({len(info['trials_s'])} trials, rows verified: "
            f"{'yes' if info['verified'] else 'NO'}) |"
        )
    lines += [
        "",
        "## Targets (SPEC §7)",
        "",
        "| target | met |",
        "|---|---|",
    ]
    for item in (targets[key] for key in TARGETS if key in targets):
        met = {True: "yes", False: "**no**", None: "not measured"}[item["met"]]
        lines.append(f"| {item['target']} | {met} |")
    cpu = d["backfill"].get("cpu") or {}
    if cpu:
        lines += [
            "",
            "## CPU during the backfill",
            "",
            f"Over {cpu['window_s']:.2f} s (the worker's step loop, first step to caught up) "
            f"on {d['machine']['cpus']} CPUs: the indexer process used "
            f"{_fmt(cpu.get('indexer_s'), 2)} s of CPU, its PostgreSQL backends "
            f"{_fmt(cpu.get('postgres_s'), 2)} s (the writer's "
            f"{_fmt(cpu.get('postgres_writer_s'), 2)} s, the rest reads for batches planned "
            f"ahead), anvil {_fmt(cpu.get('anvil_s'), 2)} s, "
            f"other processes on the machine {_fmt(cpu.get('others_s'), 2)} s "
            f"(machine busy {cpu['busy_pct']:.0f} %).",
            "",
            "PostgreSQL executes the writes of a batch on one backend, one core: at "
            f"{_fmt(cpu.get('postgres_writer_s'), 2)} s of its CPU for {r['events']:,} events "
            "it alone "
            f"allows at most {_fmt(d['backfill'].get('postgres_bound_events_per_s'))} events/s, "
            "whatever the indexer and the node do.",
        ]
        lines += _budget_lines(r, d, cpu)
    lines += _write_floor_lines(r, d)
    if plotted:
        lines += ["", "## Throughput and memory over the backfill", "", "![plot](plot.png)"]
    profile = d.get("profile")
    if profile:
        lines += ["", "## Profile of a second backfill run (py-spy)", ""]
        for thread in profile["threads"]:
            lines.append(f"**{thread['thread']}** — {thread['samples']} samples; on the stack:")
            lines.append("")
            lines += [f"- {pct:.1f} % {name}" for name, pct in thread["inclusive"]]
            lines.append("")
            lines.append("at the top of the stack:")
            lines.append("")
            lines += [f"- {pct:.1f} % {name}" for name, pct in thread["self"]]
            lines.append("")
    lines += [
        "",
        "## How it was measured",
        "",
        "See `bench/README.md`. Settings: " + json.dumps(d["settings"], sort_keys=True) + ".",
        "",
    ]
    return "\n".join(lines)


def write(result: dict[str, Any], series: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plotted = plot(series, out_dir / "plot.png")
    (out_dir / "latest.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    (out_dir / "report.md").write_text(markdown(result, plotted))
