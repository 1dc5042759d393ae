"""Mutation run: apply each mutation of `catalogue.py` to a private copy of the tree and run
its fast tests; a mutation the tests do not fail "survives".

    python tests/mutation/run.py                 every mutation (make mutate)
    python tests/mutation/run.py --only merge    mutations whose id contains "merge"
    python tests/mutation/run.py --check         only check that every snippet is still found
    python tests/mutation/run.py --list          list the catalogue
    python tests/mutation/run.py --json out.json also write the results as JSON
    python tests/mutation/run.py --only crc --tests tests/test_api.py
                                                 those mutations against other test files

The tree is never changed: the library, tests and project files are copied to a temporary
directory once, each mutant is written there (and the original restored after its run), and
the copy is removed at the end, also on Ctrl-C or SIGTERM.  Tests run with the copy first on
``sys.path`` and without bytecode caches, so they always import the mutant.

Before any mutant, the union of the test files runs once on the unmutated copy (the baseline):
a failing baseline makes every result meaningless, so the run stops there.  A catalogue entry
whose original snippet is not found exactly once in its file is an error that stops the run
before anything is run (the code changed under the catalogue: update the entry).

Outcomes: "killed" (a test failed or errored, or the run exceeded its timeout: a hang is a
detected bug too) or "survived" (every test passed).  Exit status: 0 when every mutation was
killed, 1 when some survived, 2 for a catalogue error or a failing baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalogue import CATALOGUE, Mutation  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("remoteckpt", "tests", "protos", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "mutation")
TIMEOUT = 180.0
"""Seconds one mutant's tests may take before the run counts it as killed by a hang."""


class CatalogueError(Exception):
    """A mutation that cannot be applied: its snippet is gone, ambiguous, or breaks the syntax."""


@dataclass
class Result:
    id: str
    file: str
    status: str  # "killed" | "survived"
    seconds: float
    detail: str  # the first failing test, "timeout", or ""


def mutate(source: str, mutation: Mutation) -> str:
    """`source` with every edit of `mutation` applied; each original must occur exactly once."""
    out = source
    for original, replacement in mutation.edits:
        count = out.count(original)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            raise CatalogueError(f"{mutation.id}: snippet {where} in {mutation.file}:\n    {original!r}")
        out = out.replace(original, replacement)
    return out


def check_catalogue(root: Path, mutations: Sequence[Mutation]) -> None:
    """Every mutation applies to the tree at `root` and compiles; ids are unique; test files exist."""
    errors = []
    seen: set[str] = set()
    for m in mutations:
        if m.id in seen:
            errors.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        path = root / m.file
        if not path.is_file():
            errors.append(f"{m.id}: no file {m.file}")
            continue
        try:
            mutated = mutate(path.read_text(), m)
            compile(mutated, str(path), "exec")
        except CatalogueError as exc:
            errors.append(str(exc))
        except SyntaxError as exc:
            errors.append(f"{m.id}: the mutant does not compile: {exc}")
        for test in m.tests:
            if not (root / test.split("::")[0]).is_file():
                errors.append(f"{m.id}: no test file {test}")
    if errors:
        raise CatalogueError("\n".join(errors))


