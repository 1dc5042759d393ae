"""Connections the server closes while they sit idle in the pool (real S3 closes idle
keep-alive connections after a few seconds; here the server stops) are dropped quietly: no
asyncio error is logged, during reads and writes, when the connections close, or at shutdown."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from remoteckpt.testing import find_weed

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SCRIPT = textwrap.dedent('''
    import logging, os, sys, time
    import numpy as np
    import remoteckpt
    from remoteckpt.engine import loop
    from remoteckpt.testing import SeaweedServer

    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
    logging.getLogger("asyncio").addHandler(Keep(level=logging.DEBUG))
    with SeaweedServer() as server:
        os.environ.update(server.env())
        prefix = f"s3://{server.bucket}/idle/ck"
        rows = [remoteckpt.Slice(np.full((8, 32), r, np.float32), (32, 32), (8 * r, 0)) for r in range(4)]
        remoteckpt.save({"v": np.arange(256, dtype=np.float32), "m": rows}, prefix)
        reader = remoteckpt.CheckpointReader(prefix)
        assert reader.get_slice("m", (slice(3, 12),)).shape == (9, 32)
        assert reader.get_tensor("v")[255] == 255
    time.sleep(1.0)  # the server is gone: its connections close while idle in the pool
    loop.run(__import__("asyncio").sleep(0.5))
    reader.close()
    print("ASYNCIO-RECORDS", len(records), [r.getMessage()[:200] for r in records])
''')


def test_no_asyncio_error_when_idle_connections_close() -> None:
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ASYNCIO-RECORDS 0 " in done.stdout, done.stdout[-2000:]
    for bad in ("Fatal error", "Traceback", "get_buffer", "Unclosed", "Task exception was never retrieved"):
        assert bad not in done.stderr, done.stderr[-3000:]
