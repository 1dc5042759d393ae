"""The README's quickstart runs as written, against the S3 test server."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_on_s3(s3_server: object, s3_prefix: str) -> None:
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README has no quickstart block"
    source = code.group(1)
    assert '"s3://my-bucket/run1/model.ckpt-1000"' in source
    source = source.replace('"s3://my-bucket/run1/model.ckpt-1000"', repr(f"{s3_prefix}/model.ckpt-1000"))
    namespace: dict[str, object] = {}
    exec(compile(source, str(README), "exec"), namespace)
    assert namespace["rows"].shape == (10, 64)  # type: ignore[attr-defined]
