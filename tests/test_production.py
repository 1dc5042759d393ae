"""What docs/production.md states, tested: requests per save (counted on the wire), the S3
permissions a job uses, SSE parameters on the requests that need them, versioned buckets,
lifecycle rules, retry settings, regions, and what surviving workers do when one dies.

``python -m pytest tests/test_production.py -k requests -s`` prints the request counts the
page quotes."""

from __future__ import annotations

import collections
import json
import logging
import math
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faultproxy import FaultProxy, Rule

import remoteckpt

DOC = Path(__file__).resolve().parents[1] / "docs" / "production.md"
MiB = 2**20
PART = 16 * MiB  # the default part size
READ_CHUNK = 16 * MiB  # IOOptions.read_chunk


class RecordingProxy(FaultProxy):
    """A FaultProxy that also keeps every request's headers."""

    def __init__(self, upstream: str, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def _one(self, request: Any, client_r: Any, client_w: Any) -> bool:  # type: ignore[override]
        self.requests.append((request.method, request.target, {k.lower(): v for k, v in request.headers}))
        return await super()._one(request, client_r, client_w)


def kind(method: str, target: str) -> str:
    """A request as its S3 operation and, for objects, what the object is."""
    path, _, query = target.partition("?")
    name = path.rsplit("/", 1)[-1]
    if "list-type" in query:
        return "ListObjectsV2"
    if method == "POST" and query.split("=", 1)[0] == "delete":
        return "DeleteObjects"
    if "uploads" in query:
        return "CreateMultipartUpload" if method == "POST" else "ListMultipartUploads"
    if "uploadId" in query:
        return {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}[method]
    what = ("claim" if name.endswith(".claim") else "notice" if name.startswith("notice-")
            else "report" if name.startswith("worker-") else "ack" if name.startswith("ack-")
            else "index" if name.endswith(".index") else "data" if ".data-" in name
            else "probe" if name.startswith(".remoteckpt-probe") else "state" if name == "checkpoint" else "other")
    return f"{method} {what}"


IAM_ACTION = {"PUT": "s3:PutObject", "GET": "s3:GetObject", "HEAD": "s3:GetObject", "DELETE": "s3:DeleteObject",
              "ListObjectsV2": "s3:ListBucket", "ListMultipartUploads": "s3:ListBucketMultipartUploads",
              "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
              "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
              "DeleteObjects": "s3:DeleteObject"}
"""The IAM action each request needs (AWS's authorization reference for S3)."""


def iam_action(k: str) -> str:
    return IAM_ACTION.get(k) or IAM_ACTION[k.split(" ", 1)[0]]


def save_with_threads(prefix: str, world: int, mib: int, options: dict[str, Any]) -> None:
    """A `world`-worker save, each worker a thread with its own `mib` MiB tensor."""
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            remoteckpt.save({f"w{rank}": np.full(mib * MiB // 4, rank, np.float32)}, prefix, rank=rank,
                            world_size=world, save_id="job-count", storage_options=options)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors


def expected_fixed(world: int, mib: int) -> collections.Counter[str]:
    """The requests of a save whose number does not depend on timing."""
    parts = math.ceil(mib * MiB / PART) if mib * MiB > PART else 0
    want: collections.Counter[str] = collections.Counter(
        {"PUT claim": 1, "DELETE claim": 1, "ListMultipartUploads": 1, "PUT index": 1})
    if parts:
        want.update({"CreateMultipartUpload": world, "UploadPart": world * parts, "CompleteMultipartUpload": world})
    else:
        want.update({"PUT data": world})
    if world > 1:
        groups = math.ceil(world / 16)
        want.update({"PUT notice": 2 * groups, "DELETE notice": groups, "PUT report": world - 1,
                     "PUT ack": world - 1, "DeleteObjects": 1})  # the reports and acknowledgements
    return want


@pytest.mark.slow
def test_requests_per_save_and_restore(s3_server: Any, s3_prefix: str) -> None:
    """Every request of 1-, 2- and 4-worker saves (1 MiB per worker: one PUT each; 48 MiB:
    3 parts each) and of their restores, counted on the wire."""
    rows = []
    with FaultProxy(s3_server.endpoint_url) as proxy:
        options = {"endpoint_url": proxy.endpoint_url}
        remoteckpt.save({"w": np.ones(4)}, f"{s3_prefix}/first", storage_options=options)
        first = collections.Counter(kind(m, t) for m, t, _ in proxy.log)
        # The probe of conditional writes, once per process, endpoint and bucket (docs/s3.md).
        assert {k: v for k, v in first.items() if k.endswith("probe")} == \
            {"PUT probe": 3, "HEAD probe": 1, "DELETE probe": 2}, first
        for world in (1, 2, 4):
            for mib in (1, 48):
                proxy.log.clear()
                started = time.monotonic()
                prefix = f"{s3_prefix}/w{world}-{mib}/model.ckpt-1"
                save_with_threads(prefix, world, mib, options)
                seconds = time.monotonic() - started
                saved = collections.Counter(kind(m, t) for m, t, _ in proxy.log)
                proxy.log.clear()
                remoteckpt.load(prefix, storage_options=options)
                loaded = collections.Counter(kind(m, t) for m, t, _ in proxy.log)

                fixed = expected_fixed(world, mib)
                assert {k: saved[k] for k in fixed} == dict(fixed), (world, mib, saved)
                polls = {k: v for k, v in saved.items() if k not in fixed}
                assert set(polls) <= {"ListObjectsV2", "GET notice", "GET report", "HEAD ack"}, (world, mib, saved)
                assert 2 <= polls.get("ListObjectsV2", 0) <= 10
                assert polls.get("HEAD ack", 0) <= (world - 1) * (2 + 4 * seconds)
                assert polls.get("GET notice", 0) + polls.get("GET report", 0) <= world * (6 + 4 * seconds)
                assert loaded == {"GET index": 1,
                                  "GET data": world * math.ceil(mib * MiB / READ_CHUNK)}, (world, mib, loaded)
                rows.append((world, mib, sum(saved.values()), dict(sorted(saved.items())), sum(loaded.values())))
    print()
    for world, mib, total, saved, loaded in rows:
        tier1 = sum(v for k, v in saved.items() if not k.startswith(("GET", "HEAD", "DELETE")))
        tier2 = sum(v for k, v in saved.items() if k.startswith(("GET", "HEAD")))
        print(f"{world} worker(s) x {mib:>2} MiB: save {total:>3} requests ({tier1} PUT/POST/LIST, {tier2} GET, "
              f"{total - tier1 - tier2} DELETE); restore {loaded}   {saved}")


@pytest.mark.slow
def test_the_permissions_a_job_uses_are_the_documented_ones(s3_server: Any, s3_prefix: str) -> None:
    """Saves of one and two workers (single PUTs and multipart), a failed multipart save that
    aborts its upload, restores, a Saver's retention and gc: the IAM actions of every request
    are exactly the ones docs/production.md lists."""
    documented = set(re.findall(r"`(s3:[A-Za-z]+)`", DOC.read_text().split("## Permissions", 1)[1].split("\n## ")[0]))
    with FaultProxy(s3_server.endpoint_url) as proxy:
        options = {"endpoint_url": proxy.endpoint_url, "part_size": 5 * MiB}
        save_with_threads(f"{s3_prefix}/two/ck", 2, 12, options)
        remoteckpt.load(f"{s3_prefix}/two/ck", storage_options=options)
        saver = remoteckpt.Saver(max_to_keep=1, storage_options=options)
        for step in range(2):
            saver.save({"w": np.ones(3)}, f"{s3_prefix}/kept/model.ckpt", global_step=step)
        proxy.add_rule(Rule("deny", method="PUT", path=r"partNumber=2"))
        with pytest.raises(remoteckpt.StorageError, match="AccessDenied"):
            remoteckpt.save({"w": np.ones(3 * MiB)}, f"{s3_prefix}/failed", storage_options=options)
        remoteckpt.gc(s3_prefix, older_than=0, storage_options=options)
        kinds = {kind(m, t) for m, t, _ in proxy.log}
    assert "AbortMultipartUpload" in kinds and "ListMultipartUploads" in kinds
    assert {iam_action(k) for k in kinds} == documented == {
        "s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "s3:AbortMultipartUpload",
        "s3:ListBucketMultipartUploads"}
    with FaultProxy(s3_server.endpoint_url) as proxy:  # a restore sends GETs only
        remoteckpt.load(f"{s3_prefix}/two/ck", storage_options={"endpoint_url": proxy.endpoint_url})
        remoteckpt.load(f"{s3_prefix}/kept", storage_options={"endpoint_url": proxy.endpoint_url})
        assert {iam_action(kind(m, t)) for m, t, _ in proxy.log} == {"s3:GetObject"}


def test_sse_parameters_reach_the_requests_that_take_them(s3_server: Any, s3_prefix: str) -> None:
    """SSE-S3: a save and restore work, and every object is encrypted; SSE-KMS (which the test
    server cannot do without a KMS): the parameters go on every PUT and CreateMultipartUpload,
    the requests S3 takes them on."""
    client = s3_server.client()
    try:
        for sse in ({"ServerSideEncryption": "AES256"},
                    {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/checkpoints"}):
            kms = "SSEKMSKeyId" in sse
            with RecordingProxy(s3_server.endpoint_url) as proxy:
                options = {"endpoint_url": proxy.endpoint_url, "part_size": 5 * MiB, "s3_additional_kwargs": sse}
                prefix = f"{s3_prefix}/{sse['ServerSideEncryption'].replace(':', '-')}/ck"
                if kms:  # the server refuses (no KMS): one worker, no retries, and look at what was sent
                    options["config_kwargs"] = {"retries": {"max_attempts": 0, "mode": "standard"}}
                    with pytest.raises(remoteckpt.StorageError):
                        remoteckpt.save({"w": np.ones(6 * MiB // 4, np.float32)}, prefix, storage_options=options)
                else:
                    save_with_threads(prefix, 2, 6, options)  # 2 parts per worker
                writes = [(m, t, h) for m, t, h in proxy.requests
                          if kind(m, t) in ("CreateMultipartUpload",) or (m == "PUT" and "uploadId=" not in t)]
                assert writes
                for _, target, headers in writes:
                    assert headers.get("x-amz-server-side-encryption") == sse["ServerSideEncryption"], target
                    if "SSEKMSKeyId" in sse:
                        assert headers.get("x-amz-server-side-encryption-aws-kms-key-id") == sse["SSEKMSKeyId"]
            if not kms:
                np.testing.assert_array_equal(remoteckpt.load(prefix)["w1"], np.full(6 * MiB // 4, 1, np.float32))
                bucket, key = prefix.removeprefix("s3://").split("/", 1)
                for suffix in (".index", ".data-00000-of-00002", ".data-00001-of-00002"):
                    assert client.head_object(Bucket=bucket, Key=key + suffix)["ServerSideEncryption"] == "AES256"
    finally:
        client.close()


def _doc_json(title: str) -> dict[str, Any]:
    """The JSON block following the line that contains `title` in docs/production.md."""
    text = DOC.read_text()
    found = re.search(re.escape(title) + r".*?```json\n(.*?)```", text, re.S)
    assert found, title
    return json.loads(found.group(1))


def test_a_versioned_bucket_keeps_what_retention_deletes(s3_server: Any) -> None:
    """Saves, restores, retention and overwrites work on a versioned bucket; what retention
    deletes stays as noncurrent versions (space is not freed), until the lifecycle rule of
    docs/production.md (accepted by the server as written) expires them."""
    client = s3_server.client()
    bucket = f"versioned-{uuid.uuid4().hex[:12]}"
    try:
        client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        saver = remoteckpt.Saver(max_to_keep=1)
        for step in range(3):
            saver.save({"w": np.full(1000, step, np.float32)}, f"s3://{bucket}/run/model.ckpt", global_step=step)
        remoteckpt.save({"w": np.ones(2)}, f"s3://{bucket}/run/model.ckpt-2", overwrite=True)
        save_with_threads(f"s3://{bucket}/run/two", 2, 1, {})
        assert remoteckpt.load(f"s3://{bucket}/run/model.ckpt-2")["w"].tolist() == [1.0, 1.0]
        assert sorted(remoteckpt.load(f"s3://{bucket}/run/two")) == ["w0", "w1"]
        listed = client.list_object_versions(Bucket=bucket, Prefix="run/model.ckpt-0")
        kept = [v for v in listed.get("Versions", []) if v["Key"] == "run/model.ckpt-0.data-00000-of-00001"]
        assert kept and not any(v["IsLatest"] for v in kept) and kept[0]["Size"] == 4000  # still stored
        assert any(m["Key"] == "run/model.ckpt-0.data-00000-of-00001" for m in listed.get("DeleteMarkers", []))
        rules = _doc_json("### A lifecycle rule for versioned buckets")
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
        got = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert {r["ID"] for r in got} == {r["ID"] for r in rules["Rules"]}
    finally:
        client.close()


def test_the_documented_lifecycle_rule_is_accepted(s3_server: Any) -> None:
    client = s3_server.client()
    bucket = f"lifecycle-{uuid.uuid4().hex[:12]}"
    try:
        client.create_bucket(Bucket=bucket)
        rules = _doc_json("### A lifecycle rule that aborts incomplete multipart uploads")
        client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
        got = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert got[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    finally:
        client.close()


def test_retry_and_timeout_settings_reach_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """`config_kwargs` replaces remoteckpt's defaults; each retry of a request that got no
    connection is logged as it happens."""
    options = {"endpoint_url": "http://127.0.0.1:1", "key": "k", "secret": "s",
               "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 1}}
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="remoteckpt"):
        with pytest.raises(remoteckpt.StorageError, match="s3://bucket/x/ck"):
            remoteckpt.save({"w": np.ones(2)}, "s3://bucket/x/ck", storage_options=options)
    assert time.monotonic() - started < 20
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retried and retried[:2] == [
        f"S3 PutObject: no connection to http://127.0.0.1:1 (EndpointConnectionError); retrying ({n}/2)"
        for n in (1, 2)], retried


@pytest.mark.parametrize("text", ["2026-12-07T11:17:58.000Z", "2026-12-07T11:17:58Z", "2026-12-07T11:17:58.123456Z",
                                  "2026-12-07T11:17:58+02:00", "Mon, 07 Dec 2026 11:17:58 GMT", "1700000000"])
def test_timestamps_of_answers_parse_as_botocore_parses_them(text: str) -> None:
    """Listings' timestamps are parsed by the standard library (botocore's dateutil parser was
    most of a coordinator's CPU on its listings); every form gives botocore's value."""
    from botocore.utils import parse_timestamp as botocore_parse

    from remoteckpt.storage.s3.client import parse_timestamp

    parsed = parse_timestamp(text)
    assert parsed == botocore_parse(text) and parsed.tzinfo is not None


def test_a_listing_parses_no_time_with_dateutil(s3_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import dateutil.parser

    from remoteckpt.storage import on_store

    calls: list[str] = []
    original = dateutil.parser.parse
    monkeypatch.setattr(dateutil.parser, "parse", lambda text, *a, **k: calls.append(text) or original(text, *a, **k))

    async def body(store: Any) -> list[Any]:
        for key in ("a", "b", "c"):
            await store.put(key, b"1")
        return list(await store.list_info(""))

    infos = on_store(f"{s3_prefix}/listed", body)
    assert len(infos) == 3 and all(abs(i.mtime - time.time()) < 600 for i in infos)
    assert calls == []


def test_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    from remoteckpt.storage.s3.client import s3fs_options

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert "region_name" not in s3fs_options({})["client_kwargs"]  # AWS: botocore's chain decides
    assert s3fs_options({"endpoint_url": "http://minio:9000"})["client_kwargs"]["region_name"] == "us-east-1"
    assert s3fs_options({"client_kwargs": {"region_name": "eu-west-1"}})["client_kwargs"]["region_name"] == \
        "eu-west-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert "region_name" not in s3fs_options({"endpoint_url": "http://minio:9000"})["client_kwargs"]


# --- when a worker dies ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.multiprocess
def test_survivors_of_a_dead_worker_fail_after_the_commit_timeout_naming_it(tmp_path: Path) -> None:
    from lifecycle_workers import Job, Rank

    job = Job(str(tmp_path / "ck"), [Rank(0), Rank(1, env={"REMOTECKPT_CRASH_AT": "staged"}), Rank(2)],
              save_id="job-dead-worker", options={"commit_timeout": 5.0})
    records = job.run()
    assert (records[1]["error"], records[1]["exitcode"]) == ("no record", -9), records  # SIGKILLed
    for survivor in (records[0], records[2]):
        assert survivor.get("error") == "SaveFailedError" and "[1]" in survivor["message"], records
        # the coordinator's timeout runs from its own start: rank 2, started later, may see
        # the verdict sooner after its own
        ended = survivor["began"] + survivor["seconds"]
        assert 5.0 <= ended - records[0]["began"] and survivor["seconds"] < 30, records
    assert records[0]["message"] == records[2]["message"]
    assert not (tmp_path / "ck.index").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_workers_learn_a_dead_coordinator_from_its_lease(tmp_path: Path) -> None:
    from lifecycle_workers import LEASE, Job, Rank

    job = Job(str(tmp_path / "ck"), [Rank(0, env={"REMOTECKPT_CRASH_AT": "table-written"}), Rank(1), Rank(2)],
              save_id="job-dead-coordinator", options={"commit_timeout": 120.0})
    records = job.run(bound=150)
    assert (records[0]["error"], records[0]["exitcode"]) == ("no record", -9), records  # SIGKILLed
    for survivor in records[1:]:
        assert survivor.get("remoteckpt") is True, records
        assert LEASE <= survivor["seconds"] < 30, records  # a lease or so, not the commit timeout
    assert not (tmp_path / "ck.index").exists()
