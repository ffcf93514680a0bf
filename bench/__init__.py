"""The AudiFi indexer benchmark (SPEC §7): ``python -m bench`` — see ``bench/README.md``.

Modules: :mod:`bench.chain` builds (and caches) the anvil chain, :mod:`bench.database` the
fresh PostgreSQL database, :mod:`bench.floor` and :mod:`bench.naive` the two reference
measurements, :mod:`bench.worker` runs the indexer's backfill in a process of its own
(:mod:`bench.backfill` drives it and samples its memory), :mod:`bench.live` the live path and
reorg recovery with the real daemon, :mod:`bench.report` writes ``bench/results/`` and
:mod:`bench.profile` summarises a py-spy profile; :mod:`bench.run` ties them together.
"""
