"""The network phase: saves and restores through the fault-injecting proxy (tests/faultproxy.py)
at random fault rates and seeds; each must be byte-exact or fail with a remoteckpt error that
names the object, never hang, never leave an upload behind."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

import numpy as np

from .runtime import Phase, import_harness, run_units

NETWORK_THREADS = 4
"""Operations through proxies at once (they mostly wait: latency, backoff, the server)."""


def network_phase(ph: Phase, s3: dict[str, Any]) -> None:
    rw, faultproxy = import_harness()
    counter = itertools.count()
    draw_lock = threading.Lock()

    def draw() -> dict[str, Any]:
        with draw_lock:
            rng = ph.rng
            rates = {k: rng.choice([0, 0, 0.02, 0.05, 0.1, 0.15]) for k in
                     ("slowdown", "cut_request", "cut_response", "drop_response")}
            return {"n": next(counter), "seed": rng.randrange(2**31), **rates,
                    "latency_probability": rng.choice([0, 0, 0.2]), "big_mib": 4 * rng.choice([1, 2, 3]),
                    "max_attempts": rng.choice([3, 5, 8])}

    run_units(ph, lambda: network_job(ph, rw, faultproxy, draw(), s3), NETWORK_THREADS)


def network_job(ph: Phase, rw: Any, faultproxy: Any, repro: dict[str, Any], s3: dict[str, Any]) -> None:
    """Save then restore one checkpoint through a proxy of `repro`'s seed and fault rates; each
    operation is a unit (bounded, reported if it hangs)."""
    import remoteckpt
    from remoteckpt.storage import on_store

    tally = ph.tally
    n, seed = repro.pop("n"), repro["seed"]
    rates = {k: repro[k] for k in ("slowdown", "cut_request", "cut_response", "drop_response")}
    data_rng = np.random.default_rng(seed)
    tensors = {"big": data_rng.standard_normal(repro["big_mib"] // 4 * 2**20, dtype=np.float32),
               "small": data_rng.integers(0, 100, 50), "words": np.array([b"a", bytes(8)], dtype=object)}
    prefix = f"{s3['base']}/net-{n}-{uuid.uuid4().hex[:6]}/ck"
    with faultproxy.FaultProxy(s3["endpoint"], seed=seed, latency=0.05,
                               latency_probability=repro["latency_probability"], **rates) as proxy:
        options = {"endpoint_url": proxy.endpoint_url, "part_size": rw.PART_SIZE,
                   "config_kwargs": {"retries": {"max_attempts": repro["max_attempts"], "mode": "standard"}}}
        for op in ("save", "load"):
            start = time.monotonic()
            try:
                with ph.unit({"op": op, **repro}):
                    if op == "save":
                        remoteckpt.save(tensors, prefix, storage_options=options)
                        tally.add(net_saves_ok=1)
                    else:
                        got = remoteckpt.load(prefix, storage_options=options)
                        exact = all(got[k].tobytes() == np.asarray(v).tobytes() if np.asarray(v).dtype.kind != "O"
                                    else list(got[k]) == list(v) for k, v in tensors.items())
                        tally.add(net_restores_ok=1, net_restores_byte_exact=int(exact), net_wrong_bytes=int(not exact))
                        if not exact:
                            tally.violation("network", "WRONG BYTES restored", repro)
            except remoteckpt.CheckpointError as exc:
                tally.add(**{f"net_{op}s_failed_clearly": 1})
                if "s3://" not in str(exc):
                    tally.violation("network", f"{op} error names no object: {exc}", repro)
                tally.note(f"{op}: {type(exc).__name__}")
            except Exception as exc:  # noqa: BLE001
                tally.add(net_foreign_exceptions=1)
                tally.violation("network", f"{op} raised {type(exc).__name__}: {exc}", repro)
            tally.add(net_operation_seconds=int(time.monotonic() - start))
        with ph.unit({"op": "list uploads", **repro}):
            left = on_store(prefix.rsplit("/", 1)[0], lambda store: store.pending_uploads())
        tally.add(net_operations=2, net_requests=proxy.counters["requests"],
                  net_faults_injected=proxy.faults_injected(), net_response_bytes=proxy.counters["response-bytes"],
                  **{f"net_fault_{k}": v for k, v in proxy.counters.items() if k not in ("requests", "response-bytes")},
                  net_uploads_left=len(left))
        if left:
            tally.violation("network", f"{len(left)} incomplete upload(s) left", repro)
