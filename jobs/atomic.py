"""Writing a small file so that a crash never leaves half of it: write a temporary file, then rename it over
the target (a rename within one folder is atomic on POSIX file systems)."""

from pathlib import Path


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
