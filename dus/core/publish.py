"""Atomic publication: what dus writes appears whole or not at all, one writer per output.

An output directory (`atomic_directory`), a model's files joining a run's
directory (`atomic_model_files`), one text file (`atomic_write_text`). Every
published file gets the mode an ordinary file gets under the umask
(`follow_umask`): some writers (safetensors, tempfile) create theirs 0600.

Everything is written into a hidden sibling, `.NAME.dus-partial-PID`, that
takes OUTPUT's place only when complete. Replacing an existing OUTPUT
(--force) is one atomic exchange of the two directories (Linux renameat2
RENAME_EXCHANGE); where the file system lacks it, OUTPUT is renamed to
`.NAME.dus-old-PID` first, and if the build dies before the second rename the
next build into that directory puts it back. A lock on `.NAME.dus-lock`
keeps two builds off one OUTPUT, and the build that holds it removes what
dead builds left in the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import stat
import sys
import threading
from pathlib import Path

from dus.errors import BuildError, InputError

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
NO_SPACE = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}
WEIGHTS_ENTRIES = ("model.safetensors", "model.safetensors.index.json")  # what makes a directory load as a model
_LEFTOVER = re.compile(r"\.(.+)\.dus-(?:(partial|old)-([0-9]{1,9})|lock)")


def on_step(step: str) -> None:
    """Called at each step of publishing; tests replace it to stop or kill a build at that instant."""


@contextlib.contextmanager
def atomic_directory(output: Path, force: bool = False):
    """Yield a staging directory that becomes OUTPUT when the block ends without error."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output.parent, output.name):
        checked = _identity(output)
        if checked and not force:
            raise InputError(f"{output} already exists (use --force to replace it)")
        if checked and not output.is_dir():
            raise InputError(f"{output} exists and is not a directory")
        with staging_directory(output.parent, output.name) as staging:
            yield staging
            follow_umask(staging)
            on_step("publishing")
            if _identity(output) != checked:  # the lock keeps out dus, not other programs
                raise _unchecked(output, "appeared" if checked is None else "changed")
            _publish(staging, output)


@contextlib.contextmanager
def atomic_model_files(directory: Path):
    """Yield a staging directory whose files join DIRECTORY, a directory that holds other things too
    (a training run's checkpoints and logs), as one model.

    The weights entry (`model.safetensors` or its index) is removed first and
    renamed in last, so a directory that has one has every file of its model.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with output_lock(directory, "model"), staging_directory(directory, "model") as staging:
        yield staging
        follow_umask(staging)
        on_step("publishing")
        for name in WEIGHTS_ENTRIES:
            (directory / name).unlink(missing_ok=True)
        for name in sorted(os.listdir(staging), key=lambda n: n in WEIGHTS_ENTRIES):
            os.replace(staging / name, directory / name)
            on_step(f"moved {name}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write PATH whole or not at all: a temporary file beside it, fsync, rename over PATH, fsync the
    directory. After a crash PATH is the old file or the new one; the temporary file follows the umask."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """This process's umask, read without setting it where the system tells it (Linux >= 4.7)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(directory: Path) -> None:
    """Give everything under DIRECTORY, and itself, the mode an ordinary file or directory gets:
    0666 (0777 for directories and executables) less the umask."""
    mask = umask()
    os.chmod(directory, 0o777 & ~mask)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, (0o777 if mode & 0o111 else 0o666) & ~mask)


@contextlib.contextmanager
def output_lock(parent: Path, name: str):
    """Hold `.NAME.dus-lock` in PARENT, or fail at once naming the process that holds it."""
    with _held(parent, name) as mine:
        if not mine:  # exit 1, not 2: the request is valid, the moment is not; it succeeds once the other ends
            raise BuildError(
                f"{parent / name} is being written by another dus process{_holder(parent, name)}; "
                "wait for it to finish or choose another output"
            )
        _sweep(parent, name)
        yield


@contextlib.contextmanager
def _held(parent: Path, name: str):
    """flock on the lock file, yielding whether we got it.

    The file is removed when released, so a finished build leaves nothing. That
    is safe because a locker checks, once it holds the lock, that the file it
    locked is still the one at the path: one that locked a file its holder
    then removed tries again with a new file instead of sharing the lock.
    """
    path = parent / f".{name}.dus-lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise InputError(f"cannot write in {parent} (permission denied)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except OSError as e:  # a file system without locks (some network mounts): build unlocked, as before
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
            break
        if _identity(path) == _identity(fd):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for the message a second build prints
        yield True
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _holder(parent: Path, name: str) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        pid = (parent / f".{name}.dus-lock").read_text().strip()
        if pid.isdigit():
            return f" (pid {pid})"
    return ""