@contextmanager
def private_copy() -> Iterator[Path]:
    """A temporary copy of what the tests need, removed afterwards whatever happens."""
    directory = Path(tempfile.mkdtemp(prefix="remoteckpt-mutation-"))
    try:
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, directory / name, ignore=IGNORED)
            elif source.exists():
                shutil.copy2(source, directory / name)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def check_imports_copy(copy: Path) -> None:
    """The tests in `copy` must import the copy's remoteckpt (not an installed one)."""
    found = subprocess.run([sys.executable, "-c", "import remoteckpt; print(remoteckpt.__file__)"], cwd=copy,
                           env=_environment(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        raise CatalogueError(f"the copy imports remoteckpt from {found}, not from {copy}")


MARKER = "REMOTECKPT_MUTATION_COPY"
"""Set in the environment of every test run to the copy's path: how `_sweep` recognises what
those runs started (an S3 server runs in a session of its own, so killing the run's process
group does not reach it)."""


def _environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[MARKER] = str(copy)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), str(copy / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutant of the same size and mtime second must not reuse a .pyc
    env.pop("REMOTECKPT_CRASH_AT", None)
    return env


def run_tests(copy: Path, tests: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """Run pytest on `tests` in `copy`, stopping at the first failure.  Returns (exit code, or
    None on timeout; output).  On timeout the run gets SIGINT first, so that its fixtures (the
    S3 server) are torn down, and its process group SIGKILL 30 s later; whatever it started
    and left behind is then killed by pid (`_sweep`)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    proc = subprocess.Popen(command, cwd=copy, env=_environment(copy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        _stop(proc)
        return None, ""
    finally:
        if proc.poll() is None:  # interrupted: never leave the child running
            _stop(proc)
        _sweep(copy)


def _stop(proc: subprocess.Popen[str]) -> None:
    try:
        os.kill(proc.pid, signal.SIGINT)  # pytest tears its fixtures down (the S3 server stops)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its group: the pytest run we started and its workers
    except ProcessLookupError:
        pass
    proc.communicate()


def _sweep(copy: Path) -> None:
    """Kill, by pid, the processes our test runs in `copy` started and left behind (Linux:
    those whose environment carries `MARKER` = `copy`)."""
    if not Path("/proc").is_dir():
        return
    needle = f"{MARKER}={copy}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            workdir = Path(os.readlink(entry / "cwd"))
            os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone, or not ours to read
        if workdir.name.startswith("remoteckpt-seaweed-") and workdir.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(workdir, ignore_errors=True)  # the killed S3 server's data


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        match = re.match(r"(FAILED|ERROR) (\S+)", line)
        if match:
            return match.group(2)
    return ""


def run_mutation(copy: Path, mutation: Mutation, timeout: float) -> Result:
    path = copy / mutation.file
    original = path.read_text()
    started = time.monotonic()
    try:
        path.write_text(mutate(original, mutation))
        code, output = run_tests(copy, mutation.tests, timeout)
    finally:
        path.write_text(original)
    seconds = time.monotonic() - started
    if code is None:
        return Result(mutation.id, mutation.file, "killed", seconds, "timeout")
    if code == 0:
        return Result(mutation.id, mutation.file, "survived", seconds, "")
    if code in (1, 2):  # tests failed, or collection failed (the mutant breaks an import)
        return Result(mutation.id, mutation.file, "killed", seconds, _first_failure(output) or f"pytest exit {code}")
    raise CatalogueError(f"{mutation.id}: pytest exited {code} (tests not found?):\n{output[-2000:]}")


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="ids containing this text (repeatable)")
    parser.add_argument("--check", action="store_true", help="check that the catalogue applies, run nothing")
    parser.add_argument("--list", action="store_true", help="list the mutations")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per mutant (default %(default)s)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--tests", action="append", default=[],
                        help="run these test files instead of each mutation's own (repeatable)")
    args = parser.parse_args(argv)
    chosen = [m for m in CATALOGUE if not args.only or any(s in m.id for s in args.only)]
    if args.tests:
        chosen = [replace(m, tests=tuple(args.tests)) for m in chosen]
    try:
        check_catalogue(ROOT, CATALOGUE)
    except CatalogueError as exc:
        print(f"catalogue error (update tests/mutation/catalogue.py):\n{exc}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.id:32} {m.file:34} {m.why}")
        return 0
    if args.check:
        print(f"catalogue OK: {len(CATALOGUE)} mutations apply to {ROOT}")
        return 0
    if not chosen:
        print("no mutation matches", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    results: list[Result] = []
    started = time.monotonic()
    try:
        with private_copy() as copy:
            check_imports_copy(copy)
            if not args.no_baseline:
                tests = sorted({t for m in chosen for t in m.tests})
                print(f"baseline: {len(tests)} test files on the unmutated tree ...", flush=True)
                code, output = run_tests(copy, tests, args.timeout * 4)
                if code != 0:
                    print(output[-4000:] if output else "baseline timed out", file=sys.stderr)
                    print("baseline failed: fix the tests first", file=sys.stderr)
                    return 2
            for i, mutation in enumerate(chosen, 1):
                result = run_mutation(copy, mutation, args.timeout)
                results.append(result)
                mark = "KILLED  " if result.status == "killed" else "SURVIVED"
                print(f"[{i:3}/{len(chosen)}] {mark} {result.id:32} {result.seconds:6.1f}s  {result.detail}",
                      flush=True)
    except CatalogueError as exc:
        print(f"catalogue error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted after {len(results)} mutations; the tree was not changed", file=sys.stderr)
        return 130
    return report(results, time.monotonic() - started, args.json)


def report(results: list[Result], seconds: float, json_path: Path | None) -> int:
    killed = sum(r.status == "killed" for r in results)
    survivors = [r for r in results if r.status == "survived"]
    score = 100.0 * killed / len(results)
    print(f"\n{killed} of {len(results)} mutations killed ({score:.1f}%) in {seconds / 60:.1f} min")
    by_file: dict[str, list[int]] = {}
    for r in results:
        counts = by_file.setdefault(r.file, [0, 0])
        counts[0] += r.status == "killed"
        counts[1] += 1
    for file, (k, n) in sorted(by_file.items()):
        print(f"  {file:40} {k:3} / {n}")
    if survivors:
        print("survivors:")
        why = {m.id: m.why for m in CATALOGUE}
        for r in survivors:
            print(f"  {r.id} ({r.file}): {why[r.id]}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"killed": killed, "total": len(results), "score": round(score, 1),
                                         "seconds": round(seconds), "results": [asdict(r) for r in results]},
                                        indent=1) + "\n")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
