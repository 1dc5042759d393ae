"""Peak memory, measured: each case runs in a fresh interpreter, which resets its peak RSS
(``/proc/self/clear_refs``) right before the operation and reports the peak (``VmHWM``) above
the RSS it had then.  What remoteckpt holds beyond the caller's arrays is the memory budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from remoteckpt.format.bundle import BundleEntry, encode_index, make_header
from remoteckpt.format.coding import crc32c, crc32c_combine, mask_crc

MiB = 2**20
SLACK = 64 * MiB
"""Allowed beyond the budget: the interpreter's own allocations while it works (numpy
temporaries, task objects, the loop), which are not buffers of the checkpoint's bytes."""

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")]


def peak_growth(setup: str, operation: str) -> dict[str, int]:
    """Run `setup` then `operation` in a fresh interpreter; the peak RSS during `operation`
    above the RSS before it (bytes), and the RSS before it."""
    script = "\n".join([
        "import json",
        "def status(field):",
        "    with open('/proc/self/status') as f:",
        "        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ':'))",
        textwrap.dedent(setup),
        "with open('/proc/self/clear_refs', 'w') as f:",
        "    f.write('5')  # resets VmHWM to the current RSS",
        "before = status('VmRSS')",
        textwrap.dedent(operation),
        "print(json.dumps({'growth': status('VmHWM') - before, 'before': before}))",
    ])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def zeros_crc(size: int) -> int:
    """CRC32C of `size` zero bytes, by doubling (crc32c_combine), without the bytes."""
    unit = 1 * MiB
    assert size % unit == 0
    crc, done = 0, 0
    power, power_size = crc32c(bytes(unit)), unit
    remaining = size // unit
    while remaining:
        if remaining & 1:
            crc, done = crc32c_combine(crc, power, power_size), done + power_size
        power, power_size = crc32c_combine(power, power, power_size), 2 * power_size
        remaining >>= 1
    assert done == size
    return crc


def test_zeros_crc_is_the_crc_of_zeros() -> None:
    assert zeros_crc(5 * MiB) == crc32c(bytes(5 * MiB))


def tensorflow_style_checkpoint(directory: Path, rows: int, columns: int) -> str:
    """A float32 [rows, columns] tensor of zeros in TF's layout (no chunk CRCs), its data
    file sparse (truncate), its index written as TensorFlow writes one."""
    size = rows * columns * 4
    entry = BundleEntry(dtype=1, shard_id=0, offset=0, size=size, crc32c=mask_crc(zeros_crc(size)))
    entry.shape.dim.add(size=rows)
    entry.shape.dim.add(size=columns)
    with open(directory / "ck.data-00000-of-00001", "wb") as out:
        out.truncate(size)
    with open(directory / "ck.index", "wb") as out:
        encode_index(make_header(1), {b"big": entry}, out)
    return str(directory / "ck")


def test_reading_one_row_of_a_4_gib_tensorflow_tensor_stays_within_the_budget(tmp_path: Path) -> None:
    """The entry has one CRC for its 4 GiB: the read streams all of it through the CRC, a
    block at a time under the budget, and keeps the one row asked for."""
    prefix = tensorflow_style_checkpoint(tmp_path, 2**20, 1024)
    budget = 256 * MiB  # IOOptions' default
    result = peak_growth(
        f"""
        import numpy as np, remoteckpt
        reader = remoteckpt.CheckpointReader({prefix!r})
        """,
        """
        row = reader.get_slice("big", (slice(123456, 123457),))
        assert row.shape == (1, 1024) and not row.any()
        """)
    assert result["growth"] <= budget + SLACK, f"{result['growth'] / MiB:.0f} MiB above the RSS before the read"


def test_a_damaged_byte_outside_the_row_read_is_still_found(tmp_path: Path) -> None:
    """The same streamed read, small: a byte far from the row asked for is damaged; the
    entry's CRC, taken over every block, says so."""
    import remoteckpt

    prefix = tensorflow_style_checkpoint(tmp_path, 2**12, 1024)
    with open(tmp_path / "ck.data-00000-of-00001", "r+b") as data:
        data.seek(3 * MiB + 17)
        data.write(b"\x01")
    reader = remoteckpt.CheckpointReader(prefix, options=remoteckpt.IOOptions(memory_budget=1 * MiB))
    with pytest.raises(remoteckpt.CorruptCheckpointError, match="'big'.*checksum mismatch"):
        reader.get_slice("big", (slice(5, 6),))


@pytest.mark.parametrize("layout", ["transposed", "big-endian"])
def test_saving_an_array_laid_out_otherwise_stays_within_the_budget(tmp_path: Path, layout: str) -> None:
    """A 1 GiB array that is not C-contiguous little-endian is converted a block at a time
    as it is written: the save holds about two blocks beyond it, not a copy of it."""
    budget = 64 * MiB
    make = {"transposed": "np.ones((16384, 16384), np.float32).T",
            "big-endian": "np.ones((16384, 16384), '>f4')"}[layout]
    result = peak_growth(
        f"""
        import numpy as np, remoteckpt
        array = {make}
        assert not (array.flags.c_contiguous and array.dtype.byteorder != ">")
        options = remoteckpt.IOOptions(memory_budget={budget})
        remoteckpt.save({{"warm": np.ones(4, np.float32)}}, {str(tmp_path / "warm")!r}, options=options)
        """,
        f"""
        remoteckpt.save({{"t": array}}, {str(tmp_path / "ck")!r}, options=options)
        """)
    assert result["growth"] <= budget + SLACK, f"{result['growth'] / MiB:.0f} MiB above the RSS before the save"
    import remoteckpt

    stored = remoteckpt.CheckpointReader(tmp_path / "ck").get_slice("t", (slice(100, 102), slice(5000, 5003)))
    np.testing.assert_array_equal(stored, np.ones((2, 3), np.float32))


def test_a_copy_to_s3_stays_within_the_budget(tmp_path: Path, s3_prefix: str) -> None:
    """`remoteckpt cp` (the drain of a local tier is the same copy) of a 512 MiB data file to
    S3 under a 64 MiB budget: pieces fetched, verified and handed to the upload are given back
    once their part is sent, and nothing else keeps them; the copy never holds the file."""
    prefix = tensorflow_style_checkpoint(tmp_path, 2**17, 1024)
    budget = 64 * MiB
    result = peak_growth(
        f"""
        import remoteckpt
        from remoteckpt.tools.copy import copy_checkpoint
        options = remoteckpt.IOOptions(memory_budget={budget})
        """,
        f"""
        copy_checkpoint({prefix!r}, {s3_prefix + "/copied"!r}, options=options)
        """)
    assert result["growth"] <= budget + SLACK, f"{result['growth'] / MiB:.0f} MiB above the RSS before the copy"
    import remoteckpt

    with remoteckpt.CheckpointReader(s3_prefix + "/copied") as reader:
        assert not reader.get_slice("big", (slice(2**17 - 1, 2**17),)).any()
