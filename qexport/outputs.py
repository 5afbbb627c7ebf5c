"""Writing outputs without losing a user's file: stage beside the destination, check, then rename.

Every CLI output goes through here. Rules: nothing appears at a destination until all of a run's
outputs are complete; an existing file is replaced only with ``--force``; inside an existing export
directory only the files qexport wrote there (listed with their checksums in its ``report.json``)
are ever replaced, and nothing else in it is touched. New files and directories get the modes the
umask gives, like every other tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from qexport.errors import QExportError

REPORT_FILE = "report.json"
STAGING_PREFIX = ".qexport-staging-"


class OutputError(QExportError):
    """An output path that cannot be written, or that holds files qexport must not replace."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(directory: Path) -> dict[str, str]:
    """Relative POSIX path -> sha256 of every file below ``directory``."""
    return {
        path.relative_to(directory).as_posix(): sha256_of(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def check_output_file(path: Path, force: bool, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written or exists without ``--force``."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputError(f"{path}: {option} names a directory, expected a file")
    if not parent.exists():
        raise OutputError(f"{path}: {option}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{path}: {option}: {parent} is not a directory")
    if path.exists() and not force:
        raise OutputError(f"{path}: {option}: file exists; pass --force to replace it")
    if len(path.name.encode()) > os.pathconf(parent, "PC_NAME_MAX"):
        raise OutputError(f"{path}: {option}: file name too long")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {option}: cannot write in {parent} (Permission denied)")


class StagedFiles:
    """Temporary files beside their destinations; ``commit`` renames them all into place."""

    def __init__(self) -> None:
        self._entries: list[tuple[Path, Path]] = []

    def path_for(self, destination: Path) -> Path:
        """A fresh temporary path in the destination's directory (same file system, so rename is atomic)."""
        destination = Path(destination)
        try:
            handle, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial")
        except OSError as error:
            raise OutputError(f"{destination}: cannot write in {destination.parent} ({error.strerror})") from None
        os.close(handle)
        temporary = Path(name)
        self._entries.append((temporary, destination))
        _apply_umask(temporary, directory=False)
        return temporary

    def commit(self) -> None:
        for temporary, destination in self._entries:
            os.replace(temporary, destination)
        self._entries.clear()

    def discard(self) -> None:
        for temporary, _ in self._entries:
            temporary.unlink(missing_ok=True)
        self._entries.clear()


@contextmanager
def staged_files() -> Iterator[StagedFiles]:
    """Write every output of a run to temporaries; rename all of them only if the block succeeds."""
    staged = StagedFiles()
    try:
        yield staged
        staged.commit()
    except OSError as error:
        staged.discard()
        raise OutputError(f"{error.filename or 'output'}: cannot write ({error.strerror})") from None
    finally:
        staged.discard()


def _previous_export(directory: Path) -> dict[str, str]:
    """The files a previous qexport run wrote into ``directory`` (path -> sha256), from its report."""
    report_path = directory / REPORT_FILE
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    files = report.get("files") if isinstance(report, dict) and "qexport_version" in report else None
    if not isinstance(files, dict):
        return {}
    owned = {str(name): str(digest) for name, digest in files.items()}
    owned[REPORT_FILE] = sha256_of(report_path)
    return owned


def _check_replaceable(destination: Path, name: str, owned: dict[str, str]) -> None:
    """Refuse to replace ``destination/name`` unless every file in it is one qexport wrote, unchanged."""
    target = destination / name
    if target.is_symlink() or not (target.is_file() or target.is_dir()):
        raise OutputError(f"{target}: not written by qexport; will not replace it")
    files = (
        {name: sha256_of(target)}
        if target.is_file()
        else {f"{name}/{rel}": digest for rel, digest in file_manifest(target).items()}
    )
    if target.is_dir() and any(p.is_symlink() or not (p.is_file() or p.is_dir()) for p in target.rglob("*")):
        raise OutputError(f"{target}: holds entries not written by qexport; will not replace it")
    for rel, digest in files.items():
        if owned.get(rel) != digest:
            raise OutputError(f"{destination / rel}: not written by qexport (or changed since); will not replace it")


def check_export_directory(destination: Path, force: bool) -> None:
    """Refuse, before any work, an export directory that is a file, or not empty without ``force``."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise OutputError(f"{destination}: output path exists and is not a directory")
    ancestor = next((p for p in (destination, *destination.parents) if p.exists()), Path("."))
    if not ancestor.is_dir():
        raise OutputError(f"{destination}: {ancestor} is a file, not a directory")
    if len(destination.resolve().name.encode()) > os.pathconf(ancestor, "PC_NAME_MAX"):
        raise OutputError(f"{destination}: output directory name too long")
    if destination.is_dir() and any(destination.iterdir()) and not force:
        raise OutputError(
            f"{destination}: directory is not empty; pass --force to replace qexport's own files in it "
            "(other files are kept)"
        )


@contextmanager
def export_directory(destination: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory; on success move its entries into ``destination``.

    A missing destination is created (with missing parents) by one rename of the staging directory.
    An existing empty directory receives the files. A non-empty one needs ``force``, and even then
    only entries that a previous export listed in its ``report.json`` (unchanged) are replaced.
    On failure nothing at ``destination`` changes and everything created here is removed.
    """
    check_export_directory(destination, force)
    resolved = Path(destination).resolve()
    exists = resolved.is_dir()
    created: list[Path] = []
    parent = resolved if exists else resolved.parent
    try:
        for missing in [p for p in (*reversed(parent.parents), parent) if not p.exists()]:
            missing.mkdir()
            created.append(missing)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    except OSError as error:
        _remove_created(created)
        raise OutputError(f"{destination}: cannot create the output directory ({error.strerror})") from None
    try:
        _apply_umask(staging, directory=True)
        yield staging
        if not exists:
            staging.rename(resolved)
            return
        owned = _previous_export(resolved)
        names = sorted(p.name for p in staging.iterdir())
        for name in names:
            if (resolved / name).exists() or (resolved / name).is_symlink():
                _check_replaceable(resolved, name, owned)
        _move_entries(staging, resolved, names)
        shutil.rmtree(staging)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        raise OutputError(f"{error.filename or destination}: cannot write ({error.strerror})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        raise


def _move_entries(staging: Path, destination: Path, names: list[str]) -> None:
    """Rename the staged entries into ``destination``; on a failure put every old entry back."""
    retired = staging / (STAGING_PREFIX + "retired")
    retired.mkdir()
    moved: list[str] = []
    placed: list[str] = []
    try:
        for name in names:
            if (destination / name).exists():
                (destination / name).rename(retired / name)
                moved.append(name)
            (staging / name).rename(destination / name)
            placed.append(name)
    except OSError:
        for name in placed:
            (destination / name).rename(staging / name)
        for name in moved:
            (retired / name).rename(destination / name)
        raise


def _remove_created(created: list[Path]) -> None:
    for directory in reversed(created):
        with suppress(OSError):
            directory.rmdir()
