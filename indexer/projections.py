"""The AudiFi domain tables, derived from the event log (SPEC §3), in the batch's transaction.

Effects (SPEC §3, §8):

* ``MasterRegistered`` → ``masters.contract_address``.
* ERC-721 ``Transfer`` of a registered master contract → ``nft_shares``: a mint creates the
  row with its Mover Advantage tier and royalty (the k-th accepted mint of the master, in chain
  order, against the master's ``ipo_configs`` or the seed's defaults) and ``minted_at``; a
  transfer sets ``owner_wallet``, ``owner_id`` and ``last_transfer``; a burn sets the owner to
  NULL and ``last_transfer``. A burned share keeps its place in the order.
* ``DividendDeposited`` → a ``dividend_events`` row.
* ``ArtistCoinDeployed`` → ``artist_coins``: the chain wins for ``contract_address``,
  ``deployed_at``, ``name``, ``symbol``, ``total_supply`` (read by ``eth_call`` at the event's
  block, stored in the event's ``context``); where no row exists one is created.

Guarantees:

* **Pending, never lost.** An event whose master (or, for a coin without a row, whose artist
  user) has no row yet is stored with ``applied = false`` and applied — in chain order, before
  any later event — as soon as the row exists: at the next batch or the next poll
  (:meth:`AudifiProjector.reconcile`), without a restart.
* **Owners follow users.** ``owner_id`` is the user whose ``wallet_address`` matches
  ``owner_wallet`` case-insensitively; ``reconcile`` re-links shares when a user links or
  changes a wallet.
* **Tiers follow the IPO configuration.** A master's ``ipo_configs`` row added, changed or
  removed after its shares were minted: ``reconcile`` gives those shares tier and royalty by
  the configuration as it is (what a fresh index gives, SPEC §4.1), at the next poll —
  whenever the change was made (``indexer_tier_configs`` keeps what the shares were given).
* **Reorgs are exact.** :meth:`AudifiProjector.rollback` (called before the event log loses
  the events above the ancestor) recomputes every share those events touched from the events
  that remain, deletes their dividend rows, and puts backend rows (``masters``,
  ``artist_coins``) back from the before-images in ``indexer_snapshots`` — a coin row the
  indexer created disappears, a backend row gets its own values back. The result equals a fresh
  index of the canonical chain; :func:`rebuild` re-derives everything from the event log and
  ``tests/test_projections.py`` proves both equal.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from time import monotonic
from typing import Any

import psycopg

from indexer import foreign_keys, store
from indexer.chain.source import ChainSource
from indexer.coins import read_coin, storable_supply
from indexer.decode import EventType
from indexer.ids import ordered_uuids
from indexer.logs import get_logger
from indexer.sync import Projector

log = get_logger("audifi.projections")

ZERO_ADDRESS = "0x" + "00" * 20
_TRANSFER = EventType.TRANSFER.value
_REGISTERED = EventType.MASTER_REGISTERED.value
_DIVIDEND = EventType.DIVIDEND_DEPOSITED.value
_COIN = EventType.ARTIST_COIN_DEPLOYED.value
KEYS_CHECKED_PER_BATCH = ("nft_shares", "dividend_events")
"""The tables whose bulk writes have their foreign keys checked once per batch
(:mod:`indexer.foreign_keys`)."""
MASTERS_RESTORED = ("contract_address",)
COINS_RESTORED = ("contract_address", "deployed_at", "name", "symbol", "total_supply")


@dataclass(frozen=True, slots=True)
class TierConfig:
    """Mover Advantage: tier sizes and royalties (the seed's defaults unless configured)."""

    tier1_count: int = 10
    tier2_count: int = 40
    tier3_count: int = 50
    royalties: tuple[Decimal, Decimal, Decimal, Decimal] = (
        Decimal("10.00"),
        Decimal("5.00"),
        Decimal("3.00"),
        Decimal("1.00"),
    )

    def tier_of(self, ordinal: int) -> tuple[int, Decimal]:
        """Tier and royalty of the ``ordinal``-th (1-based) mint of the master."""
        bounds = (
            self.tier1_count,
            self.tier1_count + self.tier2_count,
            self.tier1_count + self.tier2_count + self.tier3_count,
        )
        for tier, bound in enumerate(bounds, start=1):
            if ordinal <= bound:
                return tier, self.royalties[tier - 1]
        return 4, self.royalties[3]


DEFAULT_TIERS = TierConfig()


@dataclass(slots=True)
class _Event:
    """An event as the projector needs it (from a batch or from the pending rows)."""

    block_number: int
    log_index: int
    block_time: dt.datetime
    block_hash: str
    tx_hash: str
    address: str
    event_type: str
    args: dict[str, Any]
    context: dict[str, Any] | None

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


@dataclass(slots=True)
class _Share:
    """The state of one share after the events of a pass."""

    minted: bool = False
    tier: int = 0
    royalty: Decimal = Decimal(0)
    minted_at: dt.datetime | None = None
    owner: str | None = None
    last_transfer: dt.datetime | None = None


@dataclass(slots=True)
class _Pass:
    """What one pass over events wrote. Masters are keyed by their id's text (canonical
    ``str(uuid)``) here: a ``uuid.UUID`` hashes in Python code, a ``str`` in C, and the loop
    hashes a master several times per event."""

    shares: dict[tuple[str, int], _Share] = field(default_factory=dict)
    dividends: list[tuple[Any, ...]] = field(default_factory=list)
    applied: list[tuple[int, int]] = field(default_factory=list)
    wallets: set[str] = field(default_factory=set)
    registered: list[tuple[_AnyEvent, str]] = field(default_factory=list)
    """``MasterRegistered`` events applied, with their master, in chain order."""
    effects: dict[tuple[int, int], dict[str, str]] | None = None
    """What each applied event did to the AudiFi tables (for the Redis message's ``data``);
    None: not wanted (no outbox)."""
    first_changes: dict[tuple[str, int], tuple[int, int]] | None = None
    """Position of the first event of the pass that changed each share: the write keeps the
    share's before-image there (:func:`_keep_share_images`); None: not wanted (a final
    batch, which no reorg takes back)."""


_AnyEvent = _Event | store.EventRow
"""Events of a batch are applied as they are; pending ones come back from the event log."""


class AudifiProjector(Projector):
    def __init__(self) -> None:
        self._mint_counts: dict[str, int] = {}
        """Applied mints per master (id text), the k of the next mint's Mover Advantage."""
        self._linked = False
        """Every share was re-linked since this projector began or last forgot (False: the
        next re-link covers every share — a former process's writes included)."""
        self._written: set[tuple[str, int]] | None = set()
        """Shares written since the last re-link (None: too many to list)."""
        self._nothing_pending = False
        """The last pass left no event pending (False: it did, or that is unknown)."""
        self._tiers_checked = False
        """Every master's tiers were compared since this projector began or last forgot."""

    def forget(self, *, links: bool = True) -> None:
        """Drop caches (after a rollback or a failed transaction). ``links=False`` keeps the
        re-link's and re-tier's bookkeeping (:meth:`_relink`, :meth:`_retier`): right after a
        failed step, whose shares were noted in :attr:`_written` during its pass — extra keys
        if it did not commit, which a re-link leaves as they are. A failed reconcile forgets
        them too: it may have cleared :attr:`_written` before its commit failed."""
        self._mint_counts.clear()
        self._nothing_pending = False
        if links:
            self._linked = False
            self._written = set()
            self._tiers_checked = False

    # -- chain reads before the transaction ------------------------------------------------
    def enrich(
        self, source: ChainSource, events: list[store.EventRow]
    ) -> tuple[list[store.EventRow], list[tuple[store.EventRow, str]]]:
        """Read each announced coin at its event's block (:func:`indexer.coins.read_coin`).

        A coin whose total supply ``artist_coins.total_supply`` cannot hold exactly, or that
        does not tell it, is not applied with a made-up value: its ``ArtistCoinDeployed`` is
        returned as a dead letter with the reason (SPEC §4.6, "uint256 extremes … get a clear
        error or a dead letter"). Cleaned names and symbols are kept, with a warning."""
        if all(event.event_type != _COIN for event in events):
            return events, []  # most batches
        out: list[store.EventRow] = []
        rejected: list[tuple[store.EventRow, str]] = []
        for event in events:
            if event.event_type == _COIN:
                info = read_coin(source, event.args["contractAddress"], event.block_hash)
                if info.notes:  # what was cleaned, defaulted or cannot be stored, and why
                    log.warning(
                        "coin_read_notes",
                        coin=event.args["contractAddress"],
                        block=event.block_number,
                        notes=info.notes,
                    )
                if info.supply_problem is not None:
                    reason = (
                        f"ArtistCoinDeployed of {event.args['contractAddress']}: "
                        f"{info.supply_problem}; not applied (artist_coins keeps its row as "
                        "it is)"
                    )
                    rejected.append((event, reason))
                    continue
                event = event._replace(context=info.to_context())
            out.append(event)
        return out, rejected

    # -- apply ------------------------------------------------------------------------------
    def apply(self, conn: store.Conn, chain_id: int, batch: store.Batch) -> None:
        try:
            pending = _load_pending(conn, chain_id)
            contracts = store.load_registrations(conn, chain_id)
            work = self._plan(conn, chain_id, batch, pending, contracts)
            _write_pass(conn, chain_id, work)
        except BaseException:
            self.forget(links=False)  # the pass noted its shares first
            raise
        if pending:
            pending_positions = {e.position for e in pending}
            _mark_applied(conn, chain_id, [p for p in work.applied if p in pending_positions])

    def plan_ahead(
        self,
        reader: store.Conn,
        chain_id: int,
        batch: store.Batch,
        registrations: dict[str, store.Registration],
    ) -> Callable[[store.Conn], None] | None:
        """The pass of ``batch`` computed now, on ``reader``, while the previous batch is still
        being written; returns its write (run later in the batch's own transaction), or None
        when the batch must be applied the usual way.

        Valid only because of what the pass reads: backend rows (``masters`` ids, tiers) that
        the previous batch does not write, mint counts that the cache holds for every master
        the previous batch minted, and pending events — so it declines unless the previous
        pass left nothing pending (then neither committed nor in-flight batches hold a pending
        event) and the batch has no coin event (it needs :meth:`enrich`, and is applied in
        place, reading ``artist_coins``).
        ``registrations``: every registration up to this batch, in-flight ones included.
        The caller discards the result, and calls :meth:`forget`, when it does not write it.
        """
        if not self._nothing_pending or any(e.event_type == _COIN for e in batch.events):
            return None
        try:
            contracts = dict(registrations)
            work = self._plan(reader, chain_id, batch, [], contracts)
        except BaseException:
            self.forget(links=False)  # the pass noted its shares first
            raise
        return lambda conn: _write_pass(conn, chain_id, work)

    def _plan(
        self,
        conn: store.Conn,
        chain_id: int,
        batch: store.Batch,
        pending: list[_Event],
        contracts: dict[str, store.Registration],
    ) -> _Pass:
        """The pass over ``pending`` then ``batch.events`` (reads on ``conn``; coins are applied
        in place): fills ``batch.applied`` / ``batch.effects`` with the batch's own events."""
        contracts.update((r.address, r) for r in batch.registrations)
        new: list[_AnyEvent] = list(batch.events)
        work = self._pass(
            conn,
            chain_id,
            [*pending, *new],
            contracts,
            effects=batch.effects is not None,
            before_images=not batch.final,
        )
        pending_positions = {e.position for e in pending}
        own = [p for p in work.applied if p not in pending_positions]
        batch.applied.update(own)
        if batch.effects is not None and work.effects:
            batch.effects.update(
                (p, effect) for p, effect in work.effects.items() if p not in pending_positions
            )
        self._nothing_pending = len(work.applied) == len(pending) + len(batch.events)
        return work

    def reconcile(self, conn: store.Conn, chain_id: int, *, before_images: bool = True) -> int:
        """Apply the pending events whose rows now exist, re-tier the shares of masters whose
        IPO configuration changed, and re-link owners (``before_images``: keep the shares'
        before-images, see :func:`_keep_share_images`)."""
        try:
            pending = _load_pending(conn, chain_id)
            applied: list[tuple[int, int]] = []
            if pending:
                contracts = store.load_registrations(conn, chain_id)
                work = self._pass(conn, chain_id, pending, contracts, before_images=before_images)
                _write_pass(conn, chain_id, work)
                applied = work.applied
                _mark_applied(conn, chain_id, applied)
            self._retier(conn, chain_id)
            self._relink(conn)
        except BaseException:
            self.forget()  # the re-link may have cleared what it covered before a failed commit
            raise
        return len(applied)

    def _relink(self, conn: store.Conn) -> None:
        """:func:`relink_owners` on the shares whose owner may have changed since the last
        re-link, in the reconcile's transaction:

        * the shares held by a wallet whose users changed — the triggers on ``users`` note it
          in ``indexer_wallet_changes`` (migration ``0006``), taken here;
        * the shares written since — linked at write time, to the users as they were then
          (a batch planned ahead read them earlier still);
        * every share when that is unknown: at start, after :meth:`forget`, past
          :data:`_MAX_NOTED_SHARES` written shares or :data:`_MAX_WALLET_CHANGES` changed
          wallets, or after ``users`` was truncated.

        A poll costs O(changes + shares written), not O(users) or O(shares). The changes are
        taken before the shares are read, in the same transaction: a change this poll does not
        see is taken by the next one; one it takes is visible to its re-link. Whatever the
        order, the result is :func:`relink_owners` on every share."""
        wallets = _take_changes(conn, "indexer_wallet_changes", "wallet", _MAX_WALLET_CHANGES)
        written = self._written
        if not self._linked or written is None or wallets is None:
            started = monotonic()
            relink_owners(conn)
            log.info(
                "owners_relinked_all",
                reason="unknown_state" if not self._linked else "many_written" if written is None
                else "wallet_changes",  # users truncated, or too many changed
                elapsed=round(monotonic() - started, 3),
            )  # fmt: skip
        else:
            if wallets:
                relink_owners(conn, wallets=wallets)
            if written:
                relink_owners(conn, shares=written)
        self._linked = True
        self._written = set()

    def _retier(self, conn: store.Conn, chain_id: int) -> None:
        """:func:`retier_shares` of the masters whose ``ipo_configs`` row may have changed
        since their shares were tiered, by the configuration as it is now; their
        ``indexer_tier_configs`` digests are updated in the same transaction (a failed
        reconcile leaves both as they were).

        * Every master the triggers on ``ipo_configs`` noted since the last poll
          (``indexer_tier_changes``, migration ``0007``, taken here) — whatever its digest says:
          a configuration changed and changed back around a mint gave that mint another
          tier, and a change committed while this runs leaves its digest stored but its note
          for the next poll (both found by review).
        * Every registered master after a ``TRUNCATE ipo_configs`` or past
          :data:`_MAX_TIER_CHANGES` notes.
        * At start and after :meth:`forget`, also every master whose digest differs (a change
          made while the triggers were disabled).

        So a poll costs O(changes), and O(their history) when a configuration changed."""
        noted = _take_changes(conn, "indexer_tier_changes", "master_id", _MAX_TIER_CHANGES)
        changed: set[uuid.UUID] = set(noted or ())
        if noted is None:
            changed.update(
                row[0]
                for row in conn.execute(
                    "SELECT master_id FROM indexer_contracts WHERE chain_id = %s", (chain_id,)
                )
            )
        if not self._tiers_checked:
            changed.update(
                row[0]
                for row in conn.execute(
                    f"SELECT coalesce(c.master_id, s.master_id) FROM ({_TIER_DIGESTS}) c "
                    "FULL JOIN (SELECT master_id, digest FROM indexer_tier_configs "
                    "WHERE chain_id = %s) s ON s.master_id = c.master_id "
                    "WHERE c.digest IS DISTINCT FROM s.digest",
                    (chain_id,),
                )
            )
        self._tiers_checked = True
        if not changed:
            return
        masters = sorted(changed)
        shares = retier_shares(conn, chain_id, masters)
        conn.execute(
            "DELETE FROM indexer_tier_configs WHERE chain_id = %s AND master_id = ANY(%s)",
            (chain_id, masters),
        )
        conn.execute(
            f"INSERT INTO indexer_tier_configs (chain_id, master_id, digest) "
            f"SELECT %s, master_id, digest FROM ({_TIER_DIGESTS}) c WHERE master_id = ANY(%s)",
            (chain_id, masters),
        )
        if shares:
            log.info(
                "shares_retiered", masters=[str(m) for m in masters[:20]],
                masters_count=len(masters), shares=shares,
            )  # fmt: skip

    def _note_written(self, keys: Iterable[tuple[str, int]]) -> None:
        if self._written is not None:
            self._written.update(keys)
            if len(self._written) > _MAX_NOTED_SHARES:
                self._written = None  # the next re-link covers every share

    def _pass(
        self,
        conn: store.Conn,
        chain_id: int,
        events: Sequence[_AnyEvent],
        contracts: dict[str, store.Registration],
        *,
        effects: bool = False,
        before_images: bool = False,
    ) -> _Pass:
        """The pass over ``events`` (chain order): which apply (their rows exist) and the rows
        they give (written by :func:`_write_pass`), and, when ``effects``, what each did;
        ``before_images``: note where each share first changed (:attr:`_Pass.first_changes`).
        Reads on ``conn``; writes only for coin events (applied in place)."""
        if not events:
            return _Pass()
        master_of_contract = {a: str(r.master_id) for a, r in contracts.items()}
        owners = [
            master_of_contract.get(e.address) if e.event_type == _TRANSFER else _master_of(e)
            for e in events
        ]
        masters = {str(m) for m in _existing(conn, "masters", _uuids(owners))}
        work = _Pass(effects={} if effects else None, first_changes={} if before_images else None)
        tiers = self._prepare_mints(conn, events, owners, masters)
        blocked_masters: set[str] = set()
        for event, master in zip(events, owners, strict=True):
            kind = event.event_type
            if kind == _COIN:
                if _apply_coin(conn, chain_id, event):
                    work.applied.append(event.position)
                    if work.effects is not None:
                        work.effects[event.position] = {
                            "artist_id": str(event.args["artistId"]),
                            "coin_contract": str(event.args["contractAddress"]),
                        }
                continue
            if master is None or master not in masters or master in blocked_masters:
                if master is not None:
                    blocked_masters.add(master)  # later events of it wait too (order)
                continue
            if kind == _TRANSFER:
                self._transfer(conn, event, master, work, tiers)
            elif kind == _REGISTERED:
                work.registered.append((event, master))
                if work.effects is not None:
                    work.effects[event.position] = {
                        "master_id": master,
                        "contract_address": str(event.args["contractAddress"]),
                    }
            elif kind == _DIVIDEND:
                work.dividends.append(
                    (master, int(event.args["amount"]), event.address, event.block_number,
                     event.block_hash, event.block_time, event.tx_hash, event.log_index)
                )  # fmt: skip
                if work.effects is not None:
                    work.effects[event.position] = {
                        "master_id": master,
                        "amount_wei": str(event.args["amount"]),
                    }
            work.applied.append((event.block_number, event.log_index))
        self._note_written(work.shares)
        return work

    def _prepare_mints(
        self,
        conn: store.Conn,
        events: Sequence[_AnyEvent],
        owners: Sequence[str | None],
        masters: set[str],
    ) -> dict[str, TierConfig]:
        """Read, in one query each, what the mints of this pass need: the applied-mint counts
        of masters not in the cache yet and the tier configuration of every minted master."""
        minted: set[str] = set()
        for event, master in zip(events, owners, strict=True):
            if (
                master is not None
                and master not in minted
                and master in masters
                and event.event_type == _TRANSFER
                and event.args["from"] == ZERO_ADDRESS
            ):
                minted.add(master)
        if not minted:
            return {}
        uncached = minted - self._mint_counts.keys()
        if uncached:
            counts = _applied_mint_counts(conn, _uuids(uncached))
            self._mint_counts.update((str(m), n) for m, n in counts.items())
        return {str(m): t for m, t in _tier_configs(conn, _uuids(minted)).items()}

    def _transfer(
        self,
        conn: store.Conn,
        event: _AnyEvent,
        master: str,
        work: _Pass,
        tiers: dict[str, TierConfig],
    ) -> None:
        token = int(event.args["tokenId"])
        sender, receiver = event.args["from"], event.args["to"]
        share = work.shares.get((master, token))
        if share is None:
            share = work.shares[(master, token)] = _Share()
            if work.first_changes is not None:
                work.first_changes[(master, token)] = event.position
        owner = None if receiver == ZERO_ADDRESS else receiver
        if sender == ZERO_ADDRESS:
            if master not in self._mint_counts:
                self._mint_counts[master] = _applied_mints(conn, uuid.UUID(master))
            ordinal = self._mint_counts[master] = self._mint_counts[master] + 1
            if master not in tiers:
                tiers[master] = _tier_config(conn, uuid.UUID(master))
            tier, royalty = tiers[master].tier_of(ordinal)
            share.minted, share.tier, share.royalty = True, tier, royalty
            share.minted_at, share.owner, share.last_transfer = event.block_time, owner, None
        else:
            share.owner, share.last_transfer = owner, event.block_time
        if owner:
            work.wallets.add(owner)
        if work.effects is not None:
            effect = {"master_id": master, "token_id": str(token)}
            if sender == ZERO_ADDRESS:
                effect.update(
                    share="minted", tier=str(share.tier), royalty_percent=str(share.royalty)
                )
            else:
                effect["share"] = "transferred" if owner else "burned"
            work.effects[event.position] = effect

    # -- rollback ---------------------------------------------------------------------------
    def rollback(self, conn: store.Conn, chain_id: int, ancestor: int) -> None:
        """Undo the effects of the applied events above block ``ancestor`` (the caller's
        transaction, before the event log loses them).

        A share is put back from its before-image when the image was kept exactly where its
        first event above the ancestor is (the usual case inside the reorg window: cost in
        proportion to what the reorg took back); any other share — changed by a final batch,
        a rebuild, or a pass whose range the ancestor splits — is re-derived from the event
        log (:func:`recompute_shares`, cost in proportion to its master's history). Both give
        the share as a fresh index up to the ancestor would.

        The projector's caches are left as they are once this transaction commits (the engine
        calls :meth:`forget` when it does not), so the next batch and poll do not start from
        nothing — which cost O(all shares) for the owners' re-link and O(history) per master
        for its mint count after every reorg: the applied-mint counts less the mints taken
        back (counted here, from the window's events), and the shares written since the last
        re-link, to which the shares it puts back are added (their links come from their
        images or from the users as they are now, and a wallet change an earlier poll took may
        lie between the two: found by review), so the next re-link costs O(reorg), not
        O(all shares)."""
        self._nothing_pending = False
        taken_back = dict(
            conn.execute(
                "SELECT c.master_id::text, count(*) FROM indexer_events e JOIN indexer_contracts"
                " c ON c.chain_id = e.chain_id AND c.address = e.address WHERE e.chain_id = %s "
                "AND e.block_number > %s AND e.applied AND e.event_type = 'Transfer' "
                "AND e.args->>'from' = %s GROUP BY c.master_id",
                (chain_id, ancestor, ZERO_ADDRESS),
            ).fetchall()
        )
        touched = conn.execute(
            "SELECT DISTINCT ON (c.master_id, (e.args->>'tokenId')::numeric) c.master_id, "
            "(e.args->>'tokenId')::numeric, e.block_number, e.log_index FROM indexer_events e "
            "JOIN indexer_contracts c ON c.chain_id = e.chain_id AND c.address = e.address "
            "WHERE e.chain_id = %s AND e.block_number > %s AND e.event_type = 'Transfer' "
            "AND e.applied ORDER BY c.master_id, (e.args->>'tokenId')::numeric, "
            "e.block_number, e.log_index",
            (chain_id, ancestor),
        ).fetchall()
        images = _share_images(conn, chain_id, ancestor)
        conn.execute(
            "DELETE FROM dividend_events d USING indexer_events e WHERE e.chain_id = %s "
            "AND e.block_number > %s AND e.event_type = 'DividendDeposited' "
            "AND d.tx_hash = e.tx_hash AND d.log_index = e.log_index",
            (chain_id, ancestor),
        )
        restore_snapshots(conn, chain_id, above=ancestor)
        _reclaim_coin_addresses(conn, chain_id, ancestor)
        exact: list[_ShareImage] = []
        derived: list[tuple[uuid.UUID, int]] = []
        for master, token, block, log_index in touched:
            share = (master, int(token))
            image = images.get(share)
            if image is not None and image[0] == (block, log_index):
                exact.append(image[1])
            else:
                derived.append(share)
        _restore_shares(conn, exact)
        recompute_shares(conn, chain_id, derived, up_to=ancestor)
        self._mint_counts = {m: n - taken_back.get(m, 0) for m, n in self._mint_counts.items()}
        # Linked from their images or to the users as they are now; a wallet change taken by
        # an earlier poll may lie between the two: the next re-link covers them.
        self._note_written((str(master), int(token)) for master, token, _, _ in touched)


# ------------------------------------------------------------------------------- helpers
def _master_of(event: _AnyEvent) -> str | None:
    """The id text of the master (see :class:`_Pass`) of an event other than a transfer (whose
    master is its contract's); None for a coin."""
    if event.event_type == _COIN:
        return None
    return str(uuid.UUID(event.args["masterId"]))


def _uuids(texts: Iterable[str | None]) -> set[uuid.UUID]:
    return {uuid.UUID(t) for t in set(texts) if t is not None}


def _existing(conn: store.Conn, table: str, ids: Iterable[uuid.UUID | None]) -> set[uuid.UUID]:
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return set()
    rows = conn.execute(f"SELECT id FROM {table} WHERE id = ANY(%s)", (wanted,)).fetchall()
    return {r[0] for r in rows}


def _load_pending(conn: store.Conn, chain_id: int) -> list[_Event]:
    rows = conn.execute(
        "SELECT block_number, log_index, block_time, block_hash, tx_hash, address, event_type, "
        "args, context FROM indexer_events WHERE chain_id = %s AND NOT applied "
        "ORDER BY block_number, log_index",
        (chain_id,),
    ).fetchall()
    return [_Event(*row) for row in rows]


def _mark_applied(conn: store.Conn, chain_id: int, positions: Sequence[tuple[int, int]]) -> None:
    if not positions:
        return
    conn.execute(
        "UPDATE indexer_events e SET applied = true FROM unnest(%s::bigint[], %s::int[]) "
        "AS p(block_number, log_index) WHERE e.chain_id = %s "
        "AND e.block_number = p.block_number AND e.log_index = p.log_index",
        ([p[0] for p in positions], [p[1] for p in positions], chain_id),
    )


def pending_count(conn: store.Conn, chain_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM indexer_events WHERE chain_id = %s AND NOT applied", (chain_id,)
    ).fetchone()
    return int(row[0]) if row else 0


def _applied_mints(
    conn: store.Conn, master: uuid.UUID, up_to: tuple[int, int] | None = None
) -> int:
    """Accepted, applied mints of ``master`` (up to and including ``up_to``, if given)."""
    sql = (
        "SELECT count(*) FROM indexer_events e JOIN indexer_contracts c "
        "ON c.chain_id = e.chain_id AND c.address = e.address "
        "WHERE c.master_id = %s AND e.applied AND e.event_type = 'Transfer' "
        "AND e.args->>'from' = %s"
    )
    params: list[Any] = [master, ZERO_ADDRESS]
    if up_to is not None:
        sql += " AND (e.block_number, e.log_index) <= (%s, %s)"
        params += list(up_to)
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def _applied_mint_counts(conn: store.Conn, masters: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    """:func:`_applied_mints` of several masters in one query (0 where there is none)."""
    wanted = list(masters)
    counts = dict.fromkeys(wanted, 0)
    # Each contract's events through its (chain, address, block) index (OFFSET 0 keeps the
    # planner on it whatever the table statistics say).
    rows = conn.execute(
        "SELECT c.master_id, count(*) FROM indexer_contracts c CROSS JOIN LATERAL ("
        "  SELECT e.applied, e.event_type, e.args->>'from' AS sender FROM indexer_events e"
        "  WHERE e.chain_id = c.chain_id AND e.address = c.address OFFSET 0) e "
        "WHERE c.master_id = ANY(%s) AND e.applied AND e.event_type = 'Transfer' "
        "AND e.sender = %s GROUP BY c.master_id",
        (wanted, ZERO_ADDRESS),
    ).fetchall()
    counts.update((r[0], int(r[1])) for r in rows)
    return counts


_TIER_COLUMNS = (
    "tier1_count, tier2_count, tier3_count, tier1_royalty, tier2_royalty, tier3_royalty, "
    "tier4_royalty"
)


_TIER_DIGESTS = f"SELECT master_id, md5(row({_TIER_COLUMNS})::text) AS digest FROM ipo_configs"
"""Each master's ``ipo_configs`` tiers, digested (see :meth:`AudifiProjector._retier`)."""


def _tier_configs(conn: store.Conn, masters: Iterable[uuid.UUID]) -> dict[uuid.UUID, TierConfig]:
    """:func:`_tier_config` of several masters in one query."""
    wanted = list(masters)
    rows = conn.execute(
        f"SELECT master_id, {_TIER_COLUMNS} FROM ipo_configs WHERE master_id = ANY(%s)",
        (wanted,),
    ).fetchall()
    found = {r[0]: _tiers_from_row(r[1:]) for r in rows}
    return {m: found.get(m, DEFAULT_TIERS) for m in wanted}


def _tier_config(conn: store.Conn, master: uuid.UUID) -> TierConfig:
    row = conn.execute(
        f"SELECT {_TIER_COLUMNS} FROM ipo_configs WHERE master_id = %s", (master,)
    ).fetchone()
    return _tiers_from_row(row)


def _tiers_from_row(row: Sequence[Any] | None) -> TierConfig:
    if row is None:
        return DEFAULT_TIERS
    d = DEFAULT_TIERS
    return TierConfig(
        tier1_count=d.tier1_count if row[0] is None else int(row[0]),
        tier2_count=d.tier2_count if row[1] is None else int(row[1]),
        tier3_count=d.tier3_count if row[2] is None else int(row[2]),
        royalties=tuple(  # type: ignore[arg-type]
            d.royalties[i] if row[3 + i] is None else Decimal(row[3 + i]) for i in range(4)
        ),
    )


def _user_ids(conn: store.Conn, wallets: Iterable[str]) -> dict[str, uuid.UUID]:
    wanted = sorted(set(wallets))
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT DISTINCT ON (lower(wallet_address)) lower(wallet_address), id FROM users "
        "WHERE lower(wallet_address) = ANY(%s) ORDER BY lower(wallet_address), created_at, id",
        (wanted,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


_ON_SHARE_CONFLICT = (
    "ON CONFLICT (master_id, token_id) DO UPDATE SET owner_id = EXCLUDED.owner_id, "
    "owner_wallet = EXCLUDED.owner_wallet, tier = EXCLUDED.tier, "
    "royalty_percent = EXCLUDED.royalty_percent, minted_at = EXCLUDED.minted_at, "
    "last_transfer = EXCLUDED.last_transfer"
)
_UPSERT_SHARE = (
    "INSERT INTO nft_shares (master_id, token_id, owner_id, owner_wallet, tier, royalty_percent,"
    " minted_at, last_transfer) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) " + _ON_SHARE_CONFLICT
)
# Emptied at the end of every transaction; created once per session (IF NOT EXISTS).
_SHARE_TEMP_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS indexer_tmp_minted (id uuid, master_id uuid, "
    "token_id numeric, owner_id uuid, owner_wallet text, tier int, royalty_percent numeric, "
    "minted_at timestamptz, last_transfer timestamptz) ON COMMIT DELETE ROWS; "
    "CREATE TEMP TABLE IF NOT EXISTS indexer_tmp_moved (owner_id uuid, owner_wallet text, "
    "last_transfer timestamptz, master_id uuid, token_id numeric) ON COMMIT DELETE ROWS"
)


def _write_pass(conn: store.Conn, chain_id: int, work: _Pass) -> None:
    """Write what a pass gives: registered contract addresses (each after its before-image),
    then shares and dividends, their foreign keys (to ``masters``, ``users``) checked once for
    the pass (:mod:`indexer.foreign_keys`). Touches no projector state (it may run in
    another thread than the pass)."""
    for event, master in work.registered:
        _snapshot(conn, chain_id, event, "masters", uuid.UUID(master))
        conn.execute(
            "UPDATE masters SET contract_address = %s WHERE id = %s",
            (event.args["contractAddress"], uuid.UUID(master)),
        )
    if not work.shares and not work.dividends:
        return
    users = _user_ids(conn, work.wallets) if work.shares else {}
    references = {
        "masters": _uuids({master for master, _ in work.shares} | {r[0] for r in work.dividends}),
        "users": set(users.values()),
    }
    with foreign_keys.checked_per_batch(conn, KEYS_CHECKED_PER_BATCH, references):
        _write_shares(conn, chain_id, work, {wallet: str(user) for wallet, user in users.items()})
        if work.dividends:
            with conn.cursor().copy(
                f"COPY dividend_events ({_DIVIDEND_COLUMNS}) FROM STDIN {store.COPY_NULL_EMPTY}"
            ) as copy:
                _copy_rows(copy, work.dividends, _dividend_line)


_MINTED_COLUMNS = (
    "id, master_id, token_id, tier, royalty_percent, minted_at, owner_id, owner_wallet, "
    "last_transfer"
)
_MOVED_COLUMNS = "master_id, token_id, owner_id, owner_wallet, last_transfer"
_DIVIDEND_COLUMNS = (
    "master_id, amount, contract_address, block_number, block_hash, block_time, tx_hash, log_index"
)


def _write_shares(conn: store.Conn, chain_id: int, work: _Pass, users: dict[str, str]) -> None:
    """Insert the minted and update the moved shares of the pass (``users``: wallet → id)."""
    if not work.shares:
        return
    minted, moved = _share_rows(work, users)
    if work.first_changes:
        _keep_share_images(conn, chain_id, work.first_changes, minted)
    # Set-based (a (master, token) key appears once per pass, so each row is touched once):
    # new shares by one COPY straight into nft_shares, or — when one of them already has a row
    # — through a session temp table and one upsert; moved shares through a temp table and
    # one UPDATE.
    conn.execute(_SHARE_TEMP_TABLES)
    cur = conn.cursor()
    if minted and not _copy_new_shares(conn, minted):
        with cur.copy(
            f"COPY indexer_tmp_minted ({_MINTED_COLUMNS}) FROM STDIN {store.COPY_NULL_EMPTY}"
        ) as copy:
            _copy_rows(copy, minted, _minted_line)
        cur.execute(
            f"INSERT INTO nft_shares ({_MINTED_COLUMNS}) SELECT {_MINTED_COLUMNS} "
            "FROM indexer_tmp_minted " + _ON_SHARE_CONFLICT
        )
    if moved:
        with cur.copy(
            f"COPY indexer_tmp_moved ({_MOVED_COLUMNS}) FROM STDIN {store.COPY_NULL_EMPTY}"
        ) as copy:
            _copy_rows(copy, moved, _moved_line)
        # Through the (master_id, token_id) index, one probe per moved share. The planner
        # has no statistics on the temp table and, on tables of tens of thousands of shares,
        # hashed all of nft_shares for every batch instead (the benchmark's moved-share
        # updates took ~35 % longer that way; on a million shares it picks the index).
        cur.execute(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
            "UPDATE nft_shares s SET owner_id = m.owner_id, owner_wallet = m.owner_wallet, "
            "last_transfer = m.last_transfer FROM indexer_tmp_moved m "
            "WHERE s.master_id = m.master_id AND s.token_id = m.token_id; "
            "SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT"
        )


_Row = tuple[Any, ...]


def _keep_share_images(
    conn: store.Conn,
    chain_id: int,
    first_changes: dict[tuple[str, int], tuple[int, int]],
    minted: Sequence[_Row],
) -> None:
    """Keep, in ``indexer_snapshots``, the before-image of each share the pass changes, at the
    position of its first event in the pass (NULL for a share that has no row yet, under the
    id it gets). A rollback to below that position restores the share from it
    (:func:`_restore_shares`) instead of re-deriving it from the master's whole history.

    Each share is looked up through the (master, token) index (a LATERAL subquery with a
    LIMIT is not pulled up into a join the planner could hash): a batch of thousands of
    shares — catching up inside the window — otherwise got a hash join over the whole of
    ``nft_shares``, spilling to disk (3,651 shares of 76,000: 160-185 ms, now 85-120 ms;
    the gap grows with the table)."""
    new_ids = {(row[1], row[2]): row[0] for row in minted}
    keys = list(first_changes)
    conn.execute(
        "INSERT INTO indexer_snapshots (chain_id, block_number, log_index, table_name, row_id, "
        "before) SELECT %s, p.block, p.log_index, 'nft_shares', coalesce(s.id, p.new_id), "
        "s.image FROM unnest(%s::uuid[], %s::numeric[], %s::bigint[], %s::int[], %s::uuid[]) "
        "AS p(m, t, block, log_index, new_id) LEFT JOIN LATERAL (SELECT x.id, to_jsonb(x) AS "
        "image FROM nft_shares x WHERE x.master_id = p.m AND x.token_id = p.t LIMIT 1) s ON true "
        "WHERE coalesce(s.id, p.new_id) IS NOT NULL",
        (
            chain_id,
            [uuid.UUID(m) for m, _ in keys],
            [t for _, t in keys],
            [first_changes[k][0] for k in keys],
            [first_changes[k][1] for k in keys],
            [new_ids.get(k) for k in keys],
        ),
    )


def _copy_new_shares(conn: store.Conn, minted: Sequence[_Row]) -> bool:
    """COPY the minted shares straight into ``nft_shares``, in a savepoint; False (and
    nothing written) when one of them already has a row — a token minted again after a burn
    —, and the caller then stages and upserts them. Straight in costs PostgreSQL about a
    quarter less than staging + ``INSERT … ON CONFLICT`` (0.45 vs 0.60 s of CPU per 76,000
    shares, measured alone), and re-mints are rare."""
    try:
        with (
            conn.transaction(),
            conn.cursor().copy(
                f"COPY nft_shares ({_MINTED_COLUMNS}) FROM STDIN {store.COPY_NULL_EMPTY}"
            ) as copy,
        ):
            _copy_rows(copy, minted, _minted_line)
    except psycopg.errors.UniqueViolation:
        return False
    return True


def _share_rows(work: _Pass, users: dict[str, str]) -> tuple[list[_Row], list[_Row]]:
    """Values of the minted (:data:`_MINTED_COLUMNS`; a new time-ordered id each) and of the
    moved shares (:data:`_MOVED_COLUMNS`) of a pass."""
    minted: list[_Row] = []
    moved: list[_Row] = []
    new_ids = iter(ordered_uuids(sum(1 for s in work.shares.values() if s.minted)))
    for (master, token), s in work.shares.items():
        owner_id = users.get(s.owner) if s.owner else None
        if s.minted:
            minted.append((next(new_ids), master, token, s.tier, s.royalty, s.minted_at,
                           owner_id, s.owner, s.last_transfer))  # fmt: skip
        else:
            moved.append((master, token, owner_id, s.owner, s.last_transfer))
    return minted, moved


_Times = dict[dt.datetime | None, str]


def _copy_rows(copy: Any, rows: Sequence[_Row], line: Callable[[_Row, _Times], str]) -> None:
    """COPY ``rows`` rendered by ``line`` (plain; times rendered once each through the cache
    it is given), checked by :func:`indexer.store.write_copy_lines`."""
    times: _Times = {None: ""}
    columns = len(rows[0]) if rows else 0
    store.write_copy_lines(
        copy,
        (line(row, times) for row in rows),
        columns,
        lambda i: store.escaped_line(rows[i]),
    )


def _time(value: dt.datetime | None, times: _Times) -> str:
    text = times.get(value)
    if text is None and value is not None:
        text = times[value] = value.isoformat()
    return text or ""


def _minted_line(row: _Row, times: _Times) -> str:
    share_id, master, token, tier, royalty, minted_at, owner_id, owner, last = row
    return (
        f"{share_id}\t{master}\t{token}\t{tier}\t{royalty}\t{_time(minted_at, times)}\t"
        f"{owner_id or ''}\t{owner or ''}\t{_time(last, times)}\n"
    )


def _moved_line(row: _Row, times: _Times) -> str:
    master, token, owner_id, owner, last = row
    return f"{master}\t{token}\t{owner_id or ''}\t{owner or ''}\t{_time(last, times)}\n"


def _dividend_line(row: _Row, times: _Times) -> str:
    master, amount, address, block, block_hash, time, tx_hash, log_index = row
    return (
        f"{master}\t{amount}\t{address}\t{block}\t{block_hash}\t{_time(time, times)}\t"
        f"{tx_hash}\t{log_index}\n"
    )


_MAX_NOTED_SHARES = 10_000
"""Beyond this many shares written between two polls (a backfill), re-link them all."""


_MAX_WALLET_CHANGES = 10_000
"""Beyond this many changed wallets taken at once, re-link every share."""


_MAX_TIER_CHANGES = 10_000
"""Beyond this many changed masters taken at once, compare every master's tiers."""


def _take_changes(conn: store.Conn, table: str, column: str, limit: int) -> set[Any] | None:
    """Take (delete) what the triggers noted in ``table`` (``indexer_wallet_changes``,
    ``indexer_tier_changes``); None: all of it may have changed (a ``TRUNCATE`` noted NULL,
    or more than ``limit`` were noted)."""
    noted: set[Any] = set()
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {table} RETURNING {column}")
        for (value,) in cur:
            if value is None:
                return None
            noted.add(value)
    return None if len(noted) > limit else noted


def relink_owners(
    conn: store.Conn,
    shares: Iterable[tuple[uuid.UUID | str, int]] | None = None,
    wallets: Iterable[str] | None = None,
) -> None:
    """``owner_id`` := the user whose wallet matches ``owner_wallet`` (case-insensitively; the
    first created where several do, NULL where none does); on every share, or only on
    ``shares`` ((master, token id) keys), or only on the shares held by ``wallets``
    (lowercase).

    Scoped, one statement reads only the shares concerned (through the (master, token) or the
    wallet index) and, for each, the users of its wallet (through the index on
    ``lower(wallet_address)``): its cost does not grow with ``users`` or ``nft_shares``, and
    its plan does not depend on their statistics (a plan led by ``owner_id IS NOT NULL``
    walked every linked share when the statistics predated a large re-link)."""
    if shares is None and wallets is None:
        conn.execute(
            "UPDATE nft_shares s SET owner_id = u.id FROM ("
            "  SELECT DISTINCT ON (lower(wallet_address)) lower(wallet_address) AS wallet, id"
            "  FROM users WHERE wallet_address IS NOT NULL"
            "  ORDER BY lower(wallet_address), created_at, id) u "
            "WHERE s.owner_wallet = u.wallet AND s.owner_id IS DISTINCT FROM u.id"
        )
        conn.execute(
            "UPDATE nft_shares s SET owner_id = NULL WHERE s.owner_id IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM users u WHERE u.id = s.owner_id "
            "AND lower(u.wallet_address) = s.owner_wallet)"
        )
        return
    params: dict[str, Any]
    if shares is not None:
        keys = list(shares)
        params = {"masters": [k[0] for k in keys], "tokens": [k[1] for k in keys]}
        concerned = (
            "JOIN unnest(%(masters)s::uuid[], %(tokens)s::numeric[]) k(master_id, token_id) "
            "ON c.master_id = k.master_id AND c.token_id = k.token_id"
        )
    else:
        params = {"wallets": sorted(set(wallets or ()))}
        concerned = "JOIN unnest(%(wallets)s::text[]) w(wallet) ON c.owner_wallet = w.wallet"
    conn.execute(
        "UPDATE nft_shares s SET owner_id = n.owner FROM ("
        "  SELECT c.master_id, c.token_id, (SELECT u.id FROM users u"
        "    WHERE lower(u.wallet_address) = c.owner_wallet"
        "    ORDER BY u.created_at, u.id LIMIT 1) AS owner"
        "  FROM nft_shares c " + concerned + ") n "
        "WHERE s.master_id = n.master_id AND s.token_id = n.token_id "
        "AND s.owner_id IS DISTINCT FROM n.owner",
        params,
    )


# ----------------------------------------------------------------------- coins & snapshots
def _snapshot(
    conn: store.Conn, chain_id: int, event: _AnyEvent, table: str, row_id: uuid.UUID | None
) -> None:
    """Keep the before-image of a backend row (NULL ``before``: the row is created now)."""
    if row_id is None:
        return
    conn.execute(
        f"INSERT INTO indexer_snapshots (chain_id, block_number, log_index, table_name, row_id, "
        f"before) SELECT %s, %s, %s, %s, %s, (SELECT to_jsonb(t) FROM {table} t WHERE t.id = %s)",
        (chain_id, event.block_number, event.log_index, table, row_id, row_id),
    )


def _apply_coin(conn: store.Conn, chain_id: int, event: _AnyEvent) -> bool:
    """Apply an ``ArtistCoinDeployed``; False when it must wait (no coin row, no artist)."""
    artist = uuid.UUID(event.args["artistId"])
    coin = (event.context or {}).get("coin") or {}
    address = event.args["contractAddress"]
    row = conn.execute("SELECT id FROM artist_coins WHERE artist_id = %s", (artist,)).fetchone()
    if row is None and not _existing(conn, "users", [artist]):
        return False
    # Without the address, as if a later announcement had taken it already.
    takes = _take_coin_address(conn, chain_id, event, address, row[0] if row else None)
    values = (
        address if takes else None,
        event.block_time if takes else None,
        coin.get("name", ""),
        coin.get("symbol", ""),
        _stored_supply(coin),
    )
    if row is not None:
        _snapshot(conn, chain_id, event, "artist_coins", row[0])
        conn.execute(
            "UPDATE artist_coins SET contract_address = %s, deployed_at = %s, name = %s, "
            "symbol = %s, total_supply = %s WHERE id = %s",
            (*values, row[0]),
        )
        return True
    created = conn.execute(
        "INSERT INTO artist_coins (artist_id, contract_address, deployed_at, name, symbol, "
        "total_supply) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (artist, *values),
    ).fetchone()
    assert created is not None
    conn.execute(
        "INSERT INTO indexer_snapshots (chain_id, block_number, log_index, table_name, row_id, "
        "before) VALUES (%s, %s, %s, 'artist_coins', %s, NULL)",
        (chain_id, event.block_number, event.log_index, created[0]),
    )
    return True


def _stored_supply(coin: dict[str, Any]) -> str:
    """The supply an applied coin event stores. Events are only applied when it fits
    (:meth:`AudifiProjector.enrich`); an event kept by an earlier version, whose context
    holds a supply the column cannot hold, stores 0 rather than stopping every retry."""
    return storable_supply(str(coin.get("totalSupply", "0"))) or "0"


def _take_coin_address(
    conn: store.Conn, chain_id: int, event: _AnyEvent, address: str, keep: uuid.UUID | None
) -> bool:
    """May ``event`` set ``address`` on its artist's coin row (``keep``)? The address is
    unique, and the trusted factory may announce one contract twice: the announcement latest
    in chain order holds it (the chain wins, SPEC §8), whatever order they are applied in (an
    event waiting for its artist is applied late). So another row holding ``address`` gives it
    up (before-image kept: a reorg of this event gives it back) unless an applied announcement
    later in chain order gave it; then this event's row gets no address. Without this the
    unique key would fail the step on every retry and stop indexing."""
    later = conn.execute(
        "SELECT 1 FROM indexer_events WHERE chain_id = %s AND address = %s "
        "AND event_type = 'ArtistCoinDeployed' AND applied AND args->>'contractAddress' = %s "
        "AND (block_number, log_index) > (%s, %s) LIMIT 1",
        (chain_id, event.address, address, event.block_number, event.log_index),
    ).fetchone()
    if later is not None:  # even when that row has moved on to another address since
        return False
    holder = conn.execute(
        "SELECT id FROM artist_coins WHERE contract_address = %s AND id IS DISTINCT FROM %s",
        (address, keep),
    ).fetchone()
    if holder is None:
        return True
    _snapshot(conn, chain_id, event, "artist_coins", holder[0])
    conn.execute(
        "UPDATE artist_coins SET contract_address = NULL, deployed_at = NULL WHERE id = %s",
        (holder[0],),
    )
    log.warning(
        "coin_address_moved",
        address=address,
        from_coin=str(holder[0]),
        block=event.block_number,
        log_index=event.log_index,
    )
    return True


def _reclaim_coin_addresses(conn: store.Conn, chain_id: int, ancestor: int) -> None:
    """After the before-images above ``ancestor`` are restored: a contract address that a
    rolled-back announcement held goes to the latest announcement of it that stays (at or
    below ``ancestor``) — when that one was applied late and so got no address
    (:func:`_take_coin_address`), its row would otherwise keep none, unlike a fresh index.
    Only when that artist has no later announcement that stays and nobody holds the address."""
    addresses = conn.execute(
        "SELECT DISTINCT args->>'contractAddress' FROM indexer_events WHERE chain_id = %s "
        "AND block_number > %s AND event_type = 'ArtistCoinDeployed' AND applied",
        (chain_id, ancestor),
    ).fetchall()
    for (address,) in addresses:
        kept = conn.execute(
            "SELECT e.block_time, e.args->>'artistId', NOT EXISTS ("
            "  SELECT 1 FROM indexer_events n WHERE n.chain_id = e.chain_id "
            "  AND n.address = e.address AND n.event_type = 'ArtistCoinDeployed' AND n.applied "
            "  AND n.args->>'artistId' = e.args->>'artistId' AND n.block_number <= %s "
            "  AND (n.block_number, n.log_index) > (e.block_number, e.log_index)) "
            "FROM indexer_events e WHERE e.chain_id = %s AND e.block_number <= %s "
            "AND e.event_type = 'ArtistCoinDeployed' AND e.applied "
            "AND e.args->>'contractAddress' = %s "
            "ORDER BY e.block_number DESC, e.log_index DESC LIMIT 1",
            (ancestor, chain_id, ancestor, address),
        ).fetchone()
        if kept is None or not kept[2]:  # none stays, or its artist moved on to another coin
            continue
        deployed_at, artist, _ = kept
        conn.execute(
            "UPDATE artist_coins SET contract_address = %s, deployed_at = %s "
            "WHERE artist_id = %s AND contract_address IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM artist_coins WHERE contract_address = %s)",
            (address, deployed_at, uuid.UUID(artist), address),
        )


_ShareImage = tuple[uuid.UUID, str | None, str | None]
"""A share's row id, before-image (JSON text; None: the row did not exist) and its owner
wallet (None: none)."""


def _share_images(
    conn: store.Conn, chain_id: int, above: int
) -> dict[tuple[uuid.UUID, int], tuple[tuple[int, int], _ShareImage]]:
    """(master, token) → (position, image) of the earliest before-image kept above block
    ``above`` for each share that still has its row (see :func:`_keep_share_images`)."""
    rows = conn.execute(
        "SELECT DISTINCT ON (n.row_id) s.master_id, s.token_id, n.block_number, n.log_index, "
        "n.row_id, n.before::text, n.before->>'owner_wallet' FROM indexer_snapshots n "
        "JOIN nft_shares s ON s.id = n.row_id WHERE n.chain_id = %s "
        "AND n.table_name = 'nft_shares' AND n.block_number > %s "
        "ORDER BY n.row_id, n.block_number, n.log_index, n.id",
        (chain_id, above),
    ).fetchall()
    return {
        (m, int(t)): ((b, i), (row_id, before, wallet))
        for m, t, b, i, row_id, before, wallet in rows
    }


def _restore_shares(conn: store.Conn, images: Sequence[_ShareImage]) -> None:
    """Put shares back as their before-images hold them: a share created since is deleted;
    the others get their chain values back and the owner's user as ``users`` says now."""
    created = [row_id for row_id, before, _ in images if before is None]
    if created:
        conn.execute("DELETE FROM nft_shares WHERE id = ANY(%s)", (created,))
    kept = [image for image in images if image[1] is not None]
    if not kept:
        return
    users = _user_ids(conn, [wallet for _, _, wallet in kept if wallet])
    conn.cursor().executemany(
        "UPDATE nft_shares s SET owner_wallet = r.owner_wallet, owner_id = %s, tier = r.tier, "
        "royalty_percent = r.royalty_percent, minted_at = r.minted_at, "
        "last_transfer = r.last_transfer FROM jsonb_populate_record(NULL::nft_shares, %s) r "
        "WHERE s.id = %s",
        [
            (users.get(wallet) if wallet else None, before, row_id)
            for row_id, before, wallet in kept
        ],
    )


def restore_snapshots(conn: store.Conn, chain_id: int, above: int) -> None:
    """Undo, newest first, the backend-row changes of events above block ``above``, and drop
    every before-image kept above it (those of shares are read first by the rollback)."""
    # The image stays JSON text end to end (as the shares' do): parsed in Python, a NUMERIC
    # such as a coin's total_supply became a float and came back rounded (found by QA).
    rows = conn.execute(
        "SELECT table_name, row_id, before::text, before->>'contract_address' "
        "FROM indexer_snapshots WHERE chain_id = %s AND block_number > %s "
        "AND table_name <> 'nft_shares' ORDER BY block_number DESC, log_index DESC, id DESC",
        (chain_id, above),
    ).fetchall()
    for table, row_id, before, coin_address in rows:
        columns = MASTERS_RESTORED if table == "masters" else COINS_RESTORED
        if before is None:
            conn.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
            continue
        if table == "artist_coins" and coin_address:
            # Restored newest first, by position; an announcement applied late (it waited for
            # its artist) may have moved the address out of that order: whoever holds it now
            # gives it up, so the unique key cannot stop a rollback.
            conn.execute(
                "UPDATE artist_coins SET contract_address = NULL, deployed_at = NULL "
                "WHERE contract_address = %s AND id <> %s",
                (coin_address, row_id),
            )
        assignments = ", ".join(f"{c} = r.{c}" for c in columns)
        conn.execute(
            f"UPDATE {table} t SET {assignments} FROM jsonb_populate_record(NULL::{table}, "
            "%s::jsonb) r WHERE t.id = %s",
            (before, row_id),
        )
    conn.execute(
        "DELETE FROM indexer_snapshots WHERE chain_id = %s AND block_number > %s",
        (chain_id, above),
    )


def recompute_share(
    conn: store.Conn, chain_id: int, master: uuid.UUID, token: int, up_to: int
) -> None:
    """Re-derive one share from the applied events up to block ``up_to`` (after a reorg)."""
    rows = conn.execute(
        "SELECT e.block_number, e.log_index, e.block_time, e.args->>'from', e.args->>'to' "
        "FROM indexer_events e JOIN indexer_contracts c "
        "ON c.chain_id = e.chain_id AND c.address = e.address "
        "WHERE e.chain_id = %s AND c.master_id = %s AND e.event_type = 'Transfer' AND e.applied "
        "AND e.args->>'tokenId' = %s AND e.block_number <= %s "
        "ORDER BY e.block_number, e.log_index",
        (chain_id, master, str(token), up_to),
    ).fetchall()
    mints = [i for i, r in enumerate(rows) if r[3] == ZERO_ADDRESS]
    if not mints:
        conn.execute(
            "DELETE FROM nft_shares WHERE master_id = %s AND token_id = %s", (master, token)
        )
        return
    start = mints[-1]
    block, log_index, minted_at, _, receiver = rows[start]
    ordinal = _applied_mints(conn, master, up_to=(block, log_index))
    tier, royalty = _tier_config(conn, master).tier_of(ordinal)
    owner = None if receiver == ZERO_ADDRESS else receiver
    last_transfer = None
    for _, _, time, _, to in rows[start + 1 :]:
        owner = None if to == ZERO_ADDRESS else to
        last_transfer = time
    owner_id = _user_ids(conn, [owner]).get(owner) if owner else None
    conn.execute(
        _UPSERT_SHARE, (master, token, owner_id, owner, tier, royalty, minted_at, last_transfer)
    )


def recompute_shares(
    conn: store.Conn, chain_id: int, shares: Sequence[tuple[uuid.UUID, int]], up_to: int
) -> None:
    """:func:`recompute_share` of many shares at once, with the same result, in a fixed
    number of statements: one reads the histories of the shares together with the Mover
    Advantage ordinal of each mint (a window over the applied mints of their masters), one
    each the tier configurations and the owners' users, then one delete and one upsert."""
    if not shares:
        return
    wanted = sorted(set(shares), key=lambda s: (str(s[0]), s[1]))
    # Each contract's events are read once, through its (chain, address, block) index: the
    # MATERIALIZED steps and the OFFSET 0 fix that plan whatever the table statistics say.
    # Ordinals count the applied mints of the master on every chain, as _applied_mints does.
    rows = conn.execute(
        "WITH t AS MATERIALIZED ("
        "  SELECT * FROM unnest(%s::uuid[], %s::text[]) AS t(master_id, token)), "
        "ev AS MATERIALIZED ("
        "  SELECT c.chain_id, c.master_id, e.token, e.block_number, e.log_index, e.block_time,"
        "  e.sender, e.receiver FROM indexer_contracts c CROSS JOIN LATERAL ("
        "    SELECT e.args->>'tokenId' AS token, e.block_number, e.log_index, e.block_time,"
        "    e.args->>'from' AS sender, e.args->>'to' AS receiver, e.event_type, e.applied"
        "    FROM indexer_events e WHERE e.chain_id = c.chain_id AND e.address = c.address"
        "    AND e.block_number <= %s OFFSET 0) e"
        "  WHERE c.master_id IN (SELECT master_id FROM t)"
        "  AND e.event_type = 'Transfer' AND e.applied), "
        "k AS MATERIALIZED ("
        "  SELECT ev.*, count(*) FILTER (WHERE sender = %s) OVER ("
        "    PARTITION BY master_id ORDER BY block_number, log_index) AS k FROM ev) "
        "SELECT k.master_id, k.token, k.block_number, k.log_index, k.block_time, "
        "k.sender, k.receiver, k.k FROM k JOIN t "
        "ON t.master_id = k.master_id AND t.token = k.token "
        "WHERE k.chain_id = %s ORDER BY k.block_number, k.log_index",
        ([m for m, _ in wanted], [str(t) for _, t in wanted], up_to, ZERO_ADDRESS, chain_id),
    ).fetchall()
    history: dict[tuple[uuid.UUID, str], list[tuple[Any, ...]]] = {}
    for master, token, *rest in rows:
        history.setdefault((master, token), []).append(tuple(rest))
    gone: list[tuple[uuid.UUID, int]] = []
    states: dict[tuple[uuid.UUID, int], tuple[Any, ...]] = {}
    for master, token in wanted:
        events = history.get((master, str(token)), [])
        mints = [i for i, r in enumerate(events) if r[3] == ZERO_ADDRESS]
        if not mints:
            gone.append((master, token))
            continue
        start = mints[-1]
        _, _, minted_at, _, receiver, ordinal = events[start]
        owner = None if receiver == ZERO_ADDRESS else receiver
        last_transfer = None
        for _, _, time, _, to, _ in events[start + 1 :]:
            owner = None if to == ZERO_ADDRESS else to
            last_transfer = time
        states[(master, token)] = (int(ordinal), minted_at, owner, last_transfer)
    if gone:
        conn.execute(
            "DELETE FROM nft_shares s USING unnest(%s::uuid[], %s::numeric[]) AS g(m, t) "
            "WHERE s.master_id = g.m AND s.token_id = g.t",
            ([m for m, _ in gone], [t for _, t in gone]),
        )
    if not states:
        return
    tiers = _tier_configs(conn, {m for m, _ in states})
    users = _user_ids(conn, [s[2] for s in states.values() if s[2]])
    upserts = []
    for (master, token), (ordinal, minted_at, owner, last_transfer) in states.items():
        tier, royalty = tiers[master].tier_of(ordinal)
        owner_id = users.get(owner) if owner else None
        upserts.append((master, token, owner_id, owner, tier, royalty, minted_at, last_transfer))
    conn.cursor().executemany(_UPSERT_SHARE, upserts)


def retier_shares(conn: store.Conn, chain_id: int, masters: Sequence[uuid.UUID]) -> int:
    """Tier and royalty of every share of ``masters`` again, by their IPO configuration as it
    is now and each share's Mover Advantage ordinal (the k of its latest applied mint, counted
    as :func:`recompute_shares` counts) — what a fresh index gives. Only those two columns
    change. The shares' before-images are dropped: a rollback then re-derives them from the
    event log with this configuration instead of putting back a tier of the old one.
    Returns the number of shares whose tier or royalty changed."""
    rows = conn.execute(
        "WITH m AS MATERIALIZED ("
        "  SELECT c.chain_id, c.master_id, e.args->>'tokenId' AS token, e.block_number,"
        "  e.log_index FROM indexer_contracts c JOIN indexer_events e"
        "  ON e.chain_id = c.chain_id AND e.address = c.address"
        "  WHERE c.master_id = ANY(%s) AND e.event_type = 'Transfer' AND e.applied"
        "  AND e.args->>'from' = %s), "
        "k AS (SELECT m.*, row_number() OVER ("
        "  PARTITION BY master_id ORDER BY block_number, log_index) AS k FROM m) "
        "SELECT DISTINCT ON (master_id, token) master_id, token, k FROM k WHERE chain_id = %s "
        "ORDER BY master_id, token, block_number DESC, log_index DESC",
        (list(masters), ZERO_ADDRESS, chain_id),
    ).fetchall()
    conn.execute(
        "DELETE FROM indexer_snapshots n USING nft_shares s WHERE n.chain_id = %s "
        "AND n.table_name = 'nft_shares' AND n.row_id = s.id AND s.master_id = ANY(%s)",
        (chain_id, list(masters)),
    )
    if not rows:
        return 0
    tiers = _tier_configs(conn, masters)
    tiered = [(master, token, *tiers[master].tier_of(int(k))) for master, token, k in rows]
    updated = conn.execute(
        "UPDATE nft_shares s SET tier = u.tier, royalty_percent = u.royalty "
        "FROM unnest(%s::uuid[], %s::numeric[], %s::int[], %s::numeric[]) "
        "AS u(master_id, token_id, tier, royalty) "
        "WHERE s.master_id = u.master_id AND s.token_id = u.token_id "
        "AND (s.tier, s.royalty_percent) IS DISTINCT FROM (u.tier, u.royalty)",
        (
            [r[0] for r in tiered],
            [Decimal(r[1]) for r in tiered],
            [r[2] for r in tiered],
            [r[3] for r in tiered],
        ),
    )
    return updated.rowcount


def rebuild(conn: store.Conn, chain_id: int) -> int:
    """Re-derive every AudiFi table the indexer writes from the event log (caller's
    transaction). Backend rows get their own values back first, then every event is applied
    again in chain order. Returns the number of events applied."""
    restore_snapshots(conn, chain_id, above=-1)
    conn.execute(
        "DELETE FROM nft_shares WHERE master_id IN "
        "(SELECT master_id FROM indexer_contracts WHERE chain_id = %s)",
        (chain_id,),
    )
    conn.execute(
        "DELETE FROM dividend_events d USING indexer_events e WHERE e.chain_id = %s "
        "AND e.event_type = 'DividendDeposited' AND d.tx_hash = e.tx_hash "
        "AND d.log_index = e.log_index",
        (chain_id,),
    )
    conn.execute("UPDATE indexer_events SET applied = false WHERE chain_id = %s", (chain_id,))
    # every block is already in the event log: no before-images (a rollback into the window
    # recomputes the shares it touches from the log)
    return AudifiProjector().reconcile(conn, chain_id, before_images=False)
