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


def _life_units(c: Counter[str], phase: str) -> str:
    """The line every lifecycle phase starts with: its units, backends, world sizes, skews, hosts."""
    return (f"{c[f'{phase}_units']} units ({c[f'{phase}_local']} local, {c[f'{phase}_s3']} S3; "
            f"{c[f'{phase}_world2']}/{c[f'{phase}_world3']}/{c[f'{phase}_world4']} with 2/3/4 workers; "
            f"clocks skewed by hours {c[f'{phase}_skewed']}, next job from other hosts {c[f'{phase}_other_hosts']})")


def _seconds(c: Counter[str], name: str) -> str:
    return f"{c[name] / 1000:.2f} s" if name in c else "-"


def _leftovers(c: Counter[str], phase: str) -> str:
    kinds = ", ".join(f"{k[len(phase) + 10:]} {v}" for k, v in sorted(c.items()) if k.startswith(f"{phase}_leftover_"))
    return f"leftovers by kind: {kinds or 'none'}"


def _retry_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [_life_units(c, "retry"),
            f"failed attempts whose ranks all raised one error {c['retry_one_error']}; retries committed "
            f"{c['retry_committed']}, at once {c['retry_at_once']} (slowest coordinator "
            f"{_seconds(c, 'retry_max_ms_coordinator')}), byte-exact {c['retry_byte_exact']}, only the checkpoint's "
            f"files left {c['retry_clean']} ({_leftovers(c, 'retry')})"]


def _takeovers(c: Counter[str], phase: str) -> str:
    pct = f"{c[f'{phase}_min_pct_lease_to_takeover'] / 100:.2f}" if f"{phase}_min_pct_lease_to_takeover" in c else "-"
    return (f"latest commit {_seconds(c, f'{phase}_max_ms_past_lease')} past one lease after the dead attempt's last "
            f"renewal (late {c[f'{phase}_late_commits']}); watched takeovers {c[f'{phase}_watched_takeovers']} "
            f"(earliest {pct} leases after the last renewal), early {c[f'{phase}_early_takeovers']}")


def _found_committed(c: Counter[str], phase: str) -> str:
    """The units whose first job had committed before it was killed (or paused)."""
    return (f"committed before the kill {c[f'{phase}_found_committed']} (restored byte-exact "
            f"{c[f'{phase}_found_committed_byte_exact']}; the next job's ranks not all CheckpointExistsError "
            f"{c[f'{phase}_found_committed_disagree']})")


def _restart_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [_life_units(c, "restart"),
            f"kills at named points {c['restart_named']} (died there {c['restart_died_at_point']}), at random times "
            f"{c['restart_random']}; " + _found_committed(c, "restart"),
            f"restarts committed {c['restart_committed']}, byte-exact {c['restart_byte_exact']}, only the "
            f"checkpoint's files left {c['restart_clean']} ({_leftovers(c, 'restart')})",
            _takeovers(c, "restart")]


def _zombie_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [_life_units(c, "zombie"),
            f"tries {c['zombie_units']} ({c['zombie_named']} at named points, {c['zombie_random']} at random "
            f"times), paused {c['zombie_paused']} (coordinators {c['zombie_coordinator']}), ended first "
            f"{c['zombie_not_paused']}; " + _found_committed(c, "zombie"),
            f"restarts committed {c['zombie_restart_committed']}; woken zombies ending with a remoteckpt error "
            f"{c['zombie_remoteckpt_errors']}; committed bytes changed {c['zombie_committed_bytes_changed']}; "
            f"restored byte-exact after the wake {c['zombie_byte_exact']}; objects left for gc "
            f"{c['zombie_leftover_objects']}, all collected {c['zombie_leftovers_collected']}",
            _takeovers(c, "zombie")]


def _long_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    leases = (f"{c['long_min_leases_x10'] / 10:g} to {c['long_max_leases_x10'] / 10:g} leases"
              if "long_min_leases_x10" in c else "-")
    return [_life_units(c, "long"),
            f"long saves committed {c['long_committed']} ({leases} each), byte-exact {c['long_byte_exact']}, only "
            f"the checkpoint's files left {c['long_clean']}; taken over {c['long_taken_over']}",
            f"the other job's tries {c['long_other_jobs']}: ranks busy {c['long_other_CheckpointBusyError']}, "
            f"exists (after the commit) {c['long_other_CheckpointExistsError']}; long saves that met a busy try "
            f"{c['long_busy_seen']}"]


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


def _tiers_summary(c: Counter[str], record: dict[str, Any]) -> list[str]:
    return [f"{c['tier_jobs']} jobs ({c['tier_world1']}/{c['tier_world2']}/{c['tier_world4']} with 1/2/4 workers), "
            f"{c['tier_kills_injected']} kills injected; {c['tier_locally_committed']} checkpoints committed "
            f"locally at the kill, {c['tier_remote_checkpoints']} remote after the restart, "
            f"{c['tier_restores_byte_exact']} restored byte-exact; silent corruptions {c['tier_silent_corruptions']}",
            f"per-host: {c['host_tier_jobs']} jobs ({c['host_tier_w1x1']}/{c['host_tier_w2x1']}/{c['host_tier_w4x2']}/"
            f"{c['host_tier_w4x1']} with 1 worker / 2 hosts of 1 / 2 of 2 / 4 of 1), {c['host_tier_kills_injected']} "
            f"kills injected; at the kill {c['host_tier_locally_committed']} checkpoints committed locally only "
            f"({c['host_tier_dropped']} of them dropped at the restart), {c['host_tier_remote_committed']} remotely; "
            f"{c['host_tier_remote_checkpoints']} remote checkpoints checked, {c['host_tier_restores_byte_exact']} "
            f"restored byte-exact; silent corruptions {c['host_tier_silent_corruptions']}"]


_PHASE_SUMMARIES: dict[str, Callable[[Counter[str], dict[str, Any]], list[str]]] = {
    "crash": _crash_summary, "network": _network_summary, "race": _race_summary, "retry": _retry_summary,
    "restart": _restart_summary, "zombie": _zombie_summary, "long": _long_summary,
    "corruption": _corruption_summary, "fuzz": _fuzz_summary, "tiers": _tiers_summary}
