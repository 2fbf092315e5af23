"""What a killed write leaves behind (staging folders, temporary files, half-written XMLs), found
by name, and swept once the process that wrote it is gone; and the disk a folder takes."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tasks.core.processes import process_alive

# Names only a killed write leaves: publish's staging and trash folders, champion downloads'
# staging, atomic writes' temporary files, LabelImg XMLs half written.
LEFTOVER = re.compile(r"\.tmp$|^\..+\.part$|^\.(.+\.)?partial-|^\..+\.old-[0-9a-f]{8}$")
INBOX_LEFTOVER = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.part$")  # only labelimg_writer's


def disk_use(path: str | Path) -> int:
    """Bytes of the files under `path` (each file once, however many hard links; links to
    elsewhere not followed). 0 when it is not there."""
    seen: set[tuple[int, int]] = set()
    total, pending = 0, [Path(path)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                stat = entry.stat(follow_symlinks=False)
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_size
    return total


def removed_bytes(path: Path) -> int:
    """Remove a file or folder; the bytes it held."""
    size = disk_use(path) if path.is_dir() else path.stat().st_size
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    return size


def _written_by_a_live_process(name: str) -> bool:
    """Temporary names carry the writer's pid (`.x.<pid>.<random>.tmp`): that one may be busy."""
    return any(process_alive(int(token)) for token in re.split(r"[.\-]", name)
               if token.isdigit() and int(token) > 0)


def sweep_leftovers(root: Path, cutoff: float, pattern: re.Pattern = LEFTOVER,
                    skip: tuple[Path, ...] = ()) -> tuple[list[str], int]:
    """Remove what a killed write left under `root`: names matching `pattern`, last written
    before `cutoff`, by no live process. (paths removed, bytes)."""
    removed, freed = [], 0
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        found = [name for name in dirs + files if pattern.search(name) and here / name not in skip]
        # a leftover folder is judged whole, not entered; a skipped one is not ours
        dirs[:] = [name for name in dirs if name not in found and here / name not in skip]
        for name in found:
            path = here / name
            try:
                if path.lstat().st_mtime >= cutoff or _written_by_a_live_process(name):
                    continue
                freed += removed_bytes(path)
            except FileNotFoundError:
                continue
            removed.append(str(path))
    return removed, freed
