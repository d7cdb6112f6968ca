"""A folder's file list: every file's size and sha256, written last, so damage or a half-written folder shows.

Used by the training checkpoints and by saved compacted models.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["FILE_LIST", "file_digest", "file_list_problem", "write_file_list"]

FILE_LIST = "files.json"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_file_list(folder: Path) -> None:
    """Lists the size and sha256 of every file in ``folder``, in ``folder / files.json``."""
    files = {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    partial = folder / f"{FILE_LIST}.partial"
    partial.write_text(json.dumps(files, indent=1) + "\n")
    os.replace(partial, folder / FILE_LIST)  # a process killed mid-write leaves no half list


def file_list_problem(folder: Path) -> str | None:
    """How ``folder``'s files differ from its file list, or ``None`` if they do not."""
    listed = folder / FILE_LIST
    if not listed.is_file():
        return (
            f"it has no file list ({FILE_LIST}): the process that wrote it stopped, or failed to read it back, "
            "before finishing it"
        )
    try:
        files = json.loads(listed.read_text())
    except ValueError as error:
        return f"its file list {FILE_LIST} is unreadable ({error})"
    for name, written in files.items():
        path = folder / name
        item = name.split("/")[0]
        if not (folder / item).exists():
            return f"its item {item!r} is missing" if "/" in name else f"its file {name} is missing"
        if not path.is_file():
            return f"its file {name} is missing"
        if path.stat().st_size != written["bytes"]:
            return f"its file {name} has {path.stat().st_size} bytes, {written['bytes']} when written"
        if file_digest(path) != written["sha256"]:
            return f"the bytes of its file {name} changed since it was written (it fails its checksum)"
    return None
