"""The host lock of a tier's checkpoint (remoteckpt/tiers/hostlock.py): holders exclude each
other within a process and across processes, a forked child never keeps it, an unlinked lock's
next taker uses the path's file, and a missing directory or a long holder never stops a worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from remoteckpt.tiers import hostlock
from remoteckpt.tiers.hostlock import HostLock, host_locked


def test_two_holders_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    prefix = str(tmp_path / "model.ckpt-1")
    first, second = HostLock(prefix), HostLock(prefix)
    try:
        assert first.try_take() and not second.try_take()
        first.close()
        assert second.try_take()
    finally:
        first.close()
        second.close()


def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    prefix = str(tmp_path / "model.ckpt-1")
    lock = HostLock(prefix)
    assert lock.try_take()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # a DataLoader's worker, say: it lives on after the parent lets go
        os.write(ready_w, b"x")  # the fork's hooks have run
        time.sleep(30)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        lock.close()
        other = HostLock(prefix)
        try:
            assert other.try_take()  # with the child alive
        finally:
            other.close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready_r)
        os.close(ready_w)


def test_a_lock_unlinked_by_its_holder_is_taken_anew_from_the_path(tmp_path: Path) -> None:
    prefix = str(tmp_path / "model.ckpt-1")
    holder, waiter = HostLock(prefix), HostLock(prefix)  # the waiter opened the file being unlinked
    try:
        assert holder.try_take()
        holder.unlink()
        newcomer = HostLock(prefix)  # a new file at the path
        try:
            assert newcomer.try_take()
            holder.close()
            assert not waiter.try_take()  # its old file is free, but the path's is held
        finally:
            newcomer.close()
        assert waiter.try_take()
        assert os.path.exists(prefix + hostlock.LOCK)
    finally:
        holder.close()
        waiter.close()


def test_a_missing_directory_or_a_long_holder_lets_the_worker_go_on(tmp_path: Path) -> None:
    async def go() -> tuple[object, object]:
        async with host_locked(str(tmp_path / "gone" / "model.ckpt-1")) as missing:
            pass
        holder = HostLock(str(tmp_path / "model.ckpt-2"))
        assert holder.try_take()
        try:
            async with host_locked(str(tmp_path / "model.ckpt-2"), timeout=0.05) as waited:
                pass
        finally:
            holder.close()
        return missing, waited

    assert asyncio.run(go()) == (None, None)
