"""The mutations `run.py` applies: one-line (or one-idea) changes that a correct test suite
must catch, each with the fast tests a developer runs for that code.

Each entry names its file, the exact original snippet (it must occur exactly once; when the
code changes, the run stops and names the entry to update), the replacement, why the
change matters (what a user would suffer), and the test files run against it.  A mutation
with several edits models one mistake made in two places (the same bug in the writer and
the reader, which a round trip through our own code cannot see).

Mutations that no test could distinguish from the original (equivalent mutants: a faster
or slower path with the same results) are left out on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    edits: tuple[tuple[str, str], ...]
    why: str
    tests: tuple[str, ...]


def m(id: str, file: str, original: str, replacement: str, why: str, tests: tuple[str, ...]) -> Mutation:
    return Mutation(id, f"remoteckpt/{file}", ((original, replacement),), why, tests)


def both(id: str, file: str, edits: list[tuple[str, str]], why: str, tests: tuple[str, ...]) -> Mutation:
    return Mutation(id, f"remoteckpt/{file}", tuple(edits), why, tests)


# --- the fast test files, by what they exercise ---------------------------------------------------

FORMAT = ("tests/test_format.py", "tests/test_fixtures.py", "tests/test_hostile.py")
API = ("tests/test_api.py",)
MERGE = ("tests/test_merge.py",)
ENGINE = ("tests/test_engine.py",)
CORRUPTION = ("tests/test_corruption.py",)
COMMIT = ("tests/test_commit.py",)
S3_GET = ("tests/test_s3_get.py",)
STORES = ("tests/test_store_conformance.py",)
CLAIM = ("tests/test_claim.py",)
MANAGEMENT = ("tests/test_management.py",)

CATALOGUE: list[Mutation] = [
    # --- format/coding.py: varints, masked CRCs, CRC combination ---------------------------------
    m("coding-mask-delta", "format/coding.py",
      "MASK_DELTA = 0xA282EAD8", "MASK_DELTA = 0xA282EAD9",
      "masks CRCs differently from TF on both sides: our own round trip passes, TF's files fail and ours fail in TF",
      FORMAT + API),
    m("coding-mask-rotation", "format/coding.py",
      "return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF",
      "return ((((crc >> 17) | (crc << 15)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF",
      "every CRC we write is wrong", FORMAT + API),
    m("coding-varint-continuation", "format/coding.py",
      "    while value >= 0x80:\n        out.append((value & 0x7F) | 0x80)",
      "    while value > 0x80:\n        out.append((value & 0x7F) | 0x80)",
      "128 is encoded as one byte with its continuation bit set: lengths and offsets corrupt",
      FORMAT + API),
    m("coding-varint-64-bits", "format/coding.py",
      "if result >= 1 << 64:", "if result > 1 << 64:",
      "a varint of 2**64 (past a uint64) is accepted", FORMAT),
    m("coding-varint-limit", "format/coding.py",
      "for i in range(pos, min(end, pos + MAX_VARINT64_LEN)):", "for i in range(pos, pos + MAX_VARINT64_LEN):",
      "a varint runs past its limit (into the next field, or off the end)", FORMAT),
    m("coding-combine-length", "format/coding.py",
      "return _gf2_times(_zeros_operator(length_b), crc_a) ^ crc_b",
      "return _gf2_times(_zeros_operator(length_b + 1), crc_a) ^ crc_b",
      "a tensor read in pieces is checked against a wrong CRC; a chunked tensor's whole CRC is wrong for TF",
      FORMAT + API),

    # --- format/block.py: LevelDB blocks --------------------------------------------------------
    m("block-restart-interval", "format/block.py",
      "if self._counter < self._restart_interval:", "if self._counter <= self._restart_interval:",
      "restart points every 17 entries: indexes no longer byte-identical to TF's", FORMAT + API),
    m("block-shared-prefix", "format/block.py",
      "while shared < limit and last[shared] == key[shared]:",
      "while shared < limit - 1 and last[shared] == key[shared]:",
      "keys share one byte less than TF's: valid but not TF's bytes", FORMAT + API),
    m("block-restart-shares", "format/block.py",
      "if shared and entry_start in restarts:", "if False and shared and entry_start in restarts:",
      "a restart entry that shares a prefix (a corrupt block) is accepted", FORMAT),
    m("block-entry-bounds", "format/block.py",
      "if shared > len(key) or pos + unshared + value_len > limit:",
      "if shared > len(key) or pos + unshared + value_len > limit + 4:",
      "an entry may run into the restart array", FORMAT),
    m("block-fast-path", "format/block.py",
      "data[pos + 1] < 0x80 and data[pos + 2] < 0x80:", "data[pos + 1] < 0x80 and data[pos + 2] <= 0x80:",
      "a value of 128 bytes is read with a one-byte length: the entry is misparsed", FORMAT),

    # --- format/table.py: the SSTable -----------------------------------------------------------
    m("table-block-crc-unchecked", "format/table.py",
      "if unmask_crc(stored) != crc32c(raw[: size + 1]):", "if False:",
      "index blocks are not verified: a damaged index is decoded", FORMAT + CORRUPTION),
    m("table-block-crc-type-byte", "format/table.py",
      "crc = mask_crc(crc32c(trailer_type, crc32c(block)))", "crc = mask_crc(crc32c(block))",
      "block CRCs leave out the type byte: TF refuses our indexes", FORMAT + API),
    m("table-block-cut", "format/table.py",
      "if self._data.size_estimate() >= self._block_size:", "if self._data.size_estimate() > self._block_size:",
      "a block reaching exactly 256 KiB is not cut where TF cuts it", FORMAT + API),
    m("table-separator", "format/table.py",
      "if byte < 0xFF and byte + 1 < limit[i]:", "if byte < 0xFF and byte + 1 <= limit[i]:",
      "an index-block separator may equal the next block's first key: not TF's bytes", FORMAT + API),
    m("table-handle-into-footer", "format/table.py",
      "if offset + size + BLOCK_TRAILER_SIZE > file_size - FOOTER_SIZE:",
      "if offset + size + BLOCK_TRAILER_SIZE > file_size:",
      "a block handle pointing into the footer is followed", FORMAT),
    m("table-key-order", "format/table.py",
      "if last_key is not None and key <= last_key:", "if last_key is not None and key < last_key:",
      "a table repeating a key is accepted (the later entry silently wins)", FORMAT),
    m("table-magic", "format/table.py",
      "if bytes(footer[40:]) != TABLE_MAGIC:", "if bytes(footer[41:]) != TABLE_MAGIC[1:]:",
      "a file whose magic differs in its first byte is read as an index", FORMAT),

    # --- format/payload.py: string payloads -----------------------------------------------------
    both("payload-string-crc-both-sides", "format/payload.py", [
        ("crc = crc32c(lc_bytes, length_crc)", "crc = crc32c(lc_bytes)"),
        ("crc = crc32c(view[pos : pos + 4], expected)", "crc = crc32c(view[pos : pos + 4])")],
         "string CRCs leave out the lengths, writer and reader alike: only TF's bytes show it",
         FORMAT + API),
    m("payload-length-checksum-width", "format/payload.py",
      'return crc32c(np.asarray(lengths, dtype="<u4").tobytes())',
      'return crc32c(np.asarray(lengths, dtype="<u8").tobytes())',
      "the string length checksum over 8-byte lengths, writer and reader alike", FORMAT + API),
    m("payload-string-bounds", "format/payload.py",
      "if pos + 4 + total > limit:", "if pos + total > limit:",
      "string lengths may claim the bytes of the length checksum", FORMAT),
    m("payload-big-endian-input", "format/payload.py",
      'if array.dtype.byteorder == ">":', "if False:",
      "a big-endian numpy array is saved byte-swapped", FORMAT + API),
    m("payload-string-crc-unchecked", "format/payload.py",
      "if unmask_crc(stored) != expected:", "if False:",
      "a damaged string length checksum goes unnoticed", FORMAT + API + CORRUPTION),

    # --- format/slices.py: boxes and slice keys -------------------------------------------------
    m("slices-intersect-touching", "format/slices.py",
      "if any(hi <= lo for lo, hi in zip(start, stop)):", "if any(hi < lo for lo, hi in zip(start, stop)):",
      "boxes that only touch count as overlapping: partitioned saves refused", FORMAT + API + MERGE),
    m("slices-signed-one-byte", "format/slices.py",
      "    if x < 64:\n        return bytes(((0x80 ^ value) & 0xFF,))",
      "    if x <= 64:\n        return bytes(((0x80 ^ value) & 0xFF,))",
      "a slice starting at row 64 gets a key TF does not write or find", FORMAT + API),
    m("slices-signed-length", "format/slices.py",
      "bits = x.bit_length() + 1  # one sign bit", "bits = x.bit_length()  # one sign bit",
      "slice keys of large offsets have the wrong length: TF cannot find those slices", FORMAT + API),
    m("slices-extent-past-dim", "format/slices.py",
      "if extent.start < 0 or extent.length < 0 or extent.start + extent.length > dim:",
      "if extent.start < 0 or extent.length < 0:",
      "a stored slice reaching past its tensor is accepted", FORMAT + API),

    # --- format/bundle.py: header and entries ---------------------------------------------------
    m("bundle-shard-bound", "format/bundle.py",
      "if not 0 <= entry.shard_id < num_shards:", "if not 0 <= entry.shard_id <= num_shards:",
      "an entry naming shard N of an N-shard bundle is accepted", FORMAT + API),
    m("bundle-unsorted", "format/bundle.py",
      "for key in sorted(entries):", "for key in entries:",
      "entries written in the caller's order", FORMAT + API),
    m("bundle-min-consumer", "format/bundle.py",
      "version.min_consumer > CONSUMER_VERSION", "version.min_consumer >= CONSUMER_VERSION",
      "a bundle that version-1 readers may read is refused", FORMAT),
    m("bundle-negative-dims", "format/bundle.py",
      "any(d < 0 for d in shape)", "any(d < -1 for d in shape)",
      "a shape with an unknown (-1) dimension is read", FORMAT + API),

    # --- format/merge.py: one index from every worker's table ------------------------------------
    m("merge-overlap-off-by-one", "format/merge.py",
      "if b.start[0] >= a.stop[0] if a.rank else False:", "if b.start[0] >= a.stop[0] - 1 if a.rank else False:",
      "boxes of two workers overlapping by one row merge; the reader refuses the committed checkpoint",
      MERGE + API),
    m("merge-overlap-unchecked", "format/merge.py",
      "            _check_disjoint(key, entry)", "            pass",
      "overlapping boxes from different workers are committed", MERGE + API),
    m("merge-duplicate-names", "format/merge.py",
      "if not (existing.slices and entry.slices):", "if False:",
      "one worker's tensor of a name another worker also saved silently disappears", MERGE + API),
    m("merge-dtype-disagrees", "format/merge.py",
      "if existing.dtype != entry.dtype or entry_shape(existing) != entry_shape(entry):",
      "if entry_shape(existing) != entry_shape(entry):",
      "boxes of one tensor in two dtypes are merged", MERGE + API),
    m("merge-shape-disagrees", "format/merge.py",
      "if existing.dtype != entry.dtype or entry_shape(existing) != entry_shape(entry):",
      "if existing.dtype != entry.dtype:",
      "boxes of one tensor with two full shapes are merged", MERGE + API),
    m("merge-shard-ids", "format/merge.py",
      "copy.shard_id = base + entry.shard_id", "copy.shard_id = entry.shard_id",
      "every worker's entries point at shard 0", MERGE + API),
    m("merge-num-shards", "format/merge.py",
      "header.num_shards += table.header.num_shards", "header.num_shards = table.header.num_shards",
      "the merged header counts one shard", MERGE + API),
    m("merge-version", "format/merge.py",
      "if table.header.version.SerializeToString(deterministic=True) != first.version.SerializeToString(deterministic=True):",
      "if False:",
      "tables of different format versions are merged", MERGE),
    m("merge-endianness", "format/merge.py",
      "if table.header.endianness != first.endianness:", "if False:",
      "tables of different byte orders are merged", MERGE),
    m("merge-table-shards", "format/merge.py",
      "if table.header.num_shards != shards_per_table:", "if table.header.num_shards > shards_per_table:",
      "a table claiming fewer shards than planned is merged", MERGE),

    # --- engine/stream.py: checksums as bytes go ----------------------------------------------------
    m("stream-whole-crc-combine", "engine/stream.py",
      "running = (crc32c_combine(running, crc, chunk_len) if chunk_len == step",
      "running = (crc if chunk_len == step",
      "a chunked tensor's whole CRC is wrong: remoteckpt reads it (chunk CRCs), TF refuses it",
      ENGINE + API),
    m("stream-tail-crc", "engine/stream.py",
      "else crc32c(piece[offset:], running))", "else crc32c(piece[offset:]))",
      "the whole CRC of a tensor with a short last chunk is wrong: TF refuses it", ENGINE + API),
    m("stream-chunk-crc-unmasked", "engine/stream.py",
      "entry.chunk_crc32c.extend(mask_crc(c) for c in chunk_crcs)", "entry.chunk_crc32c.extend(chunk_crcs)",
      "chunk CRCs stored unmasked", ENGINE + API),
    m("stream-chunk-threshold", "engine/stream.py",
      "if crc_chunk and size > crc_chunk:", "if crc_chunk and size >= crc_chunk:",
      "a tensor of exactly one chunk gets chunk CRCs: not TF's bytes", ENGINE + API),

    # --- engine/ranges.py, engine/fetch.py, engine/budget.py: planning and fetching ------------------
    m("ranges-split-last-piece", "engine/ranges.py",
      "pieces.append(Piece(r.key, start, min(chunk, r.offset + r.length - start), r.task, index))",
      "pieces.append(Piece(r.key, start, chunk, r.task, index))",
      "the last piece of a request reads past it", ENGINE + API),
    m("ranges-coalesce-overlap", "engine/ranges.py",
      "if (piece.key == first.key and piece.offset >= last.end", "if (piece.offset >= last.end",
      "pieces of two files are coalesced into one request", ENGINE + API),
    m("ranges-coalesce-length", "engine/ranges.py",
      "and piece.end - first.offset <= max_length):", "):",
      "requests grow without bound (memory, and one request for a whole checkpoint)", ENGINE),
    m("ranges-box-base", "engine/ranges.py",
      "base = start[k] * strides[k]", "base = start[k]",
      "a partial box reads the wrong bytes of its entry", ENGINE + API),
    m("ranges-box-rows", "engine/ranges.py",
      "offsets = [(start[d] + i) * step + o for i in range(size[d]) for o in offsets]",
      "offsets = [(start[d] + i) * step + o for i in range(size[d] - 1) for o in offsets]",
      "a partial box of three or more dimensions misses its last rows", ENGINE + API),
    m("ranges-chunk-span-end", "engine/ranges.py",
      "hi = min(total, -(-(offset + length) // chunk) * chunk)", "hi = min(total, (offset + length) // chunk * chunk)",
      "a partial box misses the chunk holding its last bytes", ENGINE + API),
    m("fetch-short-read", "engine/fetch.py",
      "if result.delivered != sum(p.length for p in op.pieces):",
      "if result.delivered > sum(p.length for p in op.pieces):",
      "an object shorter than planned is not reported as truncated", ENGINE + API),
    m("fetch-crc-order", "engine/fetch.py",
      "for piece, crc in zip(op.pieces, result.crcs):", "for piece, crc in zip(op.pieces, reversed(result.crcs)):",
      "coalesced pieces are verified against each other's CRCs", ENGINE + API),
    m("budget-oversize-alone", "engine/budget.py",
      "lambda: self.used == 0 or self.used + n <= self.capacity", "lambda: self.used + n <= self.capacity",
      "a buffer larger than the budget waits forever", ENGINE),

    # --- reader.py: verification ----------------------------------------------------------------
    m("reader-chunk-crc-unchecked", "reader.py",
      "if crcs[piece.task, piece.index] != unmask_crc(entry.chunk_crc32c[chunk]):", "if False:",
      "damaged bytes of a chunked tensor are returned", API + CORRUPTION),
    m("reader-chunk-number", "reader.py",
      "chunk = (piece.offset - entry.offset) // entry.chunk_size", "chunk = piece.index",
      "a partial read checks its chunks against the wrong chunk CRCs", API + ENGINE),
    m("reader-whole-crc-unchecked", "reader.py",
      "        if crc != unmask_crc(entry.crc32c):\n            raise CorruptCheckpointError(\n"
      "                f\"{where}: checksum mismatch in {file} (bytes {entry.offset}..{entry.offset + entry.size}): \"",
      "        if False:\n            raise CorruptCheckpointError(\n"
      "                f\"{where}: checksum mismatch in {file} (bytes {entry.offset}..{entry.offset + entry.size}): \"",
      "damaged bytes of a tensor without chunk CRCs (every TF-written one) are returned", API + CORRUPTION),
    m("reader-string-crc-unchecked", "reader.py",
      "            if crc != unmask_crc(entry.crc32c):\n                raise CorruptCheckpointError(",
      "            if False:\n                raise CorruptCheckpointError(",
      "damaged string elements are returned", API + CORRUPTION),
    m("reader-entry-inside-file", "reader.py",
      "if entry.offset + entry.size > file_size:", "if entry.offset > file_size:",
      "an entry reaching past its data file is read (and reported only as a checksum error)", API),
    m("reader-slices-cover", "reader.py",
      "if covered != request.num_elements:", "if covered > request.num_elements:",
      "a tensor whose stored boxes leave holes is returned with uninitialised memory", API),
    m("reader-stored-overlap", "reader.py",
      "raise CorruptCheckpointError(f\"tensor {name!r}: stored slices overlap: {a.spec()} and {b.spec()}\")",
      "pass",
      "a checkpoint with overlapping stored boxes is read (which box wins is arbitrary)", API + FORMAT),

    # --- storage/s3_get.py: ranged GETs into the caller's buffers --------------------------------
    m("s3get-206-start-ignored", "storage/s3_get.py",
      "if self.status // 100 == 2 and _first_byte(self.status, self.headers) != self._start:",
      "if self.status == 200 and _first_byte(self.status, self.headers) != self._start:",
      "a 206 answer starting at another byte delivers shifted bytes", S3_GET),
    m("s3get-206-earlier-start", "storage/s3_get.py",
      "_first_byte(self.status, self.headers) != self._start:", "_first_byte(self.status, self.headers) > self._start:",
      "a 206 answer starting before the requested byte delivers shifted bytes", S3_GET),
    m("s3get-206-without-range", "storage/s3_get.py",
      "return int(match.group(1)) if match else -1", "return int(match.group(1)) if match else 0",
      "a 206 answer without Content-Range to a read from byte 0 is taken on trust; a 200 is not", S3_GET),
    m("s3get-error-as-empty", "storage/s3_get.py",
      "if conn.status // 100 == 2 or conn.status == 416:", "if conn.status // 100 in (2, 4):",
      "a 404 or 403 reads as an empty object", S3_GET),
    m("s3get-no-retry", "storage/s3_get.py",
      "if conn.status in RETRY_STATUSES and attempt + 1 < self.attempts:", "if False:",
      "a 503 SlowDown fails the read instead of being retried", S3_GET),
    m("s3get-resume-unpinned", "storage/s3_get.py",
      "raise BodyCut(if_match or conn.headers.get(\"etag\"), exc) from exc", "raise BodyCut(if_match, exc) from exc",
      "a resumed GET may read another version of the object", S3_GET),
    m("s3get-chunked", "storage/s3_get.py",
      'if "chunked" in self.headers.get("transfer-encoding", "") or not length.isdigit():',
      "if not length.isdigit():",
      "a chunked answer's framing bytes land in the tensor", S3_GET),

    # --- storage/s3_store.py: read paths ----------------------------------------------------------
    m("s3store-direct-resume-unpinned", "storage/s3_store.py",
      "                etag = exc.etag\n", "                etag = None\n",
      "a resumed direct GET may read another version of the object", S3_GET),
    m("s3store-fallback-resume-unpinned", "storage/s3_store.py",
      'pinned = {"IfMatch": response["ETag"]}', "pinned = {}",
      "a resumed aiobotocore GET may read another version of the object", S3_GET),
    m("s3store-sink-first-byte", "storage/s3_store.py",
      "            if offset <= self.position:\n", "            if offset < self.position:\n",
      "bytes landing at a target's first byte are not counted as delivered", S3_GET + API),
    m("s3store-sink-gap", "storage/s3_store.py",
      "skip = min(len(data), offset - self.position)", "skip = offset - self.position",
      "a gap longer than the chunk in hand shifts the following target's bytes", S3_GET),

    # --- commit paths: storage/local.py, storage/s3_upload.py, protocol/commit.py ------------------
    m("local-exclusive-replaces", "storage/local.py",
      "            if self._exclusive:\n                await asyncio.to_thread(os.link",
      "            if False:\n                await asyncio.to_thread(os.link",
      "create-only writes on local disk replace what is there", COMMIT + STORES),
    m("s3upload-no-if-none-match", "storage/s3_upload.py",
      'match = {"IfNoneMatch": "*"} if self._exclusive else {}', "match = {}",
      "create-only writes on S3 replace what is there", COMMIT + STORES),
    m("s3upload-landed-size-only", "storage/s3_upload.py",
      "return head.get(\"ETag\", \"\").strip('\"') == self._expected_etag and head.get(\"ContentLength\") == self._written",
      "return head.get(\"ContentLength\") == self._written",
      "a create-only write meeting another object of the same size reports success", COMMIT + STORES),
    m("s3upload-exists-untranslated", "storage/s3_upload.py",
      "if self._exclusive and is_precondition_failure(exc):", "if False:",
      "an existing object is reported as a storage failure, not as CheckpointExistsError", COMMIT + STORES),
    m("commit-plain-overwrite", "protocol/commit.py",
      "exclusive=not overwrite", "exclusive=False",
      "a save reaching the commit after another save committed replaces its index and reports success",
      COMMIT + API),
    m("commit-settle-by-length", "protocol/commit.py",
      "return await store.get(key) == data", "return len(await store.get(key)) == len(data)",
      "an unknown outcome is settled by another index of the same size", COMMIT),
    m("commit-settle-by-prefix", "protocol/commit.py",
      "return await store.get(key) == data", "return (await store.get(key)).startswith(data)",
      "an unknown outcome is settled by an index that merely starts with ours", COMMIT),
    m("commit-settle-missing", "protocol/commit.py",
      "        except CheckpointNotFoundError:\n            return False",
      "        except CheckpointNotFoundError:\n            return True",
      "a commit that never landed reports success", COMMIT),

    # --- protocol/save.py, protocol/claim.py (a few; see the protocol's own tests) ----------------
    m("save-no-exists-check", "protocol/save.py",
      "    if await store.exists(layout.index):\n        if not overwrite:",
      "    if False:\n        if not overwrite:",
      "a save over a committed checkpoint fails late and unclearly (or, on S3, only at the commit)",
      API + COMMIT),
    m("save-overwrite-keeps-old-index", "protocol/save.py",
      "        await store.delete(layout.index)\n    plan = plan_bundle(tensors)",
      "        pass\n    plan = plan_bundle(tensors)",
      "an overwrite that fails leaves the old index over replaced data (reads fail their CRCs)", COMMIT + API),
    m("save-merge-skipped", "protocol/save.py",
      "merged = merge_indexes(decoded)", "merged = decoded[0]",
      "a multi-worker checkpoint holds only rank 0's tensors", MERGE),
    m("claim-never-busy", "protocol/claim.py",
      "        if held.age <= options.commit_timeout:\n            raise _busy(store, layout, held)",
      "        if held.age < 0:\n            raise _busy(store, layout, held)",
      "a live save's claim is taken: two jobs write one prefix", CLAIM),
    m("claim-world-size-ignored", "protocol/claim.py",
      "return self.save_id == layout.save_id and self.world_size == layout.world_size",
      "return self.save_id == layout.save_id",
      "a job of another world size with the same save id joins this save", CLAIM),
    m("claim-release-any", "protocol/claim.py",
      "    if held is not None and held.record == mine:\n        await store.delete(layout.claim)",
      "    if held is not None:\n        await store.delete(layout.claim)",
      "a finished save removes the claim of the save that took over from it", CLAIM),

    # --- api.py snapshot, management/saver.py ordering -------------------------------------------
    m("api-snapshot-slice", "api.py",
      "return Slice(np.array(value.array, copy=True, order=\"C\"), value.full_shape, value.offset)", "return value",
      "changing a Slice's array after save_async returned changes the saved checkpoint", ENGINE + API),
    m("api-snapshot-slice-list", "api.py",
      "return [copy(v) for v in value]", "return list(value)",
      "changing a listed Slice's array after save_async returned changes the saved checkpoint", ENGINE + API),
    m("api-snapshot-array", "api.py",
      "return np.array(value, copy=True, order=\"C\")", "return np.asarray(value)",
      "changing an array after save_async returned changes the saved checkpoint", ENGINE + API),
    m("saver-deletes-before-state", "management/saver.py",
      "                await self._write_state(store, directory)\n                await self._sweep_one(store)",
      "                await self._sweep_one(store)\n                await self._write_state(store, directory)",
      "a failed state-file write leaves it naming a checkpoint already deleted", MANAGEMENT),
    m("saver-delete-data-first", "management/saver.py",
      "    removed = []\n    if await store.exists(index_filename(name)):",
      "    removed = []\n    for key in await store.list(name + \".\"):\n"
      "        if _DATA_FILE.fullmatch(key[len(name):]):\n            await store.delete(key)\n"
      "    if await store.exists(index_filename(name)):",
      "an old checkpoint loses its data before its index: a crash leaves an index over missing data",
      MANAGEMENT),
    m("saver-unrecorded-not-replaced", "management/saver.py",
      "overwrite=overwrite or not recorded,", "overwrite=overwrite,",
      "a job restarted after a crash between commit and state file can never save that step again",
      MANAGEMENT),
]
