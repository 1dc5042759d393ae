"""``python -m remoteckpt.bench.soak [--minutes N] [--seed S] [--only PHASES] [--out DIR]``

The reliability suite of tests/test_crash.py, tests/test_network_faults.py,
tests/test_corruption.py and tests/test_fuzz.py, at scale and bounded in time (``make soak``):

  crash       jobs of 1, 2 or 4 worker processes saving with a Saver (local disk and an
              embedded SeaweedFS S3 server); one worker SIGKILLed at a named point or after a
              random delay; every checkpoint left restored and compared, latest_checkpoint
              checked, gc checked; a quarter of the jobs are then restarted from the latest
              checkpoint (as a training job would be) and must complete
  network     saves and restores through the fault-injecting proxy (503 SlowDown, cut
              requests and responses, dropped responses, latency), random rates and seeds:
              byte-exact or a remoteckpt error, never a hang, never an upload left behind
  race        2 or 3 jobs (1, 2 or 4 workers each, distinct save ids) saving one prefix at
              random moments: exactly one commits, whole; every worker of the others gets
              CheckpointExistsError / CheckpointBusyError; nothing but the winner's files left
  corruption  random bit flips, byte changes, truncations and swapped shards in a 2-shard
              checkpoint: each must raise CorruptCheckpointError when the tensor is read
  fuzz        random mutations of valid indexes and state files through the decoders

Needs the repository's tests/ directory (the harness lives there).  Writes
``soak-<time>.json`` under --out (default bench-results/) and prints a summary; exits 1 if any
invariant was violated (silent corruption, a wrong byte, a hang, a foreign exception, a
leftover after gc).  ``--seed`` makes the sequence of scenarios reproducible.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parents[2] / "tests"
PHASES = {"crash": 0.45, "network": 0.2, "race": 0.1, "corruption": 0.15, "fuzz": 0.10}


def _import_harness() -> tuple[Any, Any]:
    if not (TESTS / "reliability_workers.py").exists():
        sys.exit(f"the soak runner needs the repository's tests/ directory ({TESTS} not found)")
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    import faultproxy  # type: ignore[import-not-found]
    import reliability_workers  # type: ignore[import-not-found]
    return reliability_workers, faultproxy


class Tally:
    """Counters and the list of violations, shared by the phases' threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.violations: list[dict[str, Any]] = []
        self.notes: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            self.counts.update(counts)

    def note(self, text: str) -> None:
        with self._lock:
            self.notes[text[:200]] += 1

    def violation(self, phase: str, what: str, repro: dict[str, Any]) -> None:
        with self._lock:
            self.violations.append({"phase": phase, "what": what[:2000], "repro": repro})


# --- crash --------------------------------------------------------------------------------------

