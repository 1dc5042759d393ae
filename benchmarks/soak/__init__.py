"""``python -m benchmarks.soak [--minutes N] [--seed S] [--only PHASES] [--out DIR]``

The reliability suite of tests/test_crash.py, tests/test_network_faults.py, tests/test_lifecycle.py,
tests/test_corruption.py and tests/test_fuzz.py, at scale and hard-bounded in time (``make soak``):

  crash       jobs of 1, 2 or 4 worker processes saving with a Saver (local disk and an
              embedded SeaweedFS S3 server), each job with its own save id; one worker
              SIGKILLed at a named point or after a random delay; every checkpoint left restored
              and compared, latest_checkpoint checked, gc checked; a quarter of the jobs are then
              restarted from the latest checkpoint (as a training job would be) and must complete
  network     saves and restores through the fault-injecting proxy (503 SlowDown, cut
              requests and responses, dropped responses, latency), random rates and seeds:
              byte-exact or a remoteckpt error, never a hang, never an upload left behind
  race        2 or 3 jobs (1, 2 or 4 workers each, distinct save ids) saving one prefix at
              random moments: exactly one commits, whole; every worker of the others gets
              CheckpointExistsError / CheckpointBusyError; nothing but the winner's files left
  retry       a job of 2-4 workers whose save fails cleanly (an unsavable tensor) retries the step
              with the same save id: one error on every rank, then a commit at once, byte-exact,
              nothing but the checkpoint's files left
  restart     a job SIGKILLed mid-save (a named point, or a random time) restarted with the same
              save id, maybe from other "hosts": it commits within a lease (plus slack) of the dead
              attempt's last renewal and not before that lease ran out, byte-exact, without gc
  zombie      a worker paused (REMOTECKPT_STOP_AT, or SIGSTOP at a random time), its job killed and
              restarted, then woken once the restart committed: it ends with a remoteckpt error
              and changes no committed byte
  long        a save longer than several leases while another job keeps trying the prefix: never
              taken over, the other job busy, the long save commits
              (in all four, some ranks' wall clocks are hours off, both ways: the same outcomes)
  corruption  random bit flips, byte changes, truncations and swapped shards in a 2-shard
              checkpoint: each must raise CorruptCheckpointError when the tensor is read
              (detected / effective counted per kind of damage)
  fuzz        random mutations of valid indexes and state files through the decoders
  tiers       (only with --only tiers) jobs of 1, 2 or 4 workers saving through a local tier drained to
              S3, in turn sharing one tier (tests/tier_workers.py) and with a tier per host (1 worker,
              2 hosts of 1 or of 2, 4 hosts of 1; tests/host_tier_workers.py), one worker killed at
              a named point of a local commit or a drain: the remote prefix holds the previous
              checkpoint or the complete new one; a restarted job resumes the drains (per-host:
              or drops them, resume=False) and its next save drains; both tiers restore
              byte-exact, each host's tier holds its own workers' files only, gc leaves nothing

How the time bound holds: the phases run one after another, each in a process of its own (and
its own process group), in windows that share the run's minutes by weight; time a phase
overran is taken from the later ones (each of which keeps RESERVED_SECONDS).  A phase starts no
unit of work after its deadline; the units in flight get ``--grace`` seconds (GRACE_SECONDS),
never past the run's end + grace; then the phase's process saves its counts and exits without
waiting for them (its threads are daemon threads), and its process group is killed (crash
workers, racing committers, the fault proxy and its requests with it).  A phase's process still
running EXIT_SECONDS after its cutoff has hung: its stacks are dumped and it is killed.  So a
run ends within ``minutes * 60 + grace + EXIT_SECONDS + TEARDOWN_SECONDS`` seconds of its start
(60 x minutes + 30 by default), whatever hangs.  Hangs are violations ("no hang"), reported
with their stacks and reproduction parameters: a unit of work still running after its own bound
(UNIT_BOUNDS), and a phase's process that had to be killed.  A phase's process that died by
itself (a signal, an exit code: its fatal-signal stacks, its units in flight) is a violation too.
Units merely cut off at the cutoff are counted (``cut_off_<phase>``, their parameters and elapsed
seconds in the record's schedule), not violations.  SIGTERM/SIGHUP end the run through its
cleanup; a phase's process whose parent is gone kills its own process group.

Runs the test suite's own workers and helpers (tests/reliability_workers.py,
lifecycle_workers.py, faultproxy.py, test_corruption.py, test_fuzz.py): from the repository
root, with tests/ on the import path (``make soak`` runs ``PYTHONPATH=tests python -m
benchmarks.soak``).  Writes ``soak-<time>.json`` under --out (default bench-results/) and prints
a summary; exits 1 if any invariant was violated (silent corruption, a wrong byte, a hang, a
foreign exception, a leftover after gc, a restart that did not commit, a committed byte a
zombie changed...).  ``--seed`` makes the sequence of scenarios reproducible.
The package, by concept: driver (the run: phases' weights and windows, the S3 endpoint, the
command line, the record), phase_process (a phase's process, its entry point and the parent's
side of it), runtime (what runs inside a phase's process: counts, units of work, the overdue
check, snapshots, the test hooks), bounds (the time bounds, each with its reason), the phases
(crash: crash and race; network; lifecycle: retry, restart, zombie and long; damage: corruption
and fuzz), summary (the printed summary).
"""

from __future__ import annotations

from .bounds import EXIT_SECONDS, GRACE_SECONDS, TEARDOWN_SECONDS
from .damage import DAMAGE_KINDS
from .driver import PHASES, main

__all__ = ["DAMAGE_KINDS", "EXIT_SECONDS", "GRACE_SECONDS", "PHASES", "TEARDOWN_SECONDS", "main"]
