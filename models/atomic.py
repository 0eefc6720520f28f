"""Writing files and folders so that nothing already there is lost or left half-written.

Whatever is written is built under a hidden sibling, `.{name}.attnscope-tmp-{pid}-{random}`, and
renamed into place in one step. Replacing (`force=True`) first moves the old one aside as
`.{name}.attnscope-old-{pid}-{random}` and deletes it once the new one is in place. A writer killed
midway leaves such siblings behind; the next write into the same folder removes them, and puts an
old one back when its replacement never arrived.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from kernels.errors import UserError

_SIBLING = re.compile(r"^\.(?P<name>.+)\.attnscope-(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")
STALE_SECONDS = 24 * 3600  # a sibling this old is stale even if its pid now names another live process

Error = type[UserError]


def sibling(path: Path, kind: str) -> Path:
    """The hidden name a temporary ('tmp') or set-aside ('old') version of `path` is written under."""
    return path.with_name(f".{path.name}.attnscope-{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def clean_stale(parent: Path) -> None:
    """Remove the siblings that killed writers left in `parent`; restore an old version left without its
    replacement. Siblings of live writers (this process included) are left alone."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        m = _SIBLING.match(entry.name)
        if m is None or _writer_alive(int(m["pid"]), entry):
            continue
        target = Path(parent) / m["name"]
        if m["kind"] == "old" and not os.path.lexists(target):
            try:
                os.rename(entry.path, target)
                continue
            except OSError:
                pass
        _remove(Path(entry.path))


def _writer_alive(pid: int, entry: os.DirEntry) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_SECONDS
    except OSError:
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # a folder we may not write to: leave it
            path.unlink(missing_ok=True)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def write_file(path: str | os.PathLike, data: bytes, *, force: bool = False, error: Error = UserError) -> Path:
    """Write `data` as `path` in one rename. Without `force` an existing file is never replaced, not even
    one that appears while we write."""
    path = Path(path)
    clean_stale(path.parent)
    if path.is_dir():
        raise error(f"{path} is a folder; give a file name")
    if not force and _exists(path):
        raise error(f"{path} already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(path, "tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the name exists: no window to clobber a new file
            except FileExistsError:
                raise error(f"{path} already exists; pass --force to overwrite it") from None
            except OSError:  # a filesystem without hard links
                if _exists(path):
                    raise error(f"{path} already exists; pass --force to overwrite it") from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_folder(folder: str | os.PathLike, fill: Callable[[Path], None], *, force: bool = False,
                 error: Error = UserError, what: str = "output",
                 replaceable: Callable[[Path], bool] = lambda p: False) -> Path:
    """Build a folder with `fill(tmp)` beside `folder`, then rename it into place.

    Without `force` an existing `folder` is refused. With it, only a folder that `replaceable` accepts
    (or an empty one) is replaced, never a file or someone's other folder; the old one is kept until the
    new one is in place.
    """
    folder = Path(folder)
    clean_stale(folder.parent)
    if _exists(folder):
        if not force:
            raise error(f"{folder} already exists; pass --force to replace it")
        if folder.is_symlink() or not folder.is_dir():
            raise error(f"{folder} exists and is not a {what} folder; choose another name")
        if any(folder.iterdir()) and not replaceable(folder):
            raise error(f"{folder} is not a {what} folder; refusing to replace it, even with --force")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = sibling(folder, "tmp"), None
    tmp.mkdir()
    try:
        fill(tmp)
        if force and _exists(folder):
            old = sibling(folder, "old")
            os.rename(folder, old)
        try:
            os.rename(tmp, folder)  # fails on a non-empty folder that appeared meanwhile
        except OSError:
            if old is not None:
                os.rename(old, folder)
            if _exists(folder):
                raise error(f"{folder} already exists; pass --force to replace it") from None
            raise
    finally:
        for p in (tmp, old):
            if p is not None and _exists(p):
                _remove(p)
    return folder