def crash_phase(seconds: float, rng: random.Random, tally: Tally, s3: dict[str, Any], workdir: str,
                concurrency: int) -> None:
    rw, _ = _import_harness()
    from remoteckpt.faults import POINTS

    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    def one(params: dict[str, Any]) -> None:
        if params["backend"] == "s3":
            base, env, options = s3["base"], s3["env"], {"part_size": rw.PART_SIZE}
        else:
            base, env, options = workdir, {}, None
        sc = rw.Scenario(rw.scenario_directory(base, f"soak{params['n']}"), world=params["world"],
                         victim=params["victim"], point=params.get("point"), kill_after=params.get("kill_after"),
                         env=env, storage_options=options)
        try:
            result = rw.run_scenario(sc)
            verdict = rw.verify(sc.directory, sc.world, storage_options=options)
        except Exception:  # noqa: BLE001 - a harness failure is reported, not fatal
            tally.violation("crash", "harness error: " + traceback.format_exc(), params)
            return
        problems = verdict.problems + rw.check_run(result)
        tally.add(crash_scenarios=1, kills_injected=int(result.injected),
                  named_point_kills=int(result.injected and sc.point is not None),
                  random_kills=int(result.injected and sc.kill_after is not None),
                  checkpoints_verified=verdict.checkpoints, restores_byte_exact=verdict.restored_exact,
                  silent_corruptions=verdict.silent_corruptions, unrestorable_committed=verdict.unrestorable,
                  gc_removed_objects=verdict.removed_by_gc, gc_aborted_uploads=verdict.aborted_uploads,
                  leftover_workers_killed=len(result.killed_leftovers),
                  spurious_save_failures=int(rw.spurious_failure(result)),
                  **{f"crash_{params['backend']}": 1, f"crash_world{sc.world}": 1})
        for p in problems:
            tally.violation("crash", p, params)
        if params.get("resume") and verdict.latest is not None and not problems:
            start = int(verdict.latest.rsplit("-", 1)[1]) + 1
            resumed = rw.run_scenario(rw.Scenario(sc.directory, world=sc.world, start_step=start, env=env,
                                                  storage_options=options))
            errors = resumed.errors()
            tally.add(resumed_jobs=1, resumed_completed=int(resumed.exit_codes == [0] * sc.world))
            if errors:
                tally.note(f"restarted job failed: {errors[0]['error']} at step {errors[0]['step']}")
                if errors[0]["error"] == "CheckpointExistsError":
                    tally.add(resume_blocked_by_unrecorded_checkpoint=1)

    def params() -> dict[str, Any]:
        world = rng.choice([1, 2, 2, 4])
        p: dict[str, Any] = {"n": next(counter), "backend": rng.choice(["local", "s3"]), "world": world,
                             "victim": rng.randrange(world), "resume": rng.random() < 0.25}
        if rng.random() < 0.6:
            p["point"] = rng.choice(POINTS)
        else:
            per_step = 0.25 if p["backend"] == "local" else 0.6
            p["kill_after"] = round(rng.uniform(0.05, per_step * 3 * (1 + world / 2)), 3)
        return p

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        running: set[concurrent.futures.Future[None]] = set()
        while time.monotonic() < deadline or running:
            while time.monotonic() < deadline and len(running) < concurrency:
                running.add(pool.submit(one, params()))
                time.sleep(0.3)  # staggered: the workers' first saves do not all start at once
            done, running = concurrent.futures.wait(running, timeout=1, return_when="FIRST_COMPLETED")
            for f in done:
                f.result()


# --- network ------------------------------------------------------------------------------------

