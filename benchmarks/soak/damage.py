"""The phases that damage bytes: corruption (bit flips, byte changes, truncations and swapped
shards in a 2-shard checkpoint, each to be refused when the tensor is read; counted per kind)
and fuzz (mutated indexes and state files through their decoders)."""

from __future__ import annotations

import itertools
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from .runtime import Phase, Tally, run_units, test_module

DAMAGE_KINDS = {"bit": "bit flips", "byte": "byte changes", "truncate": "truncations", "swap": "swapped shards"}


# --- corruption ---------------------------------------------------------------------------------

def corruption_phase(ph: Phase, workdir: str) -> None:
    tc = test_module("test_corruption")

    state: dict[str, Any] = {}

    def one() -> None:
        if not state:
            with ph.unit({"step": "save the pristine checkpoints"}):
                state.update(_pristine(tc, workdir))
        which = ph.rng.choice(list(state["files"]))
        kind = ph.rng.choice(list(DAMAGE_KINDS) if which != "index" else ["bit", "byte", "truncate"])
        data = bytearray(state["pristine"][which])
        pos = ph.rng.randrange(len(data))
        if kind == "bit":
            data[pos] ^= 1 << ph.rng.randrange(8)
        elif kind == "byte":
            data[pos] ^= ph.rng.randrange(1, 256)
        elif kind == "truncate":
            data = data[:pos]
        else:
            data = bytearray(state["others"][which])
        repro = {"file": which, "kind": kind, "position": pos}
        with ph.unit(repro):
            damage_once(ph.tally, tc, state, which, kind, bytes(data), repro)

    run_units(ph, one)


def _pristine(tc: Any, workdir: str) -> dict[str, Any]:
    """A 2-shard checkpoint to damage, and another of the same layout to swap shards from."""
    directory = Path(tempfile.mkdtemp(prefix="soak-corrupt-", dir=workdir))
    for name, seed in (("ck", 1), ("other", 2)):
        tc.save_two_workers(str(directory / name), seed)
    files = {"index": directory / "ck.index", "data0": tc.data_path(directory, 0), "data1": tc.data_path(directory, 1)}
    return {"directory": directory, "want": tc.expected(1), "files": files,
            "pristine": {k: p.read_bytes() for k, p in files.items()},
            "others": {"data0": tc.data_path(directory, 0, "other").read_bytes(),
                       "data1": tc.data_path(directory, 1, "other").read_bytes()}}


def damage_once(tally: Tally, tc: Any, state: dict[str, Any], which: str, kind: str, damaged: bytes,
                repro: dict[str, Any]) -> None:
    """Write `damaged` over file `which`, read every tensor, count the outcome (in total and for
    `kind`), put the pristine bytes back."""
    import remoteckpt
    from remoteckpt.errors import CheckpointError, CorruptCheckpointError

    state["files"][which].write_bytes(damaged)
    detected = silent = exact = 0
    try:
        with remoteckpt.CheckpointReader(state["directory"] / "ck", options=tc.OPTIONS) as reader:
            for name in state["want"]:
                try:
                    got = reader.get_tensor(name)
                except CorruptCheckpointError as exc:
                    detected += 1
                    if repr(name) not in str(exc):
                        tally.violation("corruption", f"error does not name {name!r}: {exc}", repro)
                except CheckpointError:
                    detected += 1
                else:
                    if tc.same(got, state["want"][name]):
                        exact += 1
                    else:
                        silent += 1
                        tally.violation("corruption", f"SILENT: {name} differs", repro)
    except CorruptCheckpointError:
        detected += 1  # refused at open: the index itself
    except Exception as exc:  # noqa: BLE001
        tally.violation("corruption", f"foreign exception {type(exc).__name__}: {exc}", repro)
    no_effect = int(detected == 0 and silent == 0)
    tally.add(damages=1, **{f"damage_{kind}_{which}": 1}, damages_detected=int(detected > 0),
              damages_without_effect=no_effect, damage_silent=silent,
              tensor_reads_refused=detected, tensor_reads_exact=exact,
              **{f"damages_{kind}": 1, f"damages_{kind}_detected": int(detected > 0),
                 f"damages_{kind}_without_effect": no_effect, f"damages_{kind}_silent": int(silent > 0)})
    state["files"][which].write_bytes(state["pristine"][which])


def corruption_by_kind(counts: Counter[str]) -> dict[str, dict[str, int]]:
    """Damages, effective ones (all but those without effect), detected, without effect and
    silent, per kind of damage and in total."""
    def row(prefix: str, silent: int) -> dict[str, int]:
        damages, without = counts[prefix], counts[f"{prefix}_without_effect"]
        return {"damages": damages, "effective": damages - without, "detected": counts[f"{prefix}_detected"],
                "without_effect": without, "silent": silent}

    table = {kind: row(f"damages_{kind}", counts[f"damages_{kind}_silent"]) for kind in DAMAGE_KINDS}
    table["total"] = row("damages", sum(t["silent"] for t in table.values()))
    return table


# --- fuzz ---------------------------------------------------------------------------------------

FUZZ_BATCH = 200
"""Fuzz inputs per unit of work (one unit per input would cost more in bookkeeping than in decoding)."""


def fuzz_phase(ph: Phase) -> None:
    from remoteckpt.management.state import format_state

    tf = test_module("test_fuzz")

    seeds = list(tf.SEEDS)
    states = [format_state("ck-30", ["ck-10", "ck-20", "ck-30"], [1.0, 2.0, 3.0], 0.5),
              format_state("../x", ["/etc/passwd", "s3://other/x"])]
    batches = itertools.count()

    def one() -> None:
        with ph.unit({"batch": next(batches)}):
            fuzz_batch(ph.tally, ph.rng, seeds, states)

    run_units(ph, one)


def fuzz_batch(tally: Tally, rng: random.Random, seeds: list[bytes], states: list[bytes]) -> None:
    """FUZZ_BATCH mutated indexes and state files through their decoders."""
    from remoteckpt.errors import CheckpointError
    from remoteckpt.format.bundle import decode_index
    from remoteckpt.management.state import parse_state

    for _ in range(FUZZ_BATCH):
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
