"""A plain copy of a local directory to a store, for the SavedModel tests (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

from remoteckpt.storage import Store, on_store


def upload(directory: Path, url: str) -> None:
    """Every file under `directory` to `url` (plain puts: a copy that knows no layout)."""
    async def go(store: Store) -> None:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            await store.put(path.relative_to(directory).as_posix(), path.read_bytes())

    on_store(url, go)