def _sweep(parent: Path, held: str) -> None:
    """Remove what dead builds left in PARENT (staging directories, lock files), and put back an
    OUTPUT a killed --force hid.

    A leftover is stale when its PID is not alive and no build holds its
    output's lock (every build holds it for as long as its leftovers could be
    in use). A dead PID reused by another process keeps a leftover until a
    later run: that errs on the side of keeping, never of removing.
    """
    for entry in sorted(os.listdir(parent)):
        match = _LEFTOVER.fullmatch(entry)
        if not match or (match[2] and _alive(int(match[3]))):
            continue
        name, kind = match[1], match[2]
        with contextlib.nullcontext(True) if name == held else _held(parent, name) as mine:
            if mine and kind:  # a lock file alone goes when released
                _recover(parent / entry, parent / name, kind)


def _recover(leftover: Path, output: Path, kind: str) -> None:
    if kind == "old" and not os.path.lexists(output):
        os.rename(leftover, output)
        _say(f"restored {output.name} from {leftover.name}, left by a run killed while replacing it")
        return
    _remove(leftover)
    if not os.path.lexists(leftover):
        _say(f"removed stale {leftover.name} left by a dead run")


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # we made nothing yet; containers give each run the same PID
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def staging_directory(parent: Path, name: str):
    """`.NAME.dus-partial-PID` in PARENT, removed on the way out (and by the sweep if this run dies)."""
    staging = parent / f".{name}.dus-partial-{os.getpid()}"
    staging.mkdir()
    try:
        yield staging
    except OSError as e:
        if e.errno in NO_SPACE:
            raise out_of_space(e, parent, e.filename and os.path.basename(e.filename)) from e
        raise
    finally:
        _remove(staging)  # after a failure the partial output; after an exchange the old one


def _publish(staging: Path, output: Path) -> None:
    if not os.path.lexists(output):
        try:
            if not _rename2(staging, output, RENAME_NOREPLACE):
                os.rename(staging, output)
        except FileExistsError:
            raise _unchecked(output, "appeared") from None
        return
    if _rename2(staging, output, RENAME_EXCHANGE):
        on_step("exchanged")  # OUTPUT is the new model; the old one, now at the staging name, is removed
        return
    old = output.parent / f".{output.name}.dus-old-{os.getpid()}"
    os.rename(output, old)
    try:
        on_step("old-hidden")  # the one instant without OUTPUT: a kill here leaves `old` for the next run
        os.rename(staging, output)
    except BaseException:
        os.rename(old, output)
        raise
    _remove(old)


def _unchecked(output: Path, change: str) -> BuildError:
    return BuildError(f"{output} {change} during the build; not replacing what this build did not check")


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_renameat2 = _load_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2 with FLAGS; False where the system or file system lacks it."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _identity(path) -> tuple[int, int] | None:
    """(device, inode) of a path (not followed if a symlink) or an open descriptor; None if absent."""
    try:
        st = os.fstat(path) if isinstance(path, int) else os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _remove(path: Path) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _say(message: str) -> None:
    print(f"dus: {message}", file=sys.stderr)


def free_bytes(directory) -> int:
    """Bytes this user may still write in DIRECTORY's file system (tests replace this)."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def require_space(directory, needed: int) -> None:
    """Refuse before writing when NEEDED bytes clearly cannot fit."""
    free = free_bytes(directory)
    if free < needed:
        raise BuildError(f"not enough space in {directory}: the model needs {needed:,} bytes, {free:,} free")


def out_of_space(e: OSError, directory, file: str | None = None, needed: int | None = None) -> BuildError:
    """One line for a write that failed for space: what was written where, what it needed, what is free."""
    where = f"{file} in {directory}" if file else f"in {directory}"
    needs = f"needs {needed:,} bytes more, " if needed is not None else ""
    hint = "; try a smaller --shard-size" if e.errno == errno.EFBIG else ""
    return BuildError(f"{NO_SPACE[e.errno]} writing {where}: {needs}{free_bytes(directory):,} bytes free{hint}")
