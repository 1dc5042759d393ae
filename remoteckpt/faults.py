"""Named points of the save protocol where a test can kill the process.

``REMOTECKPT_CRASH_AT=<point>[:<n>]`` makes the n-th (default 1st) arrival at `point` in this
process SIGKILL itself: how the crash-consistency tests stop a worker or the coordinator in the
middle of a phase, exactly as a machine failure would.  Unset (always, in production), a check
is one dictionary lookup.

Points, in protocol order:  staged (tensors planned), mid-upload (half of the data written),
data-written (data committed, table not yet), table-written (before the coordinator's wait),
merged (tables merged, index not committed), committed (index committed, outcome not yet),
state-writing (before the state file is replaced), retention (before an old checkpoint is
deleted), deleting (index of the old checkpoint deleted, data not yet).
"""

from __future__ import annotations

import os
import signal

ENV = "REMOTECKPT_CRASH_AT"
POINTS = ("staged", "mid-upload", "data-written", "table-written", "merged", "committed",
          "state-writing", "retention", "deleting")

_arrivals: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here if the environment says so (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