def network_phase(seconds: float, rng: random.Random, tally: Tally, s3: dict[str, Any]) -> None:
    rw, faultproxy = _import_harness()
    import remoteckpt
    from remoteckpt.storage import on_store

    deadline = time.monotonic() + seconds
    bound = 120.0

    def pending(directory: str) -> list[Any]:
        return on_store(directory, lambda store: store.pending_uploads())

    def bounded(fn: Any) -> Any:
        pool = concurrent.futures.ThreadPoolExecutor(1)
        try:
            return pool.submit(fn).result(timeout=bound)
        finally:
            pool.shutdown(wait=False)

    counter = iter(range(10**9))
    draw_lock = threading.Lock()

    def draw() -> tuple[int, int, dict[str, float], float, int, int]:
        with draw_lock:
            rates = {k: rng.choice([0, 0, 0.02, 0.05, 0.1, 0.15]) for k in
                     ("slowdown", "cut_request", "cut_response", "drop_response")}
            return (next(counter), rng.randrange(2**31), rates, rng.choice([0, 0, 0.2]), rng.choice([1, 2, 3]),
                    rng.choice([3, 5, 8]))

    def one() -> None:
        n, seed, rates, latency_p, mib4, attempts = draw()
        repro = {"seed": seed, **rates, "latency_probability": latency_p, "big_mib": 4 * mib4, "max_attempts": attempts}
        data_rng = np.random.default_rng(seed)
        tensors = {"big": data_rng.standard_normal(mib4 * 2**20, dtype=np.float32),
                   "small": data_rng.integers(0, 100, 50), "words": np.array([b"a", bytes(8)], dtype=object)}
        prefix = f"{s3['base']}/net-{n}-{uuid.uuid4().hex[:6]}/ck"
        with faultproxy.FaultProxy(s3["endpoint"], seed=seed, latency=0.05, latency_probability=latency_p,
                                   **rates) as proxy:
            options = {"endpoint_url": proxy.endpoint_url, "part_size": rw.PART_SIZE,
                       "config_kwargs": {"retries": {"max_attempts": attempts, "mode": "standard"}}}
            for op in ("save", "load"):
                start = time.monotonic()
                try:
                    if op == "save":
                        bounded(lambda: remoteckpt.save(tensors, prefix, storage_options=options))
                        tally.add(net_saves_ok=1)
                    else:
                        got = bounded(lambda: remoteckpt.load(prefix, storage_options=options))
                        exact = all(got[k].tobytes() == np.asarray(v).tobytes() if np.asarray(v).dtype.kind != "O"
                                    else list(got[k]) == list(v) for k, v in tensors.items())
                        tally.add(net_restores_ok=1, net_restores_byte_exact=int(exact), net_wrong_bytes=int(not exact))
                        if not exact:
                            tally.violation("network", "WRONG BYTES restored", repro)
                except concurrent.futures.TimeoutError:
                    tally.add(net_hangs=1)
                    tally.violation("network", f"{op} did not finish in {bound:g} s", repro)
                except remoteckpt.CheckpointError as exc:
                    tally.add(**{f"net_{op}s_failed_clearly": 1})
                    if "s3://" not in str(exc):
                        tally.violation("network", f"{op} error names no object: {exc}", repro)
                    tally.note(f"{op}: {type(exc).__name__}")
                except Exception as exc:  # noqa: BLE001
                    tally.add(net_foreign_exceptions=1)
                    tally.violation("network", f"{op} raised {type(exc).__name__}: {exc}", repro)
                tally.add(net_operation_seconds=int(time.monotonic() - start))
            left = pending(prefix.rsplit("/", 1)[0])
            tally.add(net_operations=2, net_requests=proxy.counters["requests"],
                      net_faults_injected=proxy.faults_injected(),
                      **{f"net_fault_{k}": v for k, v in proxy.counters.items() if k != "requests"},
                      net_uploads_left=len(left))
            if left:
                tally.violation("network", f"{len(left)} incomplete upload(s) left", repro)

    def loop_until_deadline() -> None:
        while time.monotonic() < deadline:
            one()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(loop_until_deadline) for _ in range(4)]:
            f.result()


# --- racing jobs --------------------------------------------------------------------------------

