"""One training per OUTPUT_DIR: two runs there overwrote each other's checkpoints, config and metrics and
interleaved their logs, both exiting 0.

The first run takes an exclusive ``fcntl.flock`` on ``OUTPUT_DIR/training.lock`` and writes who holds it
(process id, host, start time, command). The kernel releases the lock when the process ends in any way
(exit, exception, SIGKILL, a crash), so a lock is never stale: a run after a crash takes it at once. A second
run finds it held and stops before any work, naming the directory and the holder. Where the file system
cannot lock (some network file systems), a warning says so and the run goes on unprotected.
"""
import datetime
import errno
import fcntl
import logging
import os
import socket
import sys
from typing import Dict

__all__ = ["LOCK_NAME", "OutputDirInUseError", "lock_output_dir", "unlock_output_dir"]

logger = logging.getLogger(__name__)

LOCK_NAME = "training.lock"
_held: Dict[str, int] = {}  # realpath of the output folder -> descriptor holding its lock


class OutputDirInUseError(RuntimeError):
    """Another training holds the OUTPUT_DIR."""


def lock_output_dir(output_dir: str) -> None:
    """Take ``output_dir``'s lock for this process (until :func:`unlock_output_dir` or the process ends).
    Raises OutputDirInUseError naming the folder and the holder when another process has it."""
    os.makedirs(output_dir, exist_ok=True)
    key = os.path.realpath(output_dir)
    if key in _held:
        return
    path = os.path.join(output_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            logger.warning("Cannot lock %s (%s): nothing stops another training from using %s at the same time",
                           path, error.strerror, output_dir)
            return
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that has not written its name yet"
        os.close(fd)
        raise OutputDirInUseError(
            f"OUTPUT_DIR {output_dir} is in use by another training: {holder}. Two runs in one folder overwrite "
            "each other's checkpoints and logs: wait for it to end, or give this run another OUTPUT_DIR."
        ) from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    holder = f"process {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv)}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder.encode() + b"\n", 0)
    _held[key] = fd


def unlock_output_dir(output_dir: str) -> None:
    """Release this process's lock on ``output_dir`` (if it holds one)."""
    fd = _held.pop(os.path.realpath(output_dir), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
