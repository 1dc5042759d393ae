"""The summary printed at the end of a run: a block per phase that was scheduled (from the
record's counts), then the violations."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from .damage import DAMAGE_KINDS


def summary(record: dict[str, Any]) -> str:
    """The printed summary: a block per phase that was scheduled, then the violations."""
    c = Counter(record["counts"])
    lines = [f"soak: {record['minutes']:g} min, seed {record['seed']}, wall {record['wall_seconds']:g} s "
             f"(bound {record['bound_seconds']:g} s), phases {record['phases']}"]
    for phase, entry in record["schedule"].items():
        if "skipped" in entry:
            lines.append(f"  {phase + ':':11} skipped ({entry['skipped']})")
            continue
        block = _PHASE_SUMMARIES[phase](c, record)
        block[-1] += (f"; hangs {c[f'hangs_{phase}']}, died {c[f'died_{phase}']}, cut off after the grace "
                      f"{c[f'cut_off_{phase}']} (not violations)")
        lines.append(f"  {phase + ':':11} " + block[0])
        lines.extend(f"              {line}" for line in block[1:])
    lines.append(f"  violations: {len(record['violations'])}")
    for v in record["violations"][:20]:
        lines.append(f"    [{v['phase']}] {v['what'][:300]}  repro={json.dumps(v['repro'])[:300]}")
    return "\n".join(lines)


def _crash_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [f"{c['crash_scenarios']} jobs ({c['crash_local']} local, {c['crash_s3']} S3; "
            f"{c['crash_world1']}/{c['crash_world2']}/{c['crash_world4']} with 1/2/4 workers), "
            f"{c['kills_injected']} kills injected ({c['named_point_kills']} at named points, "
            f"{c['random_kills']} random)",
            f"{c['checkpoints_verified']} checkpoints found, {c['restores_byte_exact']} restored byte-exact, "
            f"silent corruptions {c['silent_corruptions']}, unrestorable committed {c['unrestorable_committed']}; "
            f"gc removed {c['gc_removed_objects']} objects, aborted {c['gc_aborted_uploads']} uploads",
            f"restarted jobs {c['resumed_jobs']}: completed {c['resumed_completed']}, blocked by an unrecorded "
            f"checkpoint {c['resume_blocked_by_unrecorded_checkpoint']}; spurious save failures "
            f"{c['spurious_save_failures']}"]


def _network_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    faults = ", ".join(f"{k[10:]} {v}" for k, v in sorted(c.items()) if k.startswith("net_fault_"))
    return [f"{c['net_operations']} operations, {c['net_requests']} requests, {c['net_faults_injected']} faults "
            f"injected ({faults})",
            f"saves ok {c['net_saves_ok']} / failed clearly {c['net_saves_failed_clearly']}; restores byte-exact "
            f"{c['net_restores_byte_exact']} / failed clearly {c['net_loads_failed_clearly']}; wrong bytes "
            f"{c['net_wrong_bytes']}, uploads left {c['net_uploads_left']}"]


def _race_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [f"{c['races']} races ({c['race_local']} local, {c['race_s3']} S3; "
            f"{c['race_world1']}/{c['race_world2']}/{c['race_world4']} with 1/2/4 workers per job), "
            f"{c['race_workers']} workers; one winner, byte-exact: {c['race_winner_byte_exact']}; no winner "
            f"{c['race_no_winner']}, several winners {c['race_several_winners']}, leftovers {c['race_leftovers']}"]


def _corruption_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    by_kind = record["corruption_by_kind"]
    kinds = ", ".join(f"{label} {by_kind[k]['detected']}/{by_kind[k]['effective']} ({by_kind[k]['without_effect']})"
                      for k, label in DAMAGE_KINDS.items())
    return [f"{c['damages']} damages, {c['damages_detected']} detected of {by_kind['total']['effective']} effective, "
            f"{c['damages_without_effect']} without effect (footer padding), silent {c['damage_silent']}; "
            f"tensor reads refused {c['tensor_reads_refused']}, exact {c['tensor_reads_exact']}",
            f"by kind, detected/effective (without effect): {kinds}"]


def _fuzz_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [f"{c['fuzz_executions']} executions ({c['fuzz_refused']} refused, {c['fuzz_accepted']} accepted)"]


_PHASE_SUMMARIES: dict[str, Callable[[Counter[str], dict[str, Any]], list[str]]] = {
    "crash": _crash_summary, "network": _network_summary, "race": _race_summary,
    "corruption": _corruption_summary, "fuzz": _fuzz_summary}
