"""Write output files so that a reader never sees a half-written file and an input is never destroyed.

Every file schash writes (a model, an annotated ``.h5ad``, a CSV table) is first written
to a temporary file in the target's own folder and renamed into place only when it is
complete (``os.replace``, atomic on POSIX file systems).  Without ``overwrite`` the finished
file is placed with ``os.link``, which fails if the target exists, so an existing file is
never replaced, even by a concurrent writer.

Temporary files are named ``schash-tmp-<pid>-<random>-<target name>``.  A process killed
while writing (SIGKILL, power loss) cannot remove its own; the next write of the same
target removes every such file whose process no longer runs on this machine (or that is
older than a day).  That is the only way one can be left behind, and it does not outlive
the next successful write of its target.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from pathlib import Path

PREFIX = "schash-tmp-"
STALE_SECONDS = 24 * 3600


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other portable way to read it
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def temp_files(path) -> list[Path]:
    """Temporary files of earlier writes of ``path`` (of any process), in the target's folder."""
    path = Path(path)
    pattern = os.path.join(glob.escape(str(path.parent)), f"{PREFIX}*-*-{glob.escape(path.name)}")
    return [Path(p) for p in glob.glob(pattern)]


def remove_stale(path) -> None:
    """Remove temporary files of ``path`` left by writers that were killed (see the module docstring)."""
    now = time.time()
    for tmp in temp_files(path):
        try:
            pid = int(tmp.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        try:
            old = now - tmp.stat().st_mtime > STALE_SECONDS
            if (pid != os.getpid() and not _alive(pid)) or old:
                tmp.unlink()
        except FileNotFoundError:
            pass


def check_output(path, *, inputs=(), overwrite: bool = False, flag: str = "overwrite=True") -> Path:
    """Refuse an output that is one of the ``inputs``, lies in a missing folder, or exists (without overwrite).

    Called before any work is done, so a run does not fail only at the end.
    """
    path = Path(path)
    for src in inputs:
        if src is None:
            continue
        same = os.path.realpath(path) == os.path.realpath(src)
        if not same and path.exists() and os.path.exists(src):
            same = os.path.samefile(path, src)
        if same:
            raise FileExistsError(f"the output {path} is the input {src}; write to another file")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass {flag} to replace it")
    return path


def write_atomic(path, writer, *, overwrite: bool = False, inputs=(), flag: str = "overwrite=True") -> None:
    """Call ``writer(tmp_path)`` to write a temporary file, then move it to ``path`` in one step.

    On any failure (including the writer's) the temporary file is removed and ``path``
    is left as it was.  The file gets the mode the umask gives a new file.
    """
    path = check_output(path, inputs=inputs, overwrite=overwrite, flag=flag)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", suffix=f"-{path.name}", dir=path.parent or ".")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:  # on disk before it gets the target's name
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path, flag)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _place_new(tmp: str, path: Path, flag: str) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has that name (atomic check and place)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass {flag} to replace it") from None
    except OSError:  # a file system without hard links: the check and the rename are two steps
        if path.exists():
            raise FileExistsError(f"{path} exists; pass {flag} to replace it") from None
        os.replace(tmp, path)


def write_bytes(path, data: bytes, **kwargs) -> None:
    def writer(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomic(path, writer, **kwargs)
