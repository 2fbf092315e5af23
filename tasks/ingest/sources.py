"""Listing a source folder safely: image files, junk, paths that escape, the folder's fingerprint."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TypeVar

PathLike = TypeVar("PathLike", str, Path)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class PathOutsideSource(ValueError):
    """A name in an annotation (or a symlink) that points outside the source folder."""


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_junk_name(name: str) -> bool:
    """macOS resource forks (`._x.jpg`) and hidden files: not images, whatever the extension."""
    return name.startswith("._") or name.startswith(".")


@functools.lru_cache(maxsize=256)
def _resolved_root(root: Path) -> Path:
    # Kept for the process: should the root later become a link elsewhere, its files would
    # resolve outside this path and be refused, never let through.
    return root.resolve()


def inside(root: Path, candidate: Path) -> Path:
    """The resolved candidate (symlinks followed) if it stays inside root, else PathOutsideSource."""
    real_root = os.fspath(_resolved_root(root))
    path = os.fspath(candidate)
    folder, name = os.path.split(path)
    # (string operations: this runs twice per image, and pathlib's parsing was a tenth of ingest)
    if folder == os.fspath(root) and name not in ("", ".", "..") and not os.path.islink(path):
        resolved = os.path.join(real_root, name)  # a plain file right in the root: one lstat
    else:
        resolved = os.path.realpath(path)
    if resolved != real_root and not resolved.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathOutsideSource(f"{candidate} resolves to {resolved}, outside {root}")
    return Path(resolved)


def check_relative_name(name: str) -> str:
    """Refuse names that are absolute or climb with `..` (in either slash style)."""
    if not any(mark in name for mark in "/\\:") and name not in (".", ".."):
        return name  # a bare file name (most of them): nothing to climb with
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or ".." in pure.parts:
            raise PathOutsideSource(f"{name!r} is absolute or climbs out with '..'")
    return name.replace("\\", "/")


@dataclass
class SourceListing:
    """Every file under the source folders, and one hash of their names and stats for all of
    them (see `stat_line`)."""

    # As strings: a night lists the source up to three times (what is new, the ingest's cache
    # key, the ingest), and making a Path of each of 200,000 names took most of a listing.
    image_paths: list[str] = field(default_factory=list)  # image-named files, junk included
    annotation_paths: list[str] = field(default_factory=list)
    fingerprint: str = ""
    # path -> (the folder whose walk listed it, its lstat then): what ingest asks of a file
    # again (is it a link? its size and mtime) is answered from here, without a syscall
    listed: dict[str, tuple[str, os.stat_result]] = field(default_factory=dict)

    @functools.cached_property
    def images(self) -> list[Path]:
        return [Path(p) for p in self.image_paths]

    @functools.cached_property
    def annotations(self) -> list[Path]:
        return [Path(p) for p in self.annotation_paths]

    def check_inside(self, root: Path, path: str | Path) -> None:
        """`inside(root, path)`, answered from the listing for a plain file that root's own walk
        listed: the walk enters no linked folder, so such a file cannot lead out of root."""
        found = self.listed.get(os.fspath(path))
        if found is None or found[0] != os.fspath(root) or stat.S_ISLNK(found[1].st_mode):
            inside(root, path)

    def stat(self, path: str | Path) -> os.stat_result:
        """The file's stat (links followed): from the listing for a plain file, else asked."""
        found = self.listed.get(os.fspath(path))
        if found is not None and stat.S_ISREG(found[1].st_mode):
            return found[1]
        return os.stat(path)


def walk_files(root: Path, listed: dict[str, tuple[str, os.stat_result]] | None = None) -> list[Path]:
    """Every file under root, sorted (a folder's files, then its subfolders), hidden folders
    skipped, symlinked folders not entered. With `listed`, each file's lstat goes there."""
    return [Path(path) for path in walk_paths(root, listed)]


def walk_paths(root: Path, listed: dict[str, tuple[str, os.stat_result]] | None = None) -> list[str]:
    """`walk_files`, as strings."""
    found: list[str] = []
    top = os.fspath(root)

    def visit(folder: str) -> None:
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            return  # an unreadable folder lists nothing, as os.walk does
        folders = []
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # a link to a folder is one, but is not entered
            except OSError:
                is_folder = False
            if is_folder:
                if not entry.name.startswith(".") and not entry.is_symlink():
                    folders.append(entry.path)
                continue
            found.append(entry.path)
            if listed is not None:
                try:
                    listed[entry.path] = (top, entry.stat(follow_symlinks=False))
                except OSError:
                    pass  # gone since: the fingerprint says so
        for sub in folders:
            visit(sub)

    visit(top)
    return found


