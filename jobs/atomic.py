"""Writing a small file so that a crash never leaves half of it: write a temporary file, then rename it over
the target (a rename within one folder is atomic on POSIX file systems). The temporary name is unique, so two
writers of the same file (two jobs on one assets folder, two ranks) never write into each other's temporary
file; the last rename wins, and a reader sees one whole version or the other."""

import os
import tempfile
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
