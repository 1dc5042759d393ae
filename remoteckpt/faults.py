"""Named points of the save protocol where a test can kill the process.

``REMOTECKPT_CRASH_AT=<point>[:<n>]`` makes the n-th (default 1st) arrival at `point` in this
process SIGKILL itself: how the crash-consistency tests stop a worker or the coordinator in the
middle of a phase, exactly as a machine failure would.  ``REMOTECKPT_STOP_AT`` (same syntax)
makes it SIGSTOP itself instead: a paused or partitioned process, which the test wakes later
(SIGCONT) to act as a "zombie".  Unset (always, in production), a check is one dictionary
lookup.

Points, in protocol order:  staged (tensors planned), mid-upload (half of the data written),
part-copied (incremental saves only, so not in `POINTS`: a range copied into the data file,
which is not committed; on S3 one copied part, on local disk one copy),
data-written (data committed, report not yet), table-written (a worker's report written; on
the coordinator, its own part written: before the wait),
merged (tables merged, index not committed), committing (inside the commit: the index's bytes
durable in a temp file, not yet linked, or renamed when overwriting, to their name; on S3, the
one PUT about to be sent),
committed (index committed, outcome not yet), state-writing (before the state file is
replaced), state-replacing (inside that write: the new state durable in a temp file, not yet
renamed over the old; on S3, its PUT about to be sent), retention (before an old checkpoint is
deleted), deleting (index of the old checkpoint deleted, data not yet).

A SavedModel export (`remoteckpt.tensorflow.export_saved_model`) passes export-numbered (its
version's number chosen, nothing written yet), the save's points for its variables, then
export-variables (variables committed, assets not yet), export-assets (assets written,
fingerprint not yet), export-fingerprint (fingerprint written, saved_model.pb not yet),
export-committing (inside that write, as committing), export-committed (the version complete,
older ones not yet retired), and retention before each older version is deleted.
`remoteckpt cp` of a SavedModel passes export-variables, export-fingerprint (the other files
written) and export-committing, in the same order.

The two "inside" points live in the stores' writers, which know nothing of indexes or state
files: the caller names what is being published with `within`, and a writer calls
`publishing` between making an object's bytes durable and giving them their name.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
from collections.abc import Iterator

ENV = "REMOTECKPT_CRASH_AT"
STOP_ENV = "REMOTECKPT_STOP_AT"
POINTS = ("staged", "mid-upload", "data-written", "table-written", "merged", "committing", "committed",
          "state-writing", "state-replacing", "retention", "deleting")
DRAIN_POINTS = ("draining", "mid-copy", "drained")
"""Points of a drain to the remote tier (`remoteckpt.tiers.drain`): before its save attempt
at the remote prefix begins, after the first chunk of a data file is copied (`remoteckpt cp`'s
copy: it is the drain's), and after the remote index is committed but before the local
tier's durable marker is written.  A drain's commit passes "committing" too (after the local
save's own: ``committing:2`` in a one-worker save).  With per-host tiers
(`remoteckpt.tiers.hosts`) every worker passes them, and "host-committed" between: the local
commit made, this worker's copy of the index on its tier, its drain not started."""
HOST_POINTS = ("host-committed",)
EXPORT_POINTS = ("export-numbered", "export-variables", "export-assets", "export-fingerprint", "export-committing",
                 "export-committed")
"""A SavedModel export's own points, after those of its variables' save (see above)."""

_arrivals: dict[tuple[str, str], int] = {}
_publishing: contextvars.ContextVar[str | None] = contextvars.ContextVar("remoteckpt_publishing", default=None)


def crash_point(name: str) -> None:
    """Die (or pause) here if the environment says so (see the module docstring)."""
    for variable, sig in ((ENV, signal.SIGKILL), (STOP_ENV, signal.SIGSTOP)):
        spec = os.environ.get(variable)
        if not spec:
            continue
        point, _, nth = spec.partition(":")
        if point != name:
            continue
        _arrivals[variable, name] = _arrivals.get((variable, name), 0) + 1
        if _arrivals[variable, name] == (int(nth) if nth else 1):
            os.kill(os.getpid(), sig)


@contextlib.contextmanager
def within(point: str) -> Iterator[None]:
    """Writers committed inside this block pass `point` when they publish (see `publishing`):
    in this task, and in tasks and `asyncio.to_thread` calls it starts (they copy the
    context; a plain `threading.Thread` or `run_in_executor` does not)."""
    token = _publishing.set(point)
    try:
        yield
    finally:
        _publishing.reset(token)


def publishing() -> None:
    """Called by a store's writer once the object's bytes are durable and before they get
    their name: the crash point named by the enclosing `within`, if any."""
    point = _publishing.get()
    if point is not None:
        crash_point(point)