def race_phase(seconds: float, rng: random.Random, tally: Tally, s3: dict[str, Any], workdir: str) -> None:
    rw, _ = _import_harness()
    import remoteckpt
    from remoteckpt.format.bundle import data_filename

    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        world, jobs, backend = rng.choice([1, 2, 2, 4]), rng.choice([2, 2, 3]), rng.choice(["local", "s3"])
        schedule = [(who, rank, round(rng.uniform(0, 0.5), 3)) for who in range(1, jobs + 1) for rank in range(world)]
        repro = {"backend": backend, "world": world, "schedule": schedule}
        if backend == "s3":
            directory, env, options = f"{s3['base']}/race-{n}", s3["env"], {"part_size": rw.PART_SIZE}
        else:
            directory, env, options = os.path.join(workdir, f"race-{n}"), {}, None
        prefix = f"{directory}/ck"
        records = rw.run_committers(prefix, schedule, world, env, options)
        winners = {r["who"] for r in records if r.get("ok")}
        tally.add(races=1, race_workers=len(records), **{f"race_{backend}": 1, f"race_world{world}": 1})
        if len(winners) != 1:
            tally.add(race_no_winner=int(not winners), race_several_winners=int(len(winners) > 1))
            tally.violation("race", f"{len(winners)} jobs committed: {records}", repro)
            continue
        (winner,) = winners
        for r in records:
            if r["who"] == winner and not r.get("ok"):
                tally.violation("race", f"a worker of the winning job failed: {r}", repro)
            elif r["who"] != winner and r.get("error") not in ("CheckpointExistsError", "CheckpointBusyError"):
                tally.violation("race", f"a loser failed unclearly: {r}", repro)
            elif r["who"] != winner:
                tally.add(**{f"race_loser_{r['error']}": 1})
        got = remoteckpt.load(prefix, storage_options=options)
        want = {k: np.asarray(v) for rank in range(world) for k, v in rw.committer_tensors(winner, rank).items()}
        exact = set(got) == set(want) and all(got[k].tobytes() == want[k].tobytes() for k in want)
        tally.add(race_winner_byte_exact=int(exact))
        if not exact:
            tally.violation("race", "the committed checkpoint is not the winner's tensors", repro)
        expected = sorted([data_filename("ck", r, world) for r in range(world)] + ["ck.index"])
        end = time.monotonic() + 30  # the coordinator deletes its outcome once acknowledged
        while True:
            infos, uploads = rw._list(directory, options)
            keys = sorted(i.key for i in infos)
            if (keys == expected and not uploads) or time.monotonic() > end:
                break
            time.sleep(0.2)
        if keys != expected or uploads:
            tally.add(race_leftovers=1)
            tally.violation("race", f"left behind: {sorted(set(keys) - set(expected))}, uploads {uploads}", repro)


# --- corruption ---------------------------------------------------------------------------------

