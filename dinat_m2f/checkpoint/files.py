"""Writing files so that a kill or power loss never leaves a partial file under the final name, and
downloading checkpoints (MODEL.WEIGHTS as an http(s) URL) into the cache the same way."""
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
import uuid
from typing import BinaryIO, Callable
from urllib.parse import urlparse

from iopath.common.file_io import file_lock, get_cache_dir

from .readers import CheckpointFileError

__all__ = ["TEMPORARY_SUFFIX", "atomic_write", "cached_download", "is_url"]

logger = logging.getLogger(__name__)

# Temporary files are "<final name>.<random>.tmp" beside the final file (same file system, so the rename is
# atomic); a run killed while writing leaves one of these, never a partial file under the final name.
TEMPORARY_SUFFIX = ".tmp"
_DOWNLOAD_CHUNK = 1 << 20


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush and fsync it, then rename it to
    ``path``. On any error the temporary file is removed and ``path`` is unchanged."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
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


def cache_path(url: str) -> str:
    """Where ``url`` is cached: iopath's layout (what detectron2 uses), under $FVCORE_CACHE or
    ~/.torch/iopath_cache, so weights detectron2 downloaded before are reused."""
    parsed = urlparse(url)
    return os.path.join(get_cache_dir(), os.path.dirname(parsed.path.lstrip("/")), os.path.basename(parsed.path))


def _download(url: str, f: BinaryIO) -> None:
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as error:
        raise CheckpointFileError(f"Cannot download {url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise CheckpointFileError(f"Cannot download {url}: {getattr(error, 'reason', error)}") from error
    with response:
        expected = response.headers.get("Content-Length")
        try:
            shutil.copyfileobj(response, f, _DOWNLOAD_CHUNK)
        except (OSError, http.client.HTTPException) as error:  # connection reset, IncompleteRead
            raise CheckpointFileError(f"Cannot download {url}: the transfer broke off ({error!r})") from error
    received = f.tell()
    if expected is not None and received != int(expected):
        raise CheckpointFileError(f"Cannot download {url}: received {received} of {expected} bytes")
    if received == 0:
        raise CheckpointFileError(f"Cannot download {url}: the server sent an empty file")


def cached_download(url: str) -> str:
    """The local copy of ``url``, downloaded once into the cache (atomically: a broken transfer leaves no
    file there). Raises CheckpointFileError naming the URL when the download fails."""
    path = cache_path(url)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with file_lock(path):  # one process downloads, the others (e.g. DDP ranks) wait and reuse its file
        if not os.path.isfile(path):
            logger.info("Downloading %s to %s ...", url, path)
            atomic_write(path, lambda f: _download(url, f))
            logger.info("Downloaded %s (%d bytes)", url, os.path.getsize(path))
    return path
