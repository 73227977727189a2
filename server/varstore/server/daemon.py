"""The operating-system side of ``varstore serve``: pidfile, detaching, ``varstore stop``.

A pidfile names the server's pid and stays locked (``flock``) by the server for as long as it
runs. The lock, not the pid, says whether a server is running: after a crash the pid may
belong to another process, while the lock died with the server.

With ``--daemon`` the server detaches (double fork, new session, standard streams redirected
to the log file) and the launching process waits, through a pipe, until the server reports
that it listens (exit 0) or why it could not start (exit 1).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05


class DaemonError(Exception):
    """A server could not be started or stopped; the message says why."""


class PidFile:
    """A pidfile held (locked) by the running server."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Locks and empties the pidfile; returns the pid a stale pidfile named, if any.

        Raises ``DaemonError`` when a running server holds it, ``OSError`` when it cannot be
        opened.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            pid = _read_pid(fd)
            os.close(fd)
            raise DaemonError(f"a varstore server (pid {pid}) is already running with pidfile "
                              f"{self.path}")
        stale = _read_pid(fd)
        os.ftruncate(fd, 0)
        self._fd = fd
        return stale

    def write(self, pid: int) -> None:
        """Records ``pid`` (the server's, after detaching)."""
        assert self._fd is not None, "acquire() first"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{pid}\n".encode(), 0)
        os.fsync(self._fd)

    def remove(self) -> None:
        """Removes the pidfile (the process is exiting). The lock is kept: the system drops it
        when the process has exited, which is what ``varstore stop`` waits for."""
        if self._fd is not None and _same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)


class ServeProcess:
    """One ``varstore serve`` process: its pidfile, detaching, and its start-up report.

    In the foreground the report goes to stdout (ready) or stderr (failed); detached, to the
    launching process, which prints it and exits 0 (ready) or 1 (failed). With a log file, the
    log records it too.
    """

    def __init__(self, pidfile: Path | None = None, log_file: Path | None = None,
                 detach: bool = False) -> None:
        self.pidfile = PidFile(pidfile) if pidfile is not None else None
        self.log_file = log_file
        self.detach = detach
        self._report_fd: int | None = None

    def start(self) -> None:
        """Takes the pidfile, detaches if asked (the launching process exits in here, once the
        server reports) and records the server's pid.

        Raises ``DaemonError`` for missing flags or a server already running, ``OSError`` for
        files that cannot be opened.
        """
        if self.detach and (self.pidfile is None or self.log_file is None):
            raise DaemonError("--daemon needs --pidfile and --log-file")
        if self.pidfile is None:
            return
        stale = self.pidfile.acquire()
        if stale is not None:
            note = f"pidfile {self.pidfile.path} named pid {stale}, which is not running; " \
                   f"overwriting it"
            log.warning(note)
            if self.log_file is not None:  # logging goes to the file; tell the terminal too
                print(f"varstore serve: {note}", file=sys.stderr, flush=True)
        if self.detach:
            assert self.log_file is not None
            self._report_fd = _detach(self.log_file)
        self.pidfile.write(os.getpid())

    def ready(self, message: str) -> None:
        """Reports that the server serves."""
        self._tell(logging.INFO, message, 0)

    def failed(self, message: str) -> None:
        """Removes the pidfile, then reports why the server could not start (in that order:
        with ``--daemon`` the launching process exits on the report)."""
        self.close()
        self._tell(logging.ERROR, message, 1)

    def close(self) -> None:
        """Removes the pidfile (the server is exiting)."""
        if self.pidfile is not None:
            self.pidfile.remove()

    def _tell(self, level: int, message: str, code: int) -> None:
        if self.log_file is not None:  # the log file records it, with a timestamp
            log.log(level, "%s", message)
        if self._report_fd is None:
            print(message, file=sys.stdout if code == 0 else sys.stderr, flush=True)
            return
        os.write(self._report_fd, f"{code} {os.getpid()} {message}".encode())
        os.close(self._report_fd)
        self._report_fd = None


def _detach(log_file: Path) -> int:
    """Double-forks into a new session with stdin from /dev/null and stdout/stderr appended to
    ``log_file``; returns, in the daemon, the pipe on which to report start-up. The launching
    process never returns: it waits for the report and exits."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child:
        os.close(write_fd)
        os.waitpid(child, 0)
        code = _await_report(read_fd, log_file)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    return write_fd


def _await_report(read_fd: int, log_file: Path) -> int:
    """Waits for the daemon's start-up report; prints it; returns the exit code."""
    data = b""
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    code, pid, message = (data.decode(errors="replace").split(" ", 2) + ["", ""])[:3]
    if code == "0":
        print(f"{message}\nvarstore daemon pid {pid}, log {log_file}")
        return 0
    if code == "1":
        print(message, file=sys.stderr)
    else:
        print(f"varstore serve: the daemon exited during start-up; see {log_file}",
              file=sys.stderr)
    return 1


def stop(pidfile: Path, timeout: float) -> int:
    """Stops the server holding ``pidfile`` with SIGTERM and waits until it exited (it
    finishes the calls in flight first); returns its pid.

    Raises ``DaemonError`` when there is no pidfile, when no server holds it (the stale pidfile
    is removed) or when the server did not exit within ``timeout`` seconds.
    """
    path = Path(pidfile)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise DaemonError(f"no pidfile {path}; is the server running?") from None
    try:
        pid = _read_pid(fd)
        if _try_lock(fd):
            path.unlink(missing_ok=True)
            raise DaemonError(f"no varstore server is running: pid {pid} from {path} is gone; "
                              f"removed the stale pidfile")
        if pid is None:
            raise DaemonError(f"pidfile {path} names no pid yet; the server is starting")
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as e:
            raise DaemonError(f"cannot signal pid {pid} from {path}: {e.strerror}") from None
        deadline = time.monotonic() + timeout
        while not (_try_lock(fd) and _exited(pid)):
            if time.monotonic() > deadline:
                raise DaemonError(f"the server (pid {pid}) did not stop within {timeout:g}s")
            time.sleep(POLL_SECONDS)
        if _same_file(fd, path):
            path.unlink(missing_ok=True)
        return pid
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _exited(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A zombie has exited but still answers kill(pid, 0).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not a newer pidfile)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
