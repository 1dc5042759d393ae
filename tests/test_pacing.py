"""The adaptive gate of S3 requests (`storage.s3.pacing`): additive increase, halved on
SlowDown; and a save through a store that throttles completes, paced."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import remoteckpt
from remoteckpt.engine import loop
from remoteckpt.storage.s3.pacing import CUT_SPACING, Pacer


def test_the_limit_grows_by_one_per_window_and_halves_on_slowdown() -> None:
    pacer = Pacer(start=4, ceiling=6)
    for _ in range(4):
        pacer.succeeded()
    assert pacer.limit == 5
    for _ in range(100):
        pacer.succeeded()
    assert pacer.limit == 6  # the ceiling
    pacer.slow_down()
    pacer.slow_down()  # the same burst: one cut
    assert pacer.limit == 3 and pacer.slowdowns == 2
    pacer._last_cut -= CUT_SPACING
    pacer.slow_down()
    assert pacer.limit == 1
    pacer._last_cut -= CUT_SPACING
    pacer.slow_down()
    assert pacer.limit == 1 and pacer.lowest == 1


def test_the_gate_holds_requests_beyond_the_limit() -> None:
    async def go() -> int:
        pacer = Pacer(start=2, ceiling=2)
        peak = 0

        async def one() -> None:
            nonlocal peak
            async with pacer:
                peak = max(peak, pacer.in_flight)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(10)))
        assert pacer.in_flight == 0
        return peak

    assert loop.run(go()) == 2


def _restore_paced(prefix: str, tensors: dict[str, np.ndarray], proxy: object) -> Pacer:
    """Read every tensor of `prefix` back through `proxy`, a GET per 64 KiB; check the values
    and that the proxy throttled; the reader's pacer."""
    options = {"endpoint_url": proxy.endpoint_url}  # type: ignore[attr-defined]
    with remoteckpt.CheckpointReader(prefix, storage_options=options,
                                     options=remoteckpt.IOOptions(read_chunk=64 * 1024, coalesce_gap=0)) as reader:
        got = loop.run(reader.read_many(list(tensors)))
        paced: Pacer = reader.store.client.pacer  # type: ignore[attr-defined]
    assert all(np.array_equal(got[k], v) for k, v in tensors.items())
    assert proxy.counters["throttled"] > 0, proxy.counters  # type: ignore[attr-defined]
    assert paced.slowdowns > 0
    return paced


@pytest.mark.slow
def test_a_throttling_store_slows_the_client_down(s3_server: object, s3_prefix: str) -> None:
    """The fault proxy answers SlowDown above a request rate: save and restore complete, and
    the client's pacer has cut its limit."""
    from faultproxy import FaultProxy

    with FaultProxy(s3_server.endpoint_url, throttle_above=150.0) as proxy:  # type: ignore[attr-defined]
        options = {"endpoint_url": proxy.endpoint_url, "part_size": 5 * 2**20}
        tensors = {f"t{i}": np.full(300_000, i, np.float32) for i in range(40)}
        remoteckpt.save(tensors, f"{s3_prefix}/ck", storage_options=options,
                        options=remoteckpt.IOOptions(crc_chunk=64 * 1024, read_chunk=64 * 1024))
        assert _restore_paced(f"{s3_prefix}/ck", tensors, proxy).lowest < 64


@pytest.mark.slow
def test_reads_throttled_by_the_second_wait_long_enough_to_be_served(s3_server: object, s3_prefix: str) -> None:
    """A store serving 10 reads a second, asked for 60 ranges at once: the throttled GETs back
    off for seconds (botocore's full jitter), not the 50 ms of a cut connection, so the restore
    completes within the default retries; and 503 answers never count as successes that raise
    the pacer's limit."""
    from faultproxy import FaultProxy

    tensors = {f"t{i}": np.full(16_384, i, np.float32) for i in range(60)}
    remoteckpt.save(tensors, f"{s3_prefix}/ck", storage_options={"endpoint_url": s3_server.endpoint_url})  # type: ignore[attr-defined]
    with FaultProxy(s3_server.endpoint_url, throttle_above={"read": 10.0, "write": 1e9}) as proxy:  # type: ignore[attr-defined]
        assert _restore_paced(f"{s3_prefix}/ck", tensors, proxy).limit < 64
