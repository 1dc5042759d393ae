"""Micro-benchmarks of the format layer: it must never be what a save or restore waits on."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from remoteckpt.format.bundle import BundleEntry, decode_index, encode_index, make_header
from remoteckpt.format.coding import crc32c
from remoteckpt.format.payload import decode_strings, encode_strings


def best_of(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Fastest of `repeat` runs, in seconds (the least disturbed by a shared machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _entries(count: int) -> dict[bytes, BundleEntry]:
    entries = {}
    offset = 0
    for i in range(count):
        entry = BundleEntry(dtype=1, offset=offset, size=4096, crc32c=(i * 2654435761) & 0xFFFFFFFF)
        entry.shape.dim.add(size=32)
        entry.shape.dim.add(size=32)
        entries[f"model/layer_{i // 100}/block_{i % 100}/kernel".encode()] = entry
        offset += 4096
    return entries


def run_micro(*, crc_mib: int = 256, index_entries: int = 100_000, strings: int = 100_000) -> list[dict[str, Any]]:
    """Rows of {name, value, unit, detail}."""
    rows: list[dict[str, Any]] = []
    buf = np.random.default_rng(0).integers(0, 255, crc_mib * 2**20, dtype=np.uint8)
    t = best_of(lambda: crc32c(memoryview(buf)))
    rows.append({"name": "crc32c", "value": crc_mib * 2**20 / t / 1e9, "unit": "GB/s",
                 "detail": f"{crc_mib} MiB buffer, crc32c package (hardware: see crc32c.hardware_based)"})

    entries = _entries(index_entries)
    sink = io.BytesIO()
    t_enc = best_of(lambda: encode_index(make_header(1), entries, io.BytesIO()))
    encode_index(make_header(1), entries, sink)
    data = sink.getvalue()
    view = memoryview(data)
    t_dec = best_of(lambda: decode_index(lambda o, n: view[o : o + n], len(view)))
    rows.append({"name": "index encode", "value": t_enc, "unit": "s",
                 "detail": f"{index_entries} entries, {len(data) / 2**20:.1f} MiB table"})
    rows.append({"name": "index decode+validate", "value": t_dec, "unit": "s",
                 "detail": f"{index_entries} entries, every block CRC checked"})

    elements = [f"token-{i}".encode() * (1 + i % 7) for i in range(strings)]
    t_senc = best_of(lambda: encode_strings(elements))
    payload = b"".join(encode_strings(elements)[0])
    t_sdec = best_of(lambda: decode_strings(payload, len(elements)))
    rows.append({"name": "string encode", "value": t_senc, "unit": "s", "detail": f"{strings} elements"})
    rows.append({"name": "string decode+verify", "value": t_sdec, "unit": "s", "detail": f"{strings} elements"})
    return rows
