"""``audifi-indexer demo``: the whole indexer on an embedded default, with nothing configured.

1. Starts a local anvil (the project's npm package) and, when ``AUDIFI_DATABASE_URL`` is
   unset, a private PostgreSQL in ``--data-dir``; migrates the schema.
2. Deploys the reference contracts; creates users, masters and IPO configs (what the AudiFi
   backend would do).
3. Runs the indexer daemon in the background with a live progress display, while it generates
   a realistic stream of activity: mints across Mover Advantage tiers, transfers, a burn,
   dividends, an artist coin — and a chain reorganisation, which the indexer rolls back.
4. Prints holders, tiers, dividends and the coin through the query module.
5. Stops every process it started (also on Ctrl-C). ``--keep-running`` keeps the chain, the
   database and the indexer up for exploring until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from indexer import migrate, query
from indexer.config import Settings, load_settings, mask_url
from indexer.daemon import Daemon
from indexer.db import create_engine
from indexer.devchain import AnvilNode, AudifiContracts, deploy_audifi, send_tx, start_anvil
from indexer.localpg import LocalPostgres, start_local_postgres
from indexer.logs import configure_logging
from indexer.query_cli import render_table
from indexer.sync import Outcome, StepResult, connect

Say = Callable[[str], None]


@dataclasses.dataclass
class Cast:
    artist: uuid.UUID
    fans: dict[str, tuple[uuid.UUID, Any]]
    masters: dict[str, uuid.UUID]


def _seed_backend(database_url: str, node: AnvilNode) -> Cast:
    """The rows the AudiFi backend would have created: users, masters, IPO configs."""
    artist = uuid.uuid4()
    fans = {
        name: (uuid.uuid4(), node.accounts[i])
        for i, name in enumerate(("alice", "bob", "carol"), start=1)
    }
    masters = {"Midnight Drive": uuid.uuid4(), "Sunrise Tape": uuid.uuid4()}
    with connect(database_url) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO users (id, email, display_name) VALUES (%s, 'nova@audifi.example', "
            "'Nova')",
            (artist,),
        )
        for name, (user_id, wallet) in fans.items():
            # Alice typed her wallet in mixed case; matching is case-insensitive.
            shown = wallet if name == "alice" else wallet.lower()
            conn.execute(
                "INSERT INTO users (id, email, display_name, wallet_address) "
                "VALUES (%s, %s, %s, %s)",
                (user_id, f"{name}@audifi.example", name.title(), shown),
            )
        for title, master_id in masters.items():
            conn.execute(
                "INSERT INTO masters (id, artist_id, title, status) VALUES (%s, %s, %s, 'MINTED')",
                (master_id, artist, title),
            )
        conn.execute(
            "INSERT INTO ipo_configs (master_id, initial_price, total_supply, tier1_count, "
            "tier2_count, tier3_count) VALUES (%s, 0.05, 20, 2, 3, 4)",
            (masters["Midnight Drive"],),
        )
    return Cast(artist, fans, masters)


def _activity(node: AnvilNode, c: AudifiContracts, cast: Cast, say: Say) -> None:
    w3 = node.w3
    wallet = {name: w for name, (_, w) in cast.fans.items()}
    shares = {}
    for title, master_id in cast.masters.items():
        receipt = send_tx(w3, c.registry.functions.deployMaster(master_id.bytes, title, "MSTR"))
        address = receipt["logs"][-1]["topics"][2][-20:].hex()
        shares[title] = c.shares("0x" + address)
        say(f"  registered master {title!r} at 0x{address}")
    drive = shares["Midnight Drive"]
    send_tx(w3, drive.functions.batchMint(wallet["alice"], 1, 4))
    send_tx(w3, drive.functions.batchMint(wallet["bob"], 5, 4))
    send_tx(w3, drive.functions.batchMint(wallet["carol"], 9, 3))
    say("  minted 11 shares of Midnight Drive (tiers 1-4 by mint order)")
    send_tx(w3, shares["Sunrise Tape"].functions.batchMint(wallet["carol"], 1, 12))
    say("  minted 12 shares of Sunrise Tape (default tiers: first 10 are tier 1)")
    send_tx(w3, drive.functions.transferFrom(wallet["alice"], wallet["carol"], 2), wallet["alice"])
    send_tx(w3, drive.functions.burn(8), wallet["bob"])
    say("  alice sold share #2 to carol; bob burned share #8")
    send_tx(w3, c.distributor.functions.deposit(cast.masters["Midnight Drive"].bytes), value=10**18)
    say("  deposited a 1 ETH dividend for Midnight Drive")
    send_tx(w3, c.factory.functions.deployCoin(cast.artist.bytes, "Nova Coin", "NOVA", 10**24))
    say("  deployed Nova's artist coin (1,000,000 NOVA)")
    node.mine(2)


def _reorg(node: AnvilNode, c: AudifiContracts, cast: Cast, say: Say) -> None:
    """Replace the last two blocks: a 0.25 ETH dividend lands instead of a 5 ETH one."""
    w3 = node.w3
    master = cast.masters["Sunrise Tape"].bytes
    send_tx(w3, c.distributor.functions.deposit(master), value=5 * 10**18)
    say("  deposited a 5 ETH dividend for Sunrise Tape …")
    time.sleep(1.0)  # let the indexer see it
    params: Any = {"from": node.accounts[0], "value": 25 * 10**16, "gas": 200_000}
    tx = c.distributor.functions.deposit(master).build_transaction(params)
    replacement = {k: tx[k] for k in ("from", "to", "data", "value", "gas")}
    node.rpc("anvil_reorg", [2, [[replacement, 1]]])
    say("  … and the chain reorganised: the last 2 blocks now hold a 0.25 ETH dividend instead")


def _progress(say: Say) -> Callable[[StepResult], None]:
    def on_step(result: StepResult) -> None:
        if result.outcome is Outcome.PROGRESSED:
            say(
                f"  [indexer] blocks {result.from_block}-{result.to_block}: "
                f"{result.events} events {dict(sorted(result.event_counts.items()))}, "
                f"head {result.head}"
            )
        elif result.outcome is Outcome.REORG:
            say(
                f"  [indexer] REORG of depth {result.reorg_depth}: rolled back to block "
                f"{result.ancestor}, re-indexing"
            )

    return on_step


def _report(database_url: str, cast: Cast, say: Say) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        for title, master_id in cast.masters.items():
            m = query.master(engine, master_id)
            assert m is not None
            say(f"\n{title}  (contract {m.contract_address}, {m.shares_minted} shares minted)")
            page = query.holders(engine, master_id)
            say(
                render_table(
                    page.items, ["wallet", "user_id", "token_ids", "tiers", "royalty_percent"]
                )
            )
            history = query.dividends(engine, master_id)
            say(f"dividends: {history.count} deposit(s), {history.total_wei / 10**18:g} ETH")
        coin = query.artist_coin(engine, cast.artist)
        if coin:
            say(f"\nartist coin: {coin.name} ({coin.symbol}) supply {coin.total_supply:,.0f}")
        (status,) = query.sync_status(engine)
        say(
            f"\nsync: indexed block {status.indexed_block} of {status.head_block}, "
            f"{status.events} events, {status.pending} pending, {status.dead_letters} dead letters"
        )
    finally:
        engine.dispose()


def _wait_caught_up(daemon: Daemon, node: AnvilNode, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.status.indexed_block == int(node.w3.eth.block_number):
            time.sleep(0.3)  # one more poll applies pending rows
            return
        time.sleep(0.1)
    raise TimeoutError("the indexer did not catch up with the demo chain in time")


def run_demo(
    config_path: str | None, data_dir: str, keep_running: bool = False, say: Say = print
) -> int:
    settings = load_settings(config_path)
    configure_logging("console", "error")
    node: AnvilNode | None = None
    server: LocalPostgres | None = None
    daemon: Daemon | None = None
    thread: threading.Thread | None = None
    try:
        say("AudiFi indexer demo")
        node = start_anvil()
        say(f"- local chain: anvil at {node.url} (pid {node.pid}, chain id {node.w3.eth.chain_id})")
        url = settings.database_url
        if url is None:
            server = start_local_postgres(Path(data_dir) / "pgdata")
            url = server.url
            say(f"- database: a private PostgreSQL at {url} (pid {server.pid()})")
            _reset(url)
        else:
            say(f"- database: {mask_url(url)} (AUDIFI_DATABASE_URL)")
        version = migrate.upgrade(url)
        say(f"- schema migrated to {version.head}")
        contracts = deploy_audifi(node.w3)
        say(
            f"- contracts: registry {contracts.registry.address}, dividends "
            f"{contracts.distributor.address}, coin factory {contracts.factory.address}"
        )
        cast = _seed_backend(url, node)
        say("- backend rows: artist Nova, fans alice/bob/carol, 2 masters, 1 IPO config")
        demo_settings = dataclasses.replace(
            settings,
            database_url=url,
            rpc_urls=(node.url,),
            master_registry=contracts.registry.address.lower(),
            dividend_contracts=(contracts.distributor.address.lower(),),
            coin_factory=contracts.factory.address.lower(),
            start_block=0,
            poll_interval=0.2,
            finality_depth=16,
            http_port=settings.http_port if keep_running else 0,
        )
        daemon = Daemon(demo_settings, on_step=_progress(say))
        thread = threading.Thread(target=daemon.run, name="indexer", daemon=True)
        thread.start()
        say("\nactivity (the indexer follows live):")
        _activity(node, contracts, cast, say)
        _reorg(node, contracts, cast, say)
        node.mine(1)
        _wait_caught_up(daemon, node)
        _report(url, cast, say)
        if keep_running:
            _explore(demo_settings, node, say)
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        if daemon is not None:
            daemon.stop_event.set()
        if thread is not None:
            thread.join(timeout=10)
        if node is not None:
            node.stop()
        if server is not None:
            server.stop()
        say("stopped everything the demo started")


def _reset(url: str) -> None:
    """A re-run starts from an empty private database (the demo chain is new each time)."""
    with connect(url) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def _explore(settings: Settings, node: AnvilNode, say: Say) -> None:
    say("\nstill running for exploring (Ctrl-C stops everything):")
    say(f"  chain      {node.url}")
    say(f"  database   psql {settings.database_url}")
    say(f"  query      AUDIFI_DATABASE_URL={settings.database_url} audifi-indexer query status")
    if settings.http_port:
        say(f"  metrics    http://127.0.0.1:{settings.http_port}/metrics")
    # The handler only records the signal (no lock: see Daemon.install_signal_handlers).
    stopped: list[int] = []
    previous: Any = signal.signal(signal.SIGTERM, lambda signum, _: stopped.append(signum))
    try:
        while not stopped:
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGTERM, previous)
