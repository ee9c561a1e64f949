"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the package writes whole (config, vocabulary, weights, prepared splits,
word2vec vectors, plots) goes through here. The data goes to a temporary file with a
unique name in the target's directory (so two writers never share one, and the rename
stays on one file system), is flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` for the body to write.

    When the body returns, the temporary file is fsynced and renamed over ``path``; when
    it raises (Ctrl-C included), the temporary file is deleted and ``path`` is left as it
    was. The parent directory is created if needed. For writers that want a file name
    (gensim, matplotlib); :func:`atomic_write` is the short form for bytes or text.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    try:
        yield tmp
        # The writer may have closed the file without syncing it: sync before the
        # rename, so a crash never leaves the new name pointing at missing data.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_file_beside(path: Path) -> Path:
    """Create an empty file with a fresh name beside `path` and return its name. Like
    tempfile.mkstemp, but with the mode open() gives (0o666 less the umask), not 0o600:
    the file becomes `path`, which should look like any other file its owner writes."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text is written as UTF-8) to ``path`` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
