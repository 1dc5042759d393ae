"""The ``remoteckpt`` command (also ``python -m remoteckpt``).

    remoteckpt inspect CHECKPOINT [--tensor NAME | --all-tensors] [--json]
    remoteckpt ls DIR [--json]
    remoteckpt verify CHECKPOINT [--json]
    remoteckpt cp SRC DST [--overwrite] [--src-endpoint-url URL] [--dst-endpoint-url URL]
                          [--src-profile NAME] [--dst-profile NAME] [--json]
    remoteckpt gc DIR [--older-than SECONDS] [--dry-run] [--json]
    remoteckpt bench [URL] [--gib G] [--tensors N] [--repeat R] [--json]
    remoteckpt --version

Every command also takes ``-v`` (``-vv``, ``-vvv``; before or after the command) and, for S3
URLs, ``--endpoint-url`` and ``--profile`` (else the usual ``AWS_*`` environment).  A
CHECKPOINT is any id a reader takes: ``PREFIX``, ``PREFIX.index``, a directory-style
``step-100/``, a directory's latest (`remoteckpt.locate`).  Long operations draw a progress bar
on a terminal and stay quiet otherwise.

Output: ``--json`` prints one JSON object on stdout, ``"ok": true`` and the command's fields,
or ``"ok": false`` and an ``"error"`` object (type, message, exit code; `verify` lists its
``"problems"`` instead).  Every failure is also one line ``remoteckpt: error: ...`` on
stderr, no traceback (``-vv`` adds it for unexpected errors).

Exit codes: 0 success; 1 a checkpoint error (not found, corrupt, exists, storage failure), or
`verify` found a problem, or stdout was closed early (``remoteckpt inspect P | head``); 2 bad
usage (arguments, an unknown URL scheme, a URL whose package is not installed); 130
interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .errors import CheckpointError, CheckpointExistsError, CheckpointNotFoundError
from .management.directory import gc
from .progress import ProgressBar
from .reader import CheckpointReader
from .tools import saved_model
from .tools.bench import CLI_DESCRIPTION as BENCH_DESCRIPTION
from .tools.bench import format_report, run_bench
from .tools.copy import copy_checkpoint
from .tools.inventory import describe_tensors, human_size, list_directory, verify
from .tools.verbose import configure

log = logging.getLogger("remoteckpt")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments (argparse's errors, raised instead of printed)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("remoteckpt").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _emit_json(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=1, default=str)
    print()


def _values(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [v.decode("utf-8", "backslashreplace") for v in array.reshape(-1)]
    return array.tolist()


def _options(url: str | None, endpoint_url: str | None, profile: str | None) -> dict[str, Any] | None:
    """storage_options for `url` from --endpoint-url / --profile (S3 URLs only)."""
    if not url or not url.startswith(("s3://", "s3a://")):
        return None
    options: dict[str, Any] = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if profile:
        options["profile"] = profile
    return options or None


def _storage(args: argparse.Namespace, url: str | None) -> dict[str, Any] | None:
    return _options(url, args.endpoint_url, args.profile)


# --- commands ---------------------------------------------------------------------------------


def _find_saved_model(args: argparse.Namespace, url: str, options: dict[str, Any] | None) -> saved_model.Found | None:
    """The SavedModel directory or versioned base directory at `url`, else None (a checkpoint)."""
    try:
        return saved_model.find(url, options)
    except CheckpointError:
        return None  # nothing there: the checkpoint commands say what is missing


def _inspect_saved_model(args: argparse.Namespace, found: saved_model.Found) -> int:
    if found.is_base and not found.versions:
        raise CheckpointNotFoundError(f"{found.url}: no complete version (partial: {found.partial})")
    directory = found.directories()[-1]
    info = saved_model.describe(directory, _storage(args, directory))
    if args.json:
        _emit_json({"ok": True, "kind": "saved_model", "versions": found.versions, **info})
        return EXIT_OK
    total = sum(f["bytes"] for f in info["files"])
    versions = f" (newest of versions {', '.join(map(str, found.versions))})" if found.is_base else ""
    print(f"{directory}: SavedModel{versions}, {plural(len(info['files']), 'file')}, {human_size(total)}")
    for line in saved_model.format_graphs(info["meta_graphs"]):
        print(line)
    print(f"\nvariables ({directory.rstrip('/')}/variables/variables): {plural(len(info['variables']), 'tensor')}")
    for row in info["variables"]:
        print(f"tensor_name: {row['name']}  {row['dtype']}{row['shape']}  {plural(row['bytes'], 'byte')}")
    assets = sorted({a for graph in info["meta_graphs"] for a in graph["assets"]})
    if assets:
        print(f"\nassets: {', '.join(assets)}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.tensor is None and not args.all_tensors:
        found = _find_saved_model(args, args.checkpoint, _storage(args, args.checkpoint))
        if found is not None:
            return _inspect_saved_model(args, found)
    with CheckpointReader(args.checkpoint, storage_options=_storage(args, args.checkpoint)) as reader:
        rows = describe_tensors(reader)
        count = len(rows)
        if args.tensor is not None:
            rows = [r for r in rows if r["name"] == args.tensor]
            if not rows:
                reader.get_tensor(args.tensor)  # raises TensorNotFoundError with the message
        show_values = args.all_tensors or args.tensor is not None
        if show_values:
            for row in rows:
                row["value"] = _values(reader.get_tensor(row["name"]))
        shards = reader.index.num_shards
        if args.json:
            _emit_json({"ok": True, "prefix": reader.prefix, "num_shards": shards, "num_tensors": count,
                        "tensors": rows})
            return EXIT_OK
        print(f"{reader.prefix}: {plural(count, 'tensor')}, {plural(shards, 'data file')}")
        for row in rows:
            extra = f"  slices {row['slices']}" if "slices" in row else ""
            print(f"tensor_name: {row['name']}  {row['dtype']}{row['shape']}  {plural(row['bytes'], 'byte')}  "
                  f"shard {','.join(map(str, row['shards']))}{extra}")
            if show_values:
                print(np.asarray(row["value"], dtype=object if row["dtype"] == "string" else None))
    return EXIT_OK


def _ls_versions(args: argparse.Namespace, listing: Any) -> bool:
    """`ls` of a versioned base directory: its complete versions (partial ones counted);
    False when the directory has no version."""
    found = saved_model.list_versions(listing.directory, _storage(args, args.directory))
    if not found:
        return False
    complete = [v for v in found if v.complete]
    partial = [v.number for v in found if not v.complete]
    if args.json:
        _emit_json({"ok": True, "directory": listing.directory, "kind": "saved_model_versions",
                    "versions": [{"version": v.number, "bytes": v.bytes, "mtime": v.mtime} for v in complete],
                    "partial": partial})
        return True
    print(f"{listing.directory}/: {plural(len(complete), 'SavedModel version')} (* = newest)"
          + (f"; partial (remoteckpt gc removes them): {', '.join(map(str, partial))}" if partial else ""))
    print(f"{'':2}{'version':>8}  {'size':>10}  {'modified (UTC)':<19}")
    for v in complete:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.mtime)) if v.mtime else "-"
        print(f"{'*' if v is complete[-1] else ' ':2}{v.number:>8}  {human_size(v.bytes):>10}  {when:<19}")
    return True


def cmd_ls(args: argparse.Namespace) -> int:
    listing = list_directory(args.directory, storage_options=_storage(args, args.directory))
    if any(p.rstrip("/").isdigit() for p in listing.prefixes) and _ls_versions(args, listing):
        return EXIT_OK
    if args.json:
        _emit_json({"ok": True, "directory": listing.directory, "prefixes": listing.prefixes,
                    "checkpoints": [dataclasses.asdict(c) for c in listing.checkpoints]})
        return EXIT_OK
    if not listing.checkpoints and not listing.prefixes:
        print(f"{listing.directory}: empty")
        return EXIT_OK
    print(f"{listing.directory}/: {plural(len(listing.checkpoints), 'checkpoint')}"
          f"{', ' + plural(len(listing.prefixes), 'folder') if listing.prefixes else ''} (* = latest)")
    print(f"{'':2}{'step':>8}  {'size':>10}  {'modified (UTC)':<19}  name")
    for prefix in listing.prefixes:
        print(f"{'':2}{'PRE':>8}  {'':>10}  {'':<19}  {prefix}")
    for c in listing.checkpoints:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.mtime)) if c.mtime else "-"
        step = "-" if c.step is None else str(c.step)
        print(f"{'*' if c.latest else ' ':2}{step:>8}  {human_size(c.bytes):>10}  {when:<19}  {c.name}")
    return EXIT_OK


def _verify_saved_model(args: argparse.Namespace, found: saved_model.Found) -> int:
    bar = ProgressBar("verify")
    try:
        reports = [saved_model.verify_saved_model(d, _storage(args, d), progress=bar) for d in found.directories()]
    finally:
        bar.close()
    ok = all(r.ok for r in reports) and (bool(reports) or not found.is_base)
    if args.json:
        _emit_json({"ok": ok, "kind": "saved_model", "directory": found.url, "partial": found.partial,
                    "versions": [{"ok": r.ok, **dataclasses.asdict(r)} for r in reports]})
        return EXIT_OK if ok else EXIT_FAILED
    if not reports:
        print(f"{found.url}: no complete version; partial: {', '.join(map(str, found.partial))}")
    for r in reports:
        status = "OK" if r.ok else plural(len(r.problems), "problem")
        print(f"{r.prefix}: saved_model.pb read, {plural(r.tensors, 'variable')} of {r.tensors_total} verified, "
              f"{plural(r.bytes, 'byte')}: {status}")
        for problem in r.problems:
            print(f"  - {problem}")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_verify(args: argparse.Namespace) -> int:
    found = _find_saved_model(args, args.checkpoint, _storage(args, args.checkpoint))
    if found is not None:
        return _verify_saved_model(args, found)
    bar = ProgressBar("verify")
    try:
        report = verify(args.checkpoint, storage_options=_storage(args, args.checkpoint), progress=bar)
    finally:
        bar.close()
    if args.json:
        _emit_json({"ok": report.ok, **dataclasses.asdict(report)})
    else:
        checked = (f"{plural(report.tensors, 'tensor')} verified" if report.tensors == report.tensors_total
                   else f"{report.tensors} of {plural(report.tensors_total, 'tensor')} verified")
        status = "OK" if report.ok else plural(len(report.problems), "problem")
        print(f"{report.prefix}: {checked}, {plural(report.bytes, 'byte')}: {status}")
        for problem in report.problems:
            print(f"  - {problem}")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_cp(args: argparse.Namespace) -> int:
    bar = ProgressBar("cp")
    start = time.monotonic()
    source_options = _options(args.source, args.src_endpoint_url or args.endpoint_url,
                              args.src_profile or args.profile)
    destination_options = _options(args.destination, args.dst_endpoint_url or args.endpoint_url,
                                   args.dst_profile or args.profile)
    found = _find_saved_model(args, args.source, source_options)
    try:
        if found is not None:
            copied = saved_model.copy_saved_model(found, args.destination, overwrite=args.overwrite,
                                                  source_options=source_options,
                                                  destination_options=destination_options, progress=bar)
        else:
            report = copy_checkpoint(args.source, args.destination, overwrite=args.overwrite,
                                     source_options=source_options, destination_options=destination_options,
                                     progress=bar, base=True if args.incremental else None)
    finally:
        bar.close()
    seconds = time.monotonic() - start
    if found is not None:
        if args.json:
            _emit_json({"ok": True, "kind": "saved_model", **dataclasses.asdict(copied), "seconds": seconds})
        else:
            what = f"versions {', '.join(map(str, copied.versions))}" if found.is_base else "SavedModel"
            print(f"copied {what} {copied.source} -> {copied.destination}: "
                  f"{plural(copied.tensors_verified, 'variable')} verified, {plural(copied.files, 'file')}, "
                  f"{plural(copied.bytes, 'byte')}, {seconds:.1f} s")
        return EXIT_OK
    log.info("cp: %d bytes in %.3f s", report.bytes, seconds)
    if args.json:
        _emit_json({"ok": True, **dataclasses.asdict(report), "seconds": seconds})
    else:
        by_store = f" ({plural(report.copied, 'byte')} copied by the destination store)" if report.copied else ""
        print(f"copied {report.source} -> {report.destination}: {plural(report.tensors_verified, 'tensor')} "
              f"verified, {plural(report.files, 'file')}, {plural(report.bytes, 'byte')}{by_store}, {seconds:.1f} s")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    directory = args.directory
    if "://" not in directory and not os.path.isdir(directory):
        raise CheckpointNotFoundError(f"{os.path.abspath(directory)}: no such directory")
    report = gc(directory, older_than=args.older_than, dry_run=args.dry_run,
                storage_options=_storage(args, directory))
    if args.json:
        _emit_json({"ok": True, **dataclasses.asdict(report), "dry_run": args.dry_run})
        return EXIT_OK
    removed = "would remove" if args.dry_run else "removed"
    line = f"{removed} {plural(len(report.removed), 'object')}, {plural(report.bytes_freed, 'byte')}"
    if report.aborted_uploads or directory.startswith(("s3://", "s3a://")):  # multipart uploads: S3's
        line += (f"; {'would abort' if args.dry_run else 'aborted'} "
                 f"{plural(len(report.aborted_uploads), 'unfinished multipart upload')}")
    if report.skipped:
        line += f"; left {len(report.skipped)} in place"
    print(line)
    for key in report.removed + report.aborted_uploads:
        print(f"  {key}")
    for key, why in report.skipped:
        print(f"  left {key}: {why}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_bench(args.url, gib=args.gib, tensors=args.tensors, repeat=args.repeat,
                       storage_options=_storage(args, args.url), log=say)
    if args.json:
        _emit_json({"ok": True, **report.as_dict()})
    else:
        print(format_report(report))
    return EXIT_OK


# --- the parser -------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, endpoint: bool = True) -> None:
    """Options every command takes (after the command; -v also before it)."""
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (errors too: \"ok\": false and an \"error\" object)")
    p.add_argument("-v", "--verbose", dest="verbose_sub", action="count", default=0,
                   help="log to stderr: -v steps and timings, -vv every S3 request, -vvv botocore's wire log "
                        "(credentials blanked)")
    if endpoint:
        p.add_argument("--endpoint-url", metavar="URL",
                       help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS); S3 URLs only")
        p.add_argument("--profile", metavar="NAME",
                       help="AWS profile for credentials and region (default: $AWS_PROFILE or the default "
                            "chain); S3 URLs only")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="remoteckpt", description="TensorFlow checkpoints on disk and S3.",
                     epilog="exit codes: 0 ok; 1 checkpoint error, failed verify or closed output; 2 usage; "
                            "130 interrupted. Each command has its own --help.")
    parser.add_argument("--version", action="version", version=f"remoteckpt {__version__}",
                        help="print the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log to stderr: -v steps and timings, -vv every S3 request, -vvv botocore's wire log "
                             "(credentials blanked)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of these (remoteckpt COMMAND --help for its options):")

    p = sub.add_parser("inspect", help="list a checkpoint's tensors (like TF's inspect_checkpoint)",
                       description="List a checkpoint's tensors: name, dtype, shape, bytes, data file, slices. "
                                   "Of a SavedModel directory (or a base directory's newest version): what "
                                   "`saved_model_cli show --all` prints (signatures, ops, concrete functions), "
                                   "then the variables.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="PREFIX (PREFIX.index, a directory-style DIR/, or a directory's latest also work)")
    values = p.add_mutually_exclusive_group()
    values.add_argument("--tensor", metavar="NAME", help="print this tensor's value (only)")
    values.add_argument("--all-tensors", action="store_true", help="print every tensor's value")
    _common(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ls", help="checkpoints and folders in a directory (* = latest)",
                       description="List a directory: its committed checkpoints (TensorFlow's PREFIX form and "
                                   "directory-style SUB/ckpt), oldest first, with step, size and time, * marking "
                                   "the latest; and its other folders (PRE), as aws s3 ls does. A directory or "
                                   "bucket that does not exist is an error.")
    p.add_argument("directory", metavar="DIR", help="a local directory, s3://bucket[/path] or another URL")
    _common(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("verify", help="read everything, check every checksum",
                       description="Read every tensor of a checkpoint and check every checksum; every damaged "
                                   "tensor is reported. Exit code 1 when anything is wrong.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="PREFIX (PREFIX.index, a directory-style DIR/, or a directory's latest also work)")
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("cp", help="copy a checkpoint between stores, verified, committed at the destination",
                       description="Copy a checkpoint between any two stores, every tensor's checksum checked "
                                   "on the way, committed at the destination like a save (whole or not at all). "
                                   "As with aws s3 cp, a DST ending in / (or a bucket, or an existing folder) "
                                   "means into that folder, keeping the checkpoint's name.")
    p.add_argument("source", metavar="SRC",
                   help="the checkpoint: PREFIX (PREFIX.index, a directory-style DIR/, or a directory's latest "
                        "also work)")
    p.add_argument("destination", metavar="DST",
                   help="the new checkpoint's PREFIX, or a folder (DIR/) to copy it into under its own name")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a committed checkpoint at the destination (retired first, its index first)")
    p.add_argument("--incremental", action="store_true",
                   help="tensors unchanged since the destination directory's latest checkpoint (a source saved "
                        "with incremental=True) are copied by the destination store (S3 UploadPartCopy) instead "
                        "of being sent")
    _common(p)
    for side, name in (("src", "SRC"), ("dst", "DST")):
        p.add_argument(f"--{side}-endpoint-url", metavar="URL",
                       help=f"S3 endpoint for {name} only (overrides --endpoint-url)")
        p.add_argument(f"--{side}-profile", metavar="NAME", help=f"AWS profile for {name} only (overrides --profile)")
    p.set_defaults(func=cmd_cp)

    p = sub.add_parser("gc", help="remove leftovers of crashed saves (never a committed checkpoint)",
                       description="Remove what crashed saves left in a directory: data files without an index, "
                                   "staging objects, dead claims, unfinished multipart uploads (S3), partial "
                                   "SavedModel versions (N/ without N/saved_model.pb). Never a committed "
                                   "checkpoint or a complete version, never a live save's files.")
    p.add_argument("directory", metavar="DIR", help="a local directory, s3://bucket[/path] or another URL")
    p.add_argument("--older-than", type=float, default=3600.0, metavar="SECONDS",
                   help="only leftovers older than this (default 3600: younger ones may be a save in progress)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed, and what is left and why")
    _common(p)
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("bench", help="save and restore throughput at a storage location",
                       description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", nargs="?", metavar="URL",
                   help="s3://bucket/prefix, a local directory or any URL (default: a temporary directory)")
    p.add_argument("--gib", type=float, default=1.0, help="GiB of float32 tensors (default 1)")
    p.add_argument("--tensors", type=int, default=32, help="number of tensors (default 32)")
    p.add_argument("--repeat", type=int, default=2, help="saves and restores; the best counts (default 2)")
    _common(p)
    p.set_defaults(func=cmd_bench)
    return parser


# --- running ----------------------------------------------------------------------------------


def _failure(exc: BaseException, verbosity: int) -> tuple[int, str]:
    """(exit code, one-line message) for an exception out of a command."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, CheckpointError):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, ImportError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, ValueError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, OSError):
        what = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return EXIT_FAILED, f"{what}{exc.strerror or exc}" if exc.strerror else f"{type(exc).__name__}: {exc}"
    hint = "" if verbosity >= 2 else " (remoteckpt -vv shows the traceback)"
    return EXIT_FAILED, f"internal error: {type(exc).__name__}: {exc}{hint}"


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(line.strip() for line in lines) if len(lines) > 1 else (lines[0] if lines else text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    wants_json = "--json" in argv
    verbosity = 0
    args: argparse.Namespace | None = None
    restore = None
    try:
        try:
            args = _parser().parse_args(argv)
            verbosity = args.verbose + args.verbose_sub
            restore = configure(verbosity)
            code = int(args.func(args))
        except KeyboardInterrupt:
            print("remoteckpt: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            raise
        except Exception as exc:
            code, message = _failure(exc, verbosity)
            if code == EXIT_FAILED and message.startswith("internal error") and verbosity >= 2:
                traceback.print_exc()
            if isinstance(exc, CheckpointExistsError) and args is not None and args.command == "cp":
                message = message.replace("pass overwrite=True", "pass --overwrite")
            message = _first_line(message)
            print(f"remoteckpt: error: {message}", file=sys.stderr)
            if wants_json:
                _emit_json({"ok": False, "error": {"type": type(exc).__name__, "message": message,
                                                   "exit_code": code}})
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader of our output went away (`remoteckpt inspect P | head`): nothing to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        if restore is not None:
            restore()
