"""Names of everything a save writes, for checkpoint `name` saved by `world_size` workers.

    NAME.data-RRRRR-of-NNNNN          worker R's data, under its final TF name from the start
    NAME.index                        the merged index: its appearance is the commit
    NAME.claim                        which save may write the prefix (`claim`)
    NAME.tmp[-ID]/part-RRRRR-of-NNNNN.index   worker R's table, written once its data is durable
    NAME.tmp[-ID]/failed-RRRRR        worker R's failure note (the coordinator stops waiting)
    NAME.tmp[-ID]/outcome             the coordinator's verdict, JSON, read by every worker

``ID`` is the save id all workers share (``save_id=`` or ``$REMOTECKPT_SAVE_ID``); a retried
save of the same prefix after a crash should use a fresh one, or run `gc` first.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from ..format.bundle import data_filename, index_filename

SAVE_ID_ENV = "REMOTECKPT_SAVE_ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

LAUNCHER_IDS: tuple[tuple[str, ...], ...] = (
    ("TORCHELASTIC_RUN_ID",),           # torchrun / torch.distributed.elastic (kept across restarts)
    ("SLURM_JOB_ID", "SLURM_STEP_ID"),  # Slurm: the job, and its step within the job
)
"""Environment variables that name one run of a job, the same on all of its workers: the
default save id when none is given, so that two jobs racing for one prefix are told apart
(and a restarted job, which keeps its id, takes its own claim over)."""


def _safe_id(text: str) -> str:
    if _SAFE_ID.match(text):
        return text
    return "run-" + hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SaveLayout:
    name: str
    rank: int
    world_size: int
    save_id: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        if self.save_id and not _SAFE_ID.match(self.save_id):
            raise ValueError("save_id must be 1-64 characters of [A-Za-z0-9._-]")

    @staticmethod
    def default_save_id() -> str:
        """``$REMOTECKPT_SAVE_ID``, else the launcher's id of this job run (every worker of a
        job sees the same one, another job another), else "" (see `LAUNCHER_IDS`)."""
        if SAVE_ID_ENV in os.environ:
            return os.environ[SAVE_ID_ENV]
        for names in LAUNCHER_IDS:
            values = [os.environ.get(n, "") for n in names]
            if values[0]:
                return _safe_id(".".join(v for v in values if v))
        return ""

    @property
    def index(self) -> str:
        return index_filename(self.name)

    def data(self, rank: int) -> str:
        return data_filename(self.name, rank, self.world_size)

    @property
    def claim(self) -> str:
        return f"{self.name}.claim"

    @property
    def staging(self) -> str:
        return f"{self.name}.tmp-{self.save_id}/" if self.save_id else f"{self.name}.tmp/"

    def table(self, rank: int) -> str:
        return f"{self.staging}part-{rank:05d}-of-{self.world_size:05d}.index"

    def failure(self, rank: int) -> str:
        return f"{self.staging}failed-{rank:05d}"

    @property
    def outcome(self) -> str:
        return f"{self.staging}outcome"

    def rank_of(self, key: str) -> tuple[str, int] | None:
        """('table' | 'failed', rank) for a staging key, None for anything else."""
        rest = key[len(self.staging):] if key.startswith(self.staging) else None
        if rest is None:
            return None
        if m := re.fullmatch(r"part-(\d{5,})-of-(\d{5,})\.index", rest):
            return ("table", int(m.group(1))) if int(m.group(2)) == self.world_size else None
        if m := re.fullmatch(r"failed-(\d{5,})", rest):
            return "failed", int(m.group(1))
        return None
