"""Tiered checkpoints: committed on a local tier (fast local disk) in seconds, drained to the
remote prefix (S3) in the background, restored from the nearest tier.  See docs/tiered.md.

    layout.py     the tier's directory: checkpoints, their records and durable markers
    save.py       a save with a local tier: local commit, then the drain started
    drain.py      the drain (a save attempt at the remote prefix, `remoteckpt cp`'s copy),
                  durability futures, `wait_durable`, resuming after a restart
    nearest.py    reading from the nearest tier, falling back to the remote one
    retention.py  the local tier's retention (keep K) and size cap
    state.py      the newest checkpoint complete on any tier; `gc` of the tier
    hosts.py      per-host tiers: the local commit through the remote store, every worker
                  draining its own data file
    resume.py     a restarted job's drains (each worker its own part on per-host tiers)
"""

from .layout import LocalTier

__all__ = ["LocalTier"]