def corruption_phase(seconds: float, rng: random.Random, tally: Tally, workdir: str) -> None:
    import remoteckpt
    from remoteckpt.errors import CheckpointError, CorruptCheckpointError

    sys.path.insert(0, str(TESTS))
    import test_corruption as tc  # type: ignore[import-not-found]

    directory = Path(tempfile.mkdtemp(prefix="soak-corrupt-", dir=workdir))
    tc.save_two_workers(str(directory / "ck"), 1)
    tc.save_two_workers(str(directory / "other"), 2)
    want = tc.expected(1)
    files = {"index": directory / "ck.index", "data0": tc.data_path(directory, 0), "data1": tc.data_path(directory, 1)}
    pristine = {k: p.read_bytes() for k, p in files.items()}
    others = {"data0": tc.data_path(directory, 0, "other").read_bytes(),
              "data1": tc.data_path(directory, 1, "other").read_bytes()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        which = rng.choice(list(files))
        data = bytearray(pristine[which])
        kind = rng.choice(["bit", "byte", "truncate", "swap"] if which != "index" else ["bit", "byte", "truncate"])
        pos = rng.randrange(len(data))
        if kind == "bit":
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == "byte":
            data[pos] ^= rng.randrange(1, 256)
        elif kind == "truncate":
            data = data[:pos]
        else:
            data = bytearray(others[which])
        files[which].write_bytes(bytes(data))
        repro = {"file": which, "kind": kind, "position": pos}
        detected = silent = exact = 0
        try:
            with remoteckpt.CheckpointReader(directory / "ck", options=tc.OPTIONS) as reader:
                for name in want:
                    try:
                        got = reader.get_tensor(name)
                    except CorruptCheckpointError as exc:
                        detected += 1
                        if repr(name) not in str(exc):
                            tally.violation("corruption", f"error does not name {name!r}: {exc}", repro)
                    except CheckpointError:
                        detected += 1
                    else:
                        if tc.same(got, want[name]):
                            exact += 1
                        else:
                            silent += 1
                            tally.violation("corruption", f"SILENT: {name} differs", repro)
        except CorruptCheckpointError:
            detected += 1  # refused at open: the index itself
        except Exception as exc:  # noqa: BLE001
            tally.violation("corruption", f"foreign exception {type(exc).__name__}: {exc}", repro)
        tally.add(damages=1, **{f"damage_{kind}_{which}": 1}, damages_detected=int(detected > 0),
                  damages_without_effect=int(detected == 0 and silent == 0), damage_silent=silent,
                  tensor_reads_refused=detected, tensor_reads_exact=exact)
        files[which].write_bytes(pristine[which])


# --- fuzz ---------------------------------------------------------------------------------------

def fuzz_phase(seconds: float, rng: random.Random, tally: Tally) -> None:
    sys.path.insert(0, str(TESTS))
    from remoteckpt.errors import CheckpointError
    from remoteckpt.format.bundle import decode_index
    from remoteckpt.management.state import format_state, parse_state

    import test_fuzz as tf  # type: ignore[import-not-found]

    seeds = list(tf.SEEDS)
    states = [format_state("ck-30", ["ck-10", "ck-20", "ck-30"], [1.0, 2.0, 3.0], 0.5),
              format_state("../x", ["/etc/passwd", "s3://other/x"])]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(200):
            target = rng.random() < 0.7
            data = bytearray(rng.choice(seeds if target else states))
            for _ in range(rng.randrange(1, 8)):
                op = rng.randrange(5)
                pos = rng.randrange(len(data) + 1)
                if op == 0 and data:
                    data[min(pos, len(data) - 1)] ^= rng.randrange(1, 256)
                elif op == 1:
                    data[pos:pos] = rng.randbytes(rng.randrange(1, 16))
                elif op == 2:
                    del data[pos:pos + rng.randrange(1, 16)]
                elif op == 3:
                    other = rng.choice(seeds)
                    data = data[:pos] + bytearray(other[rng.randrange(len(other) + 1):])
                else:
                    data = data[:pos]
            blob = bytes(data)
            try:
                if target:
                    decode_index(lambda o, n: blob[o:o + n], len(blob))
                else:
                    state = parse_state(blob, "/data/run", "checkpoint")
                    for name in state.all_model_checkpoint_paths:
                        if ".." in name.split("/") or name.startswith("/"):
                            tally.violation("fuzz", f"state path escapes: {name!r}", {"input": blob.hex()})
                tally.add(fuzz_accepted=1)
            except CheckpointError:
                tally.add(fuzz_refused=1)
            except Exception as exc:  # noqa: BLE001
                tally.violation("fuzz", f"{type(exc).__name__}: {exc}", {"input": blob.hex()})
            tally.add(fuzz_executions=1)


# --- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remoteckpt.bench.soak", description=__doc__.split("\n\n")[1])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall time for all phases (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the scenario sequence (default: random)")
    parser.add_argument("--only", default=",".join(PHASES), help="comma-separated phases: " + ", ".join(PHASES))
    parser.add_argument("--concurrency", type=int, default=6, help="crash scenarios at once (default 6)")
    parser.add_argument("--out", default="bench-results", help="directory for the JSON record")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {sorted(unknown)}")
    weights = {p: PHASES[p] for p in phases}
    total = args.minutes * 60
    rw, _ = _import_harness()
    from remoteckpt.devserver import SeaweedServer

    import logging
    logging.getLogger("remoteckpt").setLevel(logging.ERROR)
    tally = Tally()
    started = time.time()
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="remoteckpt-soak-") as workdir, SeaweedServer() as server:
        for key, value in server.env().items():
            os.environ[key] = value
        s3 = {"base": f"s3://{server.bucket}/soak-{uuid.uuid4().hex[:8]}", "env": server.env(),
              "endpoint": server.endpoint_url}
        for phase in phases:
            seconds = total * weights[phase] / sum(weights.values())
            rng = random.Random(f"{seed}-{phase}")
            print(f"[soak] {phase}: {seconds:.0f} s", flush=True)
            t0 = time.monotonic()
            if phase == "crash":
                crash_phase(seconds, rng, tally, s3, workdir, args.concurrency)
            elif phase == "network":
                network_phase(seconds, rng, tally, s3)
            elif phase == "race":
                race_phase(seconds, rng, tally, s3, workdir)
            elif phase == "corruption":
                corruption_phase(seconds, rng, tally, workdir)
            else:
                fuzz_phase(seconds, rng, tally)
            timings[phase] = round(time.monotonic() - t0, 1)
    c = tally.counts
    record = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seed": seed,
              "minutes": args.minutes, "phases": timings, "counts": dict(sorted(c.items())),
              "notes": dict(tally.notes.most_common(20)), "violations": tally.violations,
              "reproduce": f"python -m remoteckpt.bench.soak --minutes {args.minutes:g} --seed {seed} --only {','.join(phases)}"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"soak-{int(started)}.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    print(_summary(record))
    print(f"results: {path}")
    return 1 if tally.violations else 0