def stat_line(path: str | Path, lstat: os.stat_result) -> str:
    """What the fingerprint holds of one file. Size and mtime, as `make` judges a file, and the
    inode and ctime: any write of its content sets ctime to now, and no tool can set it back
    (`touch -r`, `cp -p`, `rsync -t` restore only the mtime), a file replaced by a rename is
    another inode, and both come with the lstat already taken (no file is read). A chmod or a
    copied source folder also changes them: that costs one night whose steps mostly come back
    Cached, not a missed edit."""
    return f"{path}\0{lstat.st_size}\0{lstat.st_mtime_ns}\0{lstat.st_ctime_ns}\0{lstat.st_ino}\n"


def list_source(images: Path, annotations: Path | list[Path], annotation_suffix: str) -> SourceListing:
    """List images and annotation files (under one folder or file, or several folders); the
    fingerprint changes when any of them changes."""
    listing = SourceListing()
    if images.is_dir():
        listing.image_paths = [path for path in walk_paths(images, listing.listed)
                               if is_image_name(path)]
    for folder in annotations if isinstance(annotations, list) else [annotations]:
        if folder.is_dir():
            listing.annotation_paths += [path for path in walk_paths(folder, listing.listed)
                                         if os.path.splitext(path)[1].lower() == annotation_suffix]
        elif folder.is_file():
            listing.annotation_paths.append(os.fspath(folder))
    listing.fingerprint = fingerprint_of(listing)
    return listing


def fingerprint_of(listing: SourceListing) -> str:
    """One hash of the stat lines of the listing's images and annotations."""
    digest = hashlib.sha256()
    for path in sorted(set(listing.image_paths) | set(listing.annotation_paths)):
        found = listing.listed.get(path)
        try:
            lstat = found[1] if found is not None else os.lstat(path)
            digest.update(stat_line(path, lstat).encode())
        except OSError:
            digest.update(f"{path}\0gone\n".encode())
    return digest.hexdigest()


def find_image(
    name: str | None, rel_folder: str, fallback_stem: str, index: dict[str, PathLike],
    path_hint: str | None = None,
) -> PathLike | None:
    """Find an annotation's image: by its name (relative to the annotation's folder or the root),
    by its name plus any image extension, by the base name of LabelImg's `<path>` (only ever
    looked up among the source's own files), then by the annotation's own stem.
    Case-insensitive (LabelImg writes `.JPG`). Raises PathOutsideSource for escaping names."""
    candidates: list[str] = []
    if name:
        name = check_relative_name(name.strip())
        for base in (rel_folder, ""):
            candidates.append(str(PurePosixPath(base) / name) if base else name)
    if path_hint:
        candidates.append(path_hint.replace("\\", "/").rsplit("/", 1)[-1])
    stems = []
    if name and not is_image_name(name):
        stems.append(name)
    stems.append(str(PurePosixPath(rel_folder) / fallback_stem) if rel_folder else fallback_stem)
    if rel_folder:
        stems.append(fallback_stem)
    for key in candidates:
        hit = index.get(key.lower())
        if hit is not None:
            return hit
    for stem in stems:
        for ext in IMAGE_EXTENSIONS:
            hit = index.get((stem + ext).lower())
            if hit is not None:
                return hit
    return None


def relative_posix(path: str | Path, root: Path) -> str:
    """`path.relative_to(root).as_posix()` for a path listed under root, without pathlib's parsing."""
    text, prefix = os.fspath(path), os.fspath(root).rstrip(os.sep) + os.sep
    if not text.startswith(prefix):
        return Path(path).relative_to(root).as_posix()
    return text[len(prefix):].replace(os.sep, "/")


def index_images(images_root: Path, images: list[PathLike]) -> dict[str, PathLike]:
    """Lower-cased relative path -> file (as given: a string or a Path), plus bare file names
    where they are unambiguous."""
    index: dict[str, PathLike] = {}
    by_name: dict[str, list[PathLike]] = {}
    for path in images:
        name = os.path.basename(path)
        if is_junk_name(name):
            continue
        rel = relative_posix(path, images_root)
        index[rel.lower()] = path
        by_name.setdefault(name.lower(), []).append(path)
    for name, paths in by_name.items():
        if len(paths) == 1:
            index.setdefault(name, paths[0])
    return index


def stem_of(path: str) -> str:
    """`Path(path).stem`, without pathlib's parsing."""
    name = os.path.basename(path)
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name
