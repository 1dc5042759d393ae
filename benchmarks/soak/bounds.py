"""The soak's time bounds, each with its reason: how long work in flight may go on after a
phase's deadline; how long a phase's process, a unit of work or the S3 server may take before
it has hung or is killed; the margins that keep a run within
``minutes * 60 + grace + EXIT_SECONDS + TEARDOWN_SECONDS`` seconds, whatever hangs."""

from __future__ import annotations

GRACE_SECONDS = 15.0
"""Default for --grace: how long units in flight at a phase's deadline may go on.  A crash job
started just before it needs a few seconds per save, commit_timeout (4 s) after a kill and its
restore/gc checks; a network operation its retries.  Whatever still runs then is cut off."""
EXIT_SECONDS = 5.0
"""A phase's process saves its counts and exits at its cutoff, abandoning its (daemon) threads:
milliseconds.  One still running this long after has hung, and is killed."""
STACKS_SECONDS = 0.5
"""Time a hung phase process gets to dump its stacks (faulthandler, on SIGUSR1) before SIGKILL."""
STOP_SECONDS = 5.0
"""The embedded S3 server gets this long to stop on SIGTERM, then it is SIGKILLed."""
TEARDOWN_SECONDS = 10.0
"""After the last phase: stopping the S3 server (STOP_SECONDS at most), removing the scratch
directory, writing the report.  (Before the first: the embedded server's start, bounded by its
startup timeout, comes out of the phases' windows.)"""
MIN_WINDOW_SECONDS = 1.0
"""A phase squeezed to nothing by earlier phases' overruns still gets this long to start work:
each phase runs, if only briefly."""
PHASE_START_SECONDS = 2.0
"""A phase process's start (interpreter, numpy, remoteckpt, the harness: about 1 s on a loaded
2-core machine)."""
RESERVED_SECONDS = PHASE_START_SECONDS + MIN_WINDOW_SECONDS
"""Kept free before the hard end for each phase still to come: an earlier phase's units in
flight are cut off sooner rather than leave a later phase no time at all."""
WATCH_SECONDS = 0.5
"""How often a phase's process checks its units against their bounds and saves its counts
(the file its parent reads, also when it had to kill it)."""
POLL_SECONDS = 0.2
"""How often the parent checks whether the phase's process has ended."""
LIFE_JOB_SECONDS = 30.0
"""A lifecycle job's bound (tests/lifecycle_workers.py `Job.wait`): a rank still running this
long after its job started (a woken zombie: after it was woken) is a hang, reported with its
stack, and killed.  The longest legitimate job is a long save (a slow worker 3 to 6 leases of
at most 2 s late, then its save) or a woken zombie coordinator (its commit_timeout of 10 s
waiting for the acknowledgements of its dead workers): up to about 15 s on a loaded 2-core
machine."""
RESTART_SLACK_SECONDS = 5.0
"""A restart must commit within one lease and three eighths of a lease and this many seconds of
the dead attempt's last renewal (benchmarks/soak/lifecycle.py `restart_bound`): the last
renewal may come a quarter lease before the kill, the restarted coordinator watches the dead
claim for a lease (when it cannot take it over at once) with a HEAD every eighth of a lease;
these seconds are the restarted job's processes starting (a fork from the forkserver each) and
its save (up to 4 workers of 12 MiB each on S3) on a loaded 2-core machine."""
UNIT_BOUNDS = {"crash": 150.0, "network": 120.0, "race": 120.0, "corruption": 30.0, "fuzz": 30.0,
               "retry": 70.0, "restart": 80.0, "zombie": 110.0, "long": 100.0, "tiers": 300.0}
"""Seconds one unit of work may run before it is a hang (a tiers job, shared or per-host: its
workers' 120 s bound, the restart's 120 s, the checks of both tiers).  A crash job is a run of its workers
(the harness kills them at 60 s, or commit_timeout + 20 s after the kill), its checks, and
maybe a restarted run; a network operation is one save or one restore, each of whose requests
has 10 s to connect and 30 s without a byte, a few attempts; a race is its committers' 60 s
bound, 30 s for the winner's cleanup and a restore; one damaged checkpoint's reads and a batch
of 200 fuzz inputs take milliseconds (30 s: a loaded machine is no hang).  A lifecycle unit is
its jobs, each bounded by LIFE_JOB_SECONDS, one after another (retry: two; restart: the killed
job and its restart; zombie: the first job until its worker pauses, the restart, the woken
zombie; long: the long save, and the other job's tries while it runs, the last of which may
start just before it ends), and its checks (restores, listings, gc) of a few seconds.

A unit is judged hung only if its bound ends before its phase's cutoff; in a 10-minute run a race
(window ~55 s + grace) never can be, a network operation only in the window's first seconds.
Not lowered to fit: a race's committers alone may take 60 s (tests/reliability_workers.py
`run_committers`), after a 1 s start, then a restore and up to 30 s waiting for the losers'
cleanup; the network phase sets only the number of attempts (3 to 8), so each request keeps
url.py's 10 s to connect and 30 s without a byte, with botocore's backoff of up to 20 s between
attempts: one slow request retried once is a minute.  Such units show as cut off, with their
elapsed seconds (the record's schedule), not as hangs."""
INJECTED_HANG_BOUND = 1.0
"""The bound of a unit that --hang-unit makes hang (the test of the hang report need not wait
UNIT_BOUNDS out)."""
HANG_AT_UNIT = 2
"""--hang-unit hangs the phase's second unit: the first does real work, so the counts show the
phase ran before it hung."""
