"""Files replaced whole: each write goes to a temporary file of its own beside the target and
becomes the target by one atomic rename, so a reader sees the old content or the new one, never a
part; two writers at once (two test workers or two searches filling an empty cache) each move a
whole file into place, and a write that fails (a full disk, Ctrl-C) leaves no partial file."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path) -> Iterator[Path]:
    """A fresh temporary path beside `path` to write; it replaces `path` when the block ends
    without an error and is removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path, data: str | bytes) -> None:
    """Writes `data` to `path` through `replacing`."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
