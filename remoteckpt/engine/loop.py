"""The one asyncio event loop that runs all of remoteckpt's I/O, in a daemon thread.

The synchronous API is a shell over coroutines: `run(coro)` submits to this loop and waits.
After ``fork()`` the child gets a fresh loop (the parent's thread does not exist there).
Calling `run` from the loop's own thread would deadlock and raises instead.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use (and again in a forked child)."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or not _loop.is_running():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=serve, name="remoteckpt-io", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> "Future[T]":
    """Schedule `coro` on the background loop; a concurrent Future of its result."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and wait for its result (re-raising its error)."""
    loop = get_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("remoteckpt's synchronous API was called from its own I/O loop")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()