def _summary(record: dict[str, Any]) -> str:
    c = Counter(record["counts"])
    lines = [f"soak: {record['minutes']:g} min, seed {record['seed']}, phases {record['phases']}",
             f"  crash:      {c['crash_scenarios']} jobs ({c['crash_local']} local, {c['crash_s3']} S3; "
             f"{c['crash_world1']}/{c['crash_world2']}/{c['crash_world4']} with 1/2/4 workers), "
             f"{c['kills_injected']} kills injected ({c['named_point_kills']} at named points, "
             f"{c['random_kills']} random)",
             f"              {c['checkpoints_verified']} checkpoints found, {c['restores_byte_exact']} restored byte-exact, "
             f"silent corruptions {c['silent_corruptions']}, unrestorable committed {c['unrestorable_committed']}; "
             f"gc removed {c['gc_removed_objects']} objects, aborted {c['gc_aborted_uploads']} uploads",
             f"              restarted jobs {c['resumed_jobs']}: completed {c['resumed_completed']}, blocked by an "
             f"unrecorded checkpoint {c['resume_blocked_by_unrecorded_checkpoint']}; spurious save failures "
             f"{c['spurious_save_failures']}",
             f"  network:    {c['net_operations']} operations, {c['net_requests']} requests, "
             f"{c['net_faults_injected']} faults injected (" + ", ".join(
                 f"{k[10:]} {v}" for k, v in sorted(c.items()) if k.startswith("net_fault_")) + ")",
             f"              saves ok {c['net_saves_ok']} / failed clearly {c['net_saves_failed_clearly']}; restores "
             f"byte-exact {c['net_restores_byte_exact']} / failed clearly {c['net_loads_failed_clearly']}; wrong bytes "
             f"{c['net_wrong_bytes']}, hangs {c['net_hangs']}, uploads left {c['net_uploads_left']}",
             f"  race:       {c['races']} races ({c['race_local']} local, {c['race_s3']} S3; "
             f"{c['race_world1']}/{c['race_world2']}/{c['race_world4']} with 1/2/4 workers per job), "
             f"{c['race_workers']} workers; one winner, byte-exact: {c['race_winner_byte_exact']}; no winner "
             f"{c['race_no_winner']}, several winners {c['race_several_winners']}, leftovers {c['race_leftovers']}",
             f"  corruption: {c['damages']} damages, {c['damages_detected']} detected, {c['damages_without_effect']} "
             f"without effect (footer padding), silent {c['damage_silent']}; tensor reads refused "
             f"{c['tensor_reads_refused']}, exact {c['tensor_reads_exact']}",
             f"  fuzz:       {c['fuzz_executions']} executions ({c['fuzz_refused']} refused, {c['fuzz_accepted']} accepted)",
             f"  violations: {len(record['violations'])}"]
    for v in record["violations"][:20]:
        lines.append(f"    [{v['phase']}] {v['what'][:300]}  repro={json.dumps(v['repro'])[:300]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
