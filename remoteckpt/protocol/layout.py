"""Names of everything a save writes, for checkpoint `name` saved by `world_size` workers.

    NAME.data-RRRRR-of-NNNNN             worker R's data, under its final TF name from the start
    NAME.index                           the merged index: its appearance is the commit
    NAME.claim                           the lease of the save attempt that holds the prefix
    NAME.tmp/notice-GGGGG                the coordinator's word to workers G*16 .. G*16+15:
                                         "attempt A is writing", then "A committed" / "A failed"
    NAME.tmp-ATTEMPT/worker-RRRRR        worker R's report: its table and its data file's
                                         identity (size, etag), or its failure
    NAME.tmp-ATTEMPT/ack-RRRRR           worker R has read the verdict (the coordinator then
                                         removes the attempt's notices and staging)

``ATTEMPT`` is a fresh token per save attempt, chosen by the coordinator; every worker learns
it from its group's notice.  The save id (``save_id=``, ``$REMOTECKPT_SAVE_ID``, or the
launcher's run id and restart count) names the *job*, so that racing jobs are told apart; the
attempt token names one try of it, so that a retry never meets the leftovers of the last.
Notices are shared by `NOTICE_GROUP` workers each: no key is read by more than that many
workers, however many there are.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from ..format.bundle import data_filename, index_filename

SAVE_ID_ENV = "REMOTECKPT_SAVE_ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

NOTICE_GROUP = 16
"""Workers per notice: each notice is read by at most this many workers, each at most a few
times a second, so no key sees more than about a hundred requests a second whatever the
world size; the coordinator writes world_size / 16 notices per state."""

LAUNCHER_IDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("TORCHELASTIC_RUN_ID",), "TORCHELASTIC_RESTART_COUNT"),            # torchrun
    (("SLURM_JOB_ID", "SLURM_STEP_ID"), "SLURM_RESTART_COUNT"),           # Slurm (job, step)
)
"""Environment variables naming one run of a job, the same on all of its workers, and the
variable counting the launcher's restarts of it: the default save id, so that two jobs racing
for one prefix are told apart, and a restarted job is a new job (its dead predecessor's
claim is taken over once its lease runs out)."""


def _safe_id(text: str) -> str:
    if _SAFE_ID.match(text):
        return text
    return "run-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def default_save_id() -> str:
    """``$REMOTECKPT_SAVE_ID``, else the launcher's id of this job run with its restart
    count (every worker of a run sees the same one, another job or a restart another), else
    "" (see `LAUNCHER_IDS`)."""
    if SAVE_ID_ENV in os.environ:
        return os.environ[SAVE_ID_ENV]
    for names, restarts in LAUNCHER_IDS:
        values = [os.environ.get(n, "") for n in names]
        if values[0]:
            count = os.environ.get(restarts, "")
            return _safe_id(".".join(v for v in values if v) + (f".r{count}" if count else ""))
    return ""


@dataclass(frozen=True)
class SaveLayout:
    """Where a save of checkpoint `name` by worker `rank` of `world_size` puts things."""

    name: str
    rank: int
    world_size: int
    save_id: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.save_id and not _SAFE_ID.match(self.save_id):
            raise ValueError("save_id must be 1-64 characters of [A-Za-z0-9._-]")

    default_save_id = staticmethod(default_save_id)

    @property
    def index(self) -> str:
        return index_filename(self.name)

    def data(self, rank: int) -> str:
        return data_filename(self.name, rank, self.world_size)

    @property
    def data_prefix(self) -> str:
        """What every data file of this checkpoint, of any world size, starts with."""
        return f"{self.name}.data-"

    @property
    def claim(self) -> str:
        return f"{self.name}.claim"

    @property
    def groups(self) -> int:
        return -(-self.world_size // NOTICE_GROUP)

    def notice(self, group: int) -> str:
        return f"{self.name}.tmp/notice-{group:05d}"

    @property
    def my_notice(self) -> str:
        return self.notice(self.rank // NOTICE_GROUP)

    def staging(self, attempt: str) -> str:
        return f"{self.name}.tmp-{attempt}/"

    def report(self, attempt: str, rank: int) -> str:
        return f"{self.prefix_of(attempt)}{rank:05d}"

    def ack(self, attempt: str, rank: int) -> str:
        return f"{self.prefix_of(attempt, 'ack')}{rank:05d}"

    def prefix_of(self, attempt: str, kind: str = "worker") -> str:
        """What every report (or, with ``kind="ack"``, acknowledgement) of `attempt` starts with."""
        return f"{self.staging(attempt)}{kind}-"

    def rank_of(self, attempt: str, key: str, kind: str = "worker") -> int | None:
        """The rank whose report (or, with ``kind="ack"``, acknowledgement) `key` is, None
        for anything else."""
        prefix = self.prefix_of(attempt, kind)
        if not key.startswith(prefix):
            return None
        m = re.fullmatch(r"(\d{5,})", key[len(prefix):])
        return int(m.group(1)) if m and int(m.group(1)) < self.world_size else None


DATA_FILE = re.compile(r"^(?P<name>.+)\.data-(?P<shard>\d{5,})-of-(?P<shards>\d{5,})$")
"""Any checkpoint's data file name (with its checkpoint name, shard and shard count)."""

MEETING = ".tiers"
"""Folder of a checkpoint directory where the workers of per-host local tiers commit locally
(`tiers.hosts`): the save protocol runs at ``.tiers/NAME`` (its index, claim, staging), `gc`
collects its leftovers there as at the top of the directory."""
