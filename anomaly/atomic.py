"""Write a file so that a reader sees either the old one or the complete new one, never half of it.

The data goes to a temporary file in the target's folder (so the rename cannot cross file systems), which then
replaces the target in one ``os.replace``. A failure or an interrupt (Ctrl-C) removes the temporary file and
leaves the target as it was (SIGTERM too: the command line raises it as an exception, see
``anomaly.commands.common.sigterm_ends_cleanly``); only a hard kill (SIGKILL, power loss) can leave a temporary file, named
``.<name>.<random>.tmp`` beside the target, which `replay` clears from its output folder on its next run.
The new content is flushed to disk (``fsync``) before the rename and the rename itself after it, so that after
a power loss the target holds the old content or the complete new one, never an empty or partial file (a
rename can otherwise reach the disk before the data it names).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from anomaly.errors import OutputError

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mode_for(target: Path) -> int:
    """Permissions of the file that replaces `target`: the old file's, else what ``open(path, "w")`` gives."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def reason(exc: OSError) -> str:
    """Why a write failed, in words: mkdir's "File exists" for a file where a folder should be says which."""
    if isinstance(exc, FileExistsError) and exc.filename:
        return f"{exc.filename} is a file, not a folder"
    return exc.strerror or str(exc)


def _refuse_folder_name(path: str | Path, what: str) -> None:
    if str(path).endswith(("/", os.sep)):
        raise OutputError(
            f"cannot write the {what} {path}: a name ending in / is a folder, not a file", path=str(path)
        )


def unwritable(p: Path, exc: OSError, what: str = "file") -> OutputError:
    """The error for an output that cannot be written: it names the path asked for, not a temporary file."""
    return OutputError(f"cannot write the {what} {p}: {reason(exc)}", path=str(p))


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to; on leaving the block without an error it
    replaces `path` (with the old file's permissions, or the usual ones, as ``open(path, "w")`` would). An OSError while
    writing or replacing becomes an OutputError naming `path` (`what` says what the file is).

    A symbolic link is followed: the file it points to is replaced and the link stays. A target that is neither
    a regular file nor a folder (``/dev/stdout``, a named pipe) cannot be replaced and is written in place.
    A name ending in a slash names a folder: refused (``Path`` drops the slash, so ``-o out/`` became a file
    ``out``)."""
    _refuse_folder_name(path, what)
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        try:
            yield p
        except BrokenPipeError:  # /dev/stdout whose reader has gone: the command ends quietly (status 141)
            raise
        except OSError as exc:
            raise unwritable(p, exc, what) from None
        return
    real = Path(os.path.realpath(p))
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise unwritable(p, exc, what) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode_for(real))  # mkstemp makes 0600
        _sync(tmp)
        os.replace(tmp, real)
        _sync(real.parent, directory=True)
    except OSError as exc:
        raise unwritable(p, exc, what) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _sync(path: Path, directory: bool = False) -> None:
    """Flush `path` (a file, or a folder's entries) to disk. A file system that cannot sync a folder (some
    network and FUSE mounts answer EINVAL or EBADF) is left to its own guarantees."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Replace `path` with `data` atomically (see `atomic_path`)."""
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Replace `path` with `text` (UTF-8) atomically (see `atomic_path`)."""
    return write_bytes(path, text.encode("utf-8"), what)


def check_writable(path: str | Path, what: str = "file") -> None:
    """Refuse at the start of a long run an output that could not be written at its end (a folder in the way, a
    file where a folder should be, a folder that takes no new file), so hours of results are not lost to a typo.
    Nothing is left behind: the probe's temporary file is removed, and missing folders are not created."""
    _refuse_folder_name(path, what)
    p = Path(path)
    if p.exists() and not p.is_file():
        if p.is_dir():
            raise unwritable(p, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)), what)
        return  # a device or pipe, written in place
    _probe(p, Path(os.path.realpath(p)).parent, what)


def data_kind(path: str | Path) -> str | None:
    """What an existing file holds when it looks like data rather than a model ("text", "gzip", "Parquet"):
    model bundles (zip archives) and ONNX files are binary. None for a missing or empty file, or a binary one."""
    p = Path(path)
    try:
        if not p.is_file():
            return None
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None  # check_writable reports what cannot be read or written
    if not head:
        return None
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PAR1":
        return "Parquet"
    if b"\0" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not a multi-byte character cut at the end of the sample
            return None
    return "text"


def refuse_replacing_data(path: str | Path, what: str) -> None:
    """Refuse to write a model over an existing file that holds data (text such as CSV, JSON or TOML, gzip,
    Parquet): a mistyped -o would replace the data with the model. Bundles and ONNX files are replaced."""
    kind = data_kind(path)
    if kind is not None:
        raise OutputError(
            f"cannot write the {what} {path}: it exists and holds {kind} data, not a model (writing would replace "
            "the data); remove it first or name another file with --out",
            path=str(path),
        )


def check_writable_folder(path: str | Path, what: str = "folder") -> None:
    """`check_writable` for an output folder (one file per series, written at the end of the run): refuse at the
    start a folder that could not be made or take a new file. Missing folders are not created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise unwritable(p, NotADirectoryError(errno.ENOTDIR, f"{p} is not a folder"), what)
    _probe(p, Path(os.path.realpath(p)), what)


def _probe(p: Path, folder: Path, what: str) -> None:
    """Create and remove a temporary file in `folder`, or in its nearest existing parent (where the missing
    folders would be made); an OSError becomes the OutputError naming `p`."""
    while not folder.exists():  # created when the file is written
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a folder")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{p.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(tmp)
    except FileNotFoundError as exc:  # in a folder that exists: one that takes no new file (/proc, /sys)
        raise OutputError(
            f"cannot write the {what} {p}: the folder {folder} takes no new file ({reason(exc)})", path=str(p)
        ) from None
    except OSError as exc:
        raise unwritable(p, exc, what) from None


def stray_temporaries(folder: Path, name: str) -> list[Path]:
    """Temporary files `atomic_path` left for `folder / name` when its process was killed."""
    return [p for p in folder.glob(f".{name}.*{TMP_SUFFIX}") if p.is_file()]
