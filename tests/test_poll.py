"""Polling the storage: backoff, and waits learned from a job's earlier saves."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from remoteckpt.options import IOOptions
from remoteckpt.protocol import claim, poll
from remoteckpt.protocol.layout import SaveLayout
from remoteckpt.protocol.save import save_worker
from remoteckpt.storage import open_store


def poll_times(**kwargs: Any) -> list[float]:
    async def go() -> list[float]:
        start, times = poll.clock(), []
        async for _ in poll.backoff_polls(0.01, poll.clock() + 2.0, **kwargs):
            times.append(poll.clock() - start)
            if len(times) == 3:
                break
        return times

    return asyncio.run(go())


def test_an_expected_wait_is_slept_through_before_the_first_poll() -> None:
    assert poll_times()[0] < 0.05  # at once
    first, second, _ = poll_times(not_before=poll.clock() + 0.35, share=poll.WAIT_SHARE, cap=0.05)
    assert 0.9 * 0.35 <= first <= 0.45
    # then at most half the time waited later
    assert second - first <= poll.WAIT_SHARE * first + 0.05
    # the time waited counted from `since`: a wait that began earlier than the call
    first, second, _ = poll_times(not_before=poll.clock() + 0.1, since=poll.clock() - 1.0,
                                  share=poll.WAIT_SHARE, cap=0.05)
    assert second - first >= 0.5 * poll.WAIT_SHARE * 1.1 - 0.01


def test_waits_expect_the_shortest_of_the_last_few_once_there_are_enough() -> None:
    waits = poll.Waits()
    waits.learn("k", 3.0)
    assert waits.expected("k") is None  # one wait is no rhythm
    waits.learn("k", 1.0)
    assert waits.expected("k") == 1.0
    for _ in range(poll.LEARNED_WAITS):
        waits.learn("k", 2.0)
    assert waits.expected("k") == 2.0  # the 1.0 is forgotten
    assert waits.expected("other") is None and waits.not_before("other", 5.0) is None
    assert waits.not_before("k", 5.0) == 5.0 + poll.LEARNED_SHARE * 2.0


def test_a_job_in_its_rhythm_polls_for_the_verdict_a_few_times(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Four workers save six checkpoints, rank 3 joining each 1.5 s late: the others wait that
    long for every verdict.  Once two saves have set the rhythm, each of them finds the verdict
    in a few polls, fewer than at the job's first saves."""
    world, delay = 4, 1.5
    reads: dict[tuple[int, str], int] = collections.Counter()
    read_notice = claim.read_notice

    async def counted(store: Any, layout: SaveLayout) -> Any:
        reads[(layout.rank, layout.name)] += 1
        return await read_notice(store, layout)

    monkeypatch.setattr(claim, "read_notice", counted)
    options = IOOptions()

    async def job(name: str) -> None:
        async def rank(r: int) -> None:
            if r == world - 1:
                await asyncio.sleep(delay)
            store = open_store(str(tmp_path), None, options)
            layout = SaveLayout(name, r, world, "rhythm")
            await save_worker(store, layout, {f"t{r}": np.full(64, r, np.float32)}, overwrite=False, options=options)

        await asyncio.gather(*(rank(r) for r in range(world)))

    names = [f"model.ckpt-{step}" for step in range(6)]
    for name in names:
        asyncio.run(job(name))
    for r in (1, 2):
        assert poll.waits.expected(claim.wait_kind(open_store(str(tmp_path), None, options),
                                                   SaveLayout(names[0], r, world, "rhythm"), "verdict")) is not None
        early = [reads[(r, n)] for n in names[:2]]
        steady = [reads[(r, n)] for n in names[2:]]
        # every read is the join's look or a verdict poll: join 1 or 2, verdict a couple
        assert max(steady) <= 5 and sum(steady) / len(steady) < sum(early) / len(early), (r, early, steady)
