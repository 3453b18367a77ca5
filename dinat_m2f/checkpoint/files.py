"""Writing files so that a kill or power loss never leaves a partial file under the final name, and
downloading checkpoints (MODEL.WEIGHTS as an http(s) URL) into the cache the same way."""
import contextlib
import glob
import hashlib
import logging
import os
import re
import signal
import threading
import uuid
from typing import BinaryIO, Callable, Iterator, Optional
from urllib.parse import urlparse

from iopath.common.file_io import file_lock

from .download import DownloadLimits, cache_path, download
from .readers import CheckpointFileError

__all__ = ["TEMPORARY_SUFFIX", "ChecksumError", "atomic_write", "cached_download", "is_url", "md5_prefix_in_name"]

logger = logging.getLogger(__name__)

# Temporary files are "<final name>.<random>.tmp" beside the final file (same file system, so the rename is
# atomic); a run killed while writing leaves one of these, never a partial file under the final name.
TEMPORARY_SUFFIX = ".tmp"
# detectron2's and Mask2Former's released files carry the first hex digits of their md5 in the name
_MD5_IN_NAME = re.compile(r"^model_final_([0-9a-f]{6})\.pkl$")
_MD5_CHUNK = 1 << 20


class ChecksumError(CheckpointFileError):
    """Downloaded bytes whose md5 is not the one the file name carries."""


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


class _Terminated(BaseException):
    """SIGTERM arrived while a temporary file was being written."""


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextlib.contextmanager
def _removal_before_sigterm() -> Iterator[None]:
    """While inside, SIGTERM raises _Terminated (so ``except``/``finally`` blocks remove temporary files, as
    they do on Ctrl-C), then ends the process as the signal would have. Only where SIGTERM has its default
    action and in the main thread (the only one that can set handlers): a handler installed by someone else
    is theirs to keep."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush and fsync it, then rename it to
    ``path``. On any error, Ctrl-C or SIGTERM the temporary file is removed and ``path`` is unchanged."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    with _removal_before_sigterm():
        try:
            with open(temporary, "xb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
    _fsync_directory(directory)


def is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _remove_interrupted_downloads(path: str) -> None:
    """Temporary files of downloads into ``path`` that a SIGKILL or power loss interrupted (called with the
    download's lock held, so none of them is being written)."""
    for leftover in glob.glob(f"{glob.escape(path)}.*{TEMPORARY_SUFFIX}"):
        logger.info("Removing %s, left by a download that was interrupted", leftover)
        os.remove(leftover)


def md5_prefix_in_name(url: str) -> Optional[str]:
    """The md5 prefix that the file name of ``url`` carries (``model_final_94dc52.pkl``: "94dc52"), else None."""
    match = _MD5_IN_NAME.match(os.path.basename(urlparse(url).path))
    return match.group(1) if match else None


def _check_md5_prefix(url: str, f: BinaryIO) -> None:
    """Raises ChecksumError when the bytes written to ``f`` do not have the md5 prefix of the name of ``url``."""
    expected = md5_prefix_in_name(url)
    if expected is None:
        return
    f.flush()
    md5 = hashlib.md5()
    with open(f.name, "rb") as written:
        for chunk in iter(lambda: written.read(_MD5_CHUNK), b""):
            md5.update(chunk)
    actual = md5.hexdigest()[: len(expected)]
    if actual != expected:
        raise ChecksumError(
            f"md5 mismatch for {url}: the file name says its md5 starts with {expected}, the downloaded bytes' md5 "
            f"starts with {actual} (a damaged or replaced file); nothing was cached"
        )


def _download_checked(url: str, f: BinaryIO, limits: DownloadLimits) -> None:
    download(url, f, limits)
    _check_md5_prefix(url, f)


def cached_download(url: str) -> str:
    """The local copy of ``url``, downloaded once into the cache (:func:`.download.cache_path`; atomically:
    a broken or interrupted transfer leaves no file there) within the limits of
    :meth:`DownloadLimits.from_environment`; a file named with an md5 prefix (``model_final_<6 hex>.pkl``) is
    checked against its bytes before it is renamed into the cache. Raises CheckpointFileError (ChecksumError for
    an md5 mismatch) naming the URL when the URL is refused or the download fails."""
    path = cache_path(url)
    if os.path.isfile(path):
        return path
    limits = DownloadLimits.from_environment()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with file_lock(path):  # one process downloads, the others (e.g. DDP ranks) wait and reuse its file
        if not os.path.isfile(path):
            _remove_interrupted_downloads(path)
            logger.info("Downloading %s to %s ...", url, path)
            atomic_write(path, lambda f: _download_checked(url, f, limits))
            logger.info("Downloaded %s (%d bytes)", url, os.path.getsize(path))
    return path
