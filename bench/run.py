"""One benchmark run: chain → database → backfill → floor → naive → live → reorgs → report."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench import chain as bench_chain
from bench import report
from bench.backfill import BackfillResult, run_backfill
from bench.database import fresh_database, seed_backend, server
from bench.floor import measure_floor
from bench.live import run_live_and_reorgs, summarize_reorgs
from bench.naive import run_naive
from bench.profile import summarize
from bench.rpc import Rpc
from bench.write_floor import WriteFloor, measure_write_floor
from indexer.contracts import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark of the AudiFi indexer (SPEC §7): backfill against the RPC floor "
        "and a naive web3.py loop, memory, live latency, reorg recovery.",
    )
    p.add_argument("--events", type=int, default=100_000, help="AudiFi events on the chain")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated chain")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument(
        "--admin-url",
        help="PostgreSQL URL of a database where the benchmark may "
        "CREATE/DROP its own database (default: see bench/README.md)",
    )
    p.add_argument("--poll-interval", type=float, default=0.5, help="daemon poll interval (s)")
    p.add_argument("--block-interval", type=float, default=0.5, help="live block interval (s)")
    p.add_argument("--live-blocks", type=int, default=60)
    p.add_argument("--reorg-trials", type=int, default=3, help="trials per reorg depth")
    p.add_argument("--finality-depth", type=int, default=64)
    p.add_argument(
        "--naive-events",
        type=int,
        default=20_000,
        help="events the naive loop indexes before its rate is taken",
    )
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-live", action="store_true", help="skip the live path and the reorgs")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile a second backfill with py-spy (in the bench extra)",
    )
    p.add_argument("--rebuild-chain", action="store_true", help="ignore the cached chain")
    p.add_argument(
        "--backfill-runs",
        type=int,
        default=3,
        help="backfills (each into a fresh database); the median one is reported",
    )
    return p.parse_args(argv)


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = args.json

    def say(message: str) -> None:
        print(message, file=sys.stderr if quiet else sys.stdout, flush=True)

    started = time.monotonic()
    load_before = os.getloadavg()
    info = bench_chain.ensure_chain(args.events, args.seed, say, rebuild=args.rebuild_chain)
    node = bench_chain.start_node(info)
    try:
        tail = bench_chain.mine_tail(node, info)
        rpc = Rpc(node.url)
        chain_id = int(rpc.call("eth_chainId"), 16)
        addresses = bench_chain._trusted_addresses(info)
        rpc.call(  # warm-up: every log once, so no measurement pays a first-touch cost
            "eth_getLogs", [{"fromBlock": "0x0", "toBlock": hex(tail.head), "address": addresses}]
        )
        with server(args.admin_url) as srv:
            db_settings = srv.settings()
            config = {
                "rpc_url": node.url,
                "registry": info.registry,
                "dividends": [info.distributor],
                "factory": info.factory,
                "options": {"start_block": 0, "finality_depth": args.finality_depth},
                "target_head": tail.head,
            }
            runs: list[tuple[BackfillResult, dict[str, Any]]] = []
            for _ in range(args.backfill_runs - 1):
                with fresh_database(srv) as url:
                    runs.append(_one_backfill(config, url, info, node.pid, say))
            with fresh_database(srv) as url:
                runs.append(_one_backfill(config, url, info, node.pid, say))
                ordered = sorted(runs, key=lambda run: run[0].events / run[0].elapsed)
                backfill, cpu = ordered[len(ordered) // 2]
                rate = backfill.events / backfill.elapsed
                run_rates = [round(r.events / r.elapsed) for r, _ in runs]
                if len(runs) > 1:
                    say(f"backfill: median of {len(runs)} runs: {rate:,.0f}/s")
                config["database_url"] = url
                ranges = backfill.ranges
                floor = measure_floor(node.url, addresses, bench_chain.audifi_topics(), ranges)
                floor_rate = backfill.events / floor.parsed_seconds
                say(
                    f"floor: {floor.logs:,} logs in {floor.parsed_seconds:.3f}s parsed "
                    f"({floor.bytes_seconds:.3f}s bytes only) = {floor_rate:,.0f} events/s "
                    f"(filter: {floor.shape})"
                )
                write_floor = measure_write_floor(srv, url, _cpu_seconds)
                say(
                    f"write floor: the backfill's final rows "
                    f"({', '.join(f'{n:,} {t}' for t, n in write_floor.rows.items())}) by COPY "
                    f"in one transaction: {write_floor.seconds:.2f}s = "
                    f"{write_floor.events_per_s(backfill.events):,.0f} events/s"
                )
                naive = None
                if not args.skip_naive:
                    naive = run_naive(node.url, url, info, ranges, args.naive_events)
                    say(
                        f"naive: {naive.events:,} events in {naive.seconds:.2f}s = "
                        f"{naive.events_per_s:,.0f}/s"
                    )
                profile = None
                if args.profile:
                    profile = _profile_backfill(srv, info, config, args.out, say)
                live = reorgs = None
                if not args.skip_live:
                    live, reorgs = run_live_and_reorgs(
                        node.url,
                        url,
                        info,
                        chain_id,
                        poll_interval=args.poll_interval,
                        block_interval=args.block_interval,
                        live_blocks=args.live_blocks,
                        reorg_depths=(1, 8, 32),
                        reorg_trials=args.reorg_trials,
                        finality_depth=args.finality_depth,
                        say=say,
                    )
        result = _result(
            args,
            info,
            tail,
            backfill,
            floor,
            naive,
            live,
            reorgs,
            profile,
            write_floor=write_floor,
            cpu=cpu,
            run_rates=run_rates,
            db_settings=db_settings,
            private_db=srv.private is not None,
            load_before=load_before,
            seconds=time.monotonic() - started,
        )
        series = {
            "steps": backfill.steps,
            "rss": backfill.rss,
            "rss_marks": _rss_marks(backfill, tail.head),
            "events": backfill.events,
            "elapsed": backfill.elapsed,
            "rate": rate,
            "floor_rate": floor_rate,
            "naive_rate": naive.events_per_s if naive else 0.0,
        }
        report.write(result, series, args.out)
        say(f"results: {args.out / 'report.md'}")
    finally:
        node.stop()
    if args.json:
        print(orjson.dumps(_headline(result)).decode())
    else:
        for key, value in _headline(result).items():
            print(f"  {key}: {value}")
    return 0


def _one_backfill(
    config: dict[str, Any], url: str, info: bench_chain.ChainInfo, anvil_pid: int, say: Any
) -> tuple[BackfillResult, dict[str, Any]]:
    """One backfill of the whole chain into the fresh database ``url``, with CPU accounting."""
    seed_backend(url, info)
    say(f"backfill: blocks 0..{config['target_head']} into a fresh database")
    anvil_before = _cpu_seconds(anvil_pid)
    backfill = run_backfill({**config, "database_url": url}, postgres_cpu=_cpu_seconds)
    anvil_after = _cpu_seconds(anvil_pid)
    # the machine's ticks over the worker's step loop only (its start-up is not the backfill)
    total_0, idle_0, total_1, idle_1 = backfill.summary["machine_ticks"]
    ticks_before, ticks_after = (total_0, idle_0), (total_1, idle_1)
    rate = backfill.events / backfill.elapsed
    say(
        f"backfill: {backfill.events:,} events in {backfill.elapsed:.2f}s = "
        f"{rate:,.0f}/s in {len(backfill.steps)} steps"
    )
    return backfill, _cpu(backfill, ticks_before, ticks_after, anvil_before, anvil_after)


def _rss_marks(backfill: BackfillResult, head: int) -> dict[str, tuple[float, float]]:
    marks = {}
    for fraction in (0.25, 0.5, 1.0):
        t, mb = backfill.rss_sample_at_fraction(fraction, 0, head)
        marks[f"{int(fraction * 100)} %"] = (t, mb)
    return marks


def _cpu(
    backfill: BackfillResult,
    before: tuple[int, int],
    after: tuple[int, int],
    anvil_before: float | None,
    anvil_after: float | None,
) -> dict[str, Any]:
    total = after[0] - before[0]
    idle = after[1] - before[1]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (total - idle) / ticks
    indexer = backfill.summary.get("cpu_step_s")
    postgres = backfill.extra.get("postgres_cpu_s")
    writer = backfill.extra.get("postgres_writer_cpu_s")
    anvil = None if anvil_before is None or anvil_after is None else anvil_after - anvil_before
    ours = sum(v for v in (indexer, postgres, anvil) if v is not None)
    return {
        "window_s": total / ticks / (os.cpu_count() or 1),
        "busy_pct": 100 * (total - idle) / total if total else 0.0,
        "indexer_s": indexer,
        "postgres_s": postgres,
        "postgres_writer_s": writer,
        "anvil_s": anvil,
        "others_s": max(0.0, busy - ours),
    }


def _profile_backfill(
    srv: Any, info: bench_chain.ChainInfo, config: dict[str, Any], out: Path, say: Any
) -> dict[str, Any] | None:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        say("profile: py-spy is not installed (it comes with the bench extra); skipped")
        return None
    bench_chain.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = bench_chain.CACHE_DIR / "profile.speedscope.json"  # large: kept out of results/
    with fresh_database(srv) as url:
        seed_backend(url, info)
        profiled = run_backfill({**config, "database_url": url}, profile_to=path)
    say(
        f"profile: a second backfill under py-spy ran at "
        f"{profiled.events / profiled.elapsed:,.0f}/s; written to {path}"
    )
    return {
        "path": str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path),
        "threads": summarize(path),
    }


def _result(
    args: argparse.Namespace,
    info: bench_chain.ChainInfo,
    tail: bench_chain.Tail,
    backfill: BackfillResult,
    floor: Any,
    naive: Any,
    live: Any,
    reorgs: Any,
    profile: Any,
    *,
    write_floor: WriteFloor,
    cpu: dict[str, Any],
    run_rates: list[int],
    db_settings: dict[str, str],
    private_db: bool,
    load_before: tuple[float, float, float],
    seconds: float,
) -> dict[str, Any]:
    events = backfill.events
    rate = events / backfill.elapsed
    floor_rate = events / floor.parsed_seconds
    floor_bytes_rate = events / floor.bytes_seconds
    naive_rate = naive.events_per_s if naive else None
    reorg_summary = summarize_reorgs(reorgs) if reorgs else {}
    result: dict[str, Any] = {
        "events": events,
        "floor_events_per_s": round(floor_rate),
        "naive_events_per_s": round(naive_rate) if naive_rate else None,
        "backfill_events_per_s": round(rate),
        "ratio_to_floor": round(rate / floor_rate, 3),
        "ratio_to_naive": round(rate / naive_rate, 2) if naive_rate else None,
        "peak_rss_mb": round(backfill.summary["vm_hwm_kb"] / 1024, 1),
        "rss_mb_at_25": round(backfill.rss_at_fraction(0.25, 0, tail.head), 1),
        "rss_mb_at_50": round(backfill.rss_at_fraction(0.5, 0, tail.head), 1),
        "rss_mb_at_100": round(backfill.rss_at_fraction(1.0, 0, tail.head), 1),
        "live_p50_ms": round(live.p50_ms, 1) if live else None,
        "live_p95_ms": round(live.p95_ms, 1) if live else None,
        "live_max_ms": round(live.max_ms, 1) if live else None,
        "poll_interval_ms": round(args.poll_interval * 1000),
        "reorg_1_s": round(reorg_summary["1"]["max_s"], 3) if reorgs else None,
        "reorg_8_s": round(reorg_summary["8"]["max_s"], 3) if reorgs else None,
        "reorg_32_s": round(reorg_summary["32"]["max_s"], 3) if reorgs else None,
        "rpc_requests": backfill.summary["http_requests"],
        "write_floor_events_per_s": round(write_floor.events_per_s(events)),
        "write_floor_ratio_to_floor": round(write_floor.events_per_s(events) / floor_rate, 3),
    }
    result["targets"] = report.check_targets(result)
    result["details"] = {
        "run": {
            "finished_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m bench " + " ".join(sys.argv[1:]),
            "seconds": round(seconds, 1),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": [round(x, 2) for x in load_before],
        },
        "database": {
            "where": "private server in bench/cache/pg" if private_db else "given server",
            **db_settings,
        },
        "chain": {
            "anvil": bench_chain._anvil_version(),
            "blocks": tail.head + 1,
            "masters": len(info.masters),
            "bulk_counts": info.bulk_counts,
            "tail": {"coins": tail.coins, "dividends": tail.dividends},
            "cache_key": info.key,
            "build_seconds": info.build_seconds,
        },
        "backfill": {
            "postgres_bound_events_per_s": round(events / cpu["postgres_writer_s"])
            if cpu.get("postgres_writer_s")
            else None,
            "runs_events_per_s": run_rates,
            "seconds": round(backfill.elapsed, 3),
            "steps": len(backfill.steps),
            "ranges": backfill.ranges,
            "rpc_calls": backfill.summary["rpc_calls"],
            "http_requests": backfill.summary["http_requests"],
            "ready_rss_mb": round(backfill.ready_rss_mb, 1),
            "foreign_keys_per_batch": backfill.summary.get("foreign_keys_per_batch"),
            "cpu": cpu,
        },
        "floor": {
            "logs": floor.logs,
            "bytes": floor.bytes,
            "requests": floor.requests,
            "shape": floor.shape,
            "parsed_seconds": round(floor.parsed_seconds, 4),
            "bytes_seconds": round(floor.bytes_seconds, 4),
            "bytes_events_per_s": round(floor_bytes_rate),
            "ratio_bytes": round(rate / floor_bytes_rate, 3),
            "runs": floor.runs,
        },
        "write_floor": {
            "rows": write_floor.rows,
            "seconds": round(write_floor.seconds, 3),
            "postgres_cpu_s": write_floor.postgres_cpu_s,
            "foreign_keys_per_batch": write_floor.foreign_keys_per_batch,
            "backfill_ratio_to_write_floor": round(rate / write_floor.events_per_s(events), 3),
        },
        "naive": None
        if naive is None
        else {
            "events": naive.events,
            "seconds": round(naive.seconds, 3),
            "ranges": naive.ranges,
            "last_block": naive.last_block,
            "extrapolated_seconds_for_all": round(events / naive.events_per_s, 1),
        },
        "live": None
        if live is None
        else {
            "blocks": live.blocks,
            "events": live.events,
            "block_interval_s": live.block_interval,
            "latencies_ms": [round(x, 1) for x in live.latencies_ms],
        },
        "reorgs": reorg_summary,
        "profile": profile,
        "settings": {
            "poll_interval_s": args.poll_interval,
            "finality_depth": args.finality_depth,
            "live_blocks": args.live_blocks,
            "reorg_trials": args.reorg_trials,
            "naive_events": args.naive_events,
            "seed": args.seed,
        },
    }
    return result


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "details"}
