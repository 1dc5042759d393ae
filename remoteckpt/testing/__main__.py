"""``python -m remoteckpt.testing``: an S3 server (SeaweedFS) on loopback, in the foreground.

Prints the ``export AWS_...`` lines that point remoteckpt, the AWS CLI, boto3 or s3fs at it,
then serves until interrupted (Ctrl-C or SIGTERM) and deletes its data on the way out.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import sys
import threading
from types import FrameType

from .seaweed import SeaweedServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remoteckpt.testing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", default="remoteckpt-test", help="the bucket to create (default remoteckpt-test)")
    parser.add_argument("--verify-signatures", action="store_true",
                        help="accept only requests signed with the printed keys (default: any keys)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", args.bucket):
        parser.error(f"{args.bucket!r} is not an S3 bucket name (3 to 63 characters: lowercase letters, digits, "
                     "dots and hyphens, starting and ending with a letter or digit)")
    stop = threading.Event()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    try:
        server = SeaweedServer(args.bucket, verify_signatures=args.verify_signatures)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with server:
        for name, value in server.env().items():
            print(f"export {name}={shlex.quote(value)}")
        print(f"# bucket s3://{server.bucket}; SeaweedFS at {server.endpoint_url}, data in {server.workdir}; "
              "Ctrl-C stops it and deletes the data", flush=True)
        while not stop.wait(0.5):
            if not server.is_running():
                print(f"error: the server exited\n{server.log_tail()}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
