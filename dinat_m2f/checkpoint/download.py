"""http(s) weights: where a URL is cached, and a download bounded in time and size.

The cache path of a URL is ``<cache root>/dinat_m2f/<scheme>/<host>[_<port>]/<path>`` (plus
``query-<hash>/`` before the file name when the URL has a query), built only from checked path segments:
a URL whose host or path has an empty, ``.`` or ``..`` segment is refused, so no URL reaches a file
outside the cache. Host and port are part of the key (the same path on another server is another file).
So is the query, hashed: it may select the file (``?id=3``) and must not be dropped, and hashing keeps
tokens out of file names; a changed token downloads the file again.

A download has an overall deadline and a size cap (environment variables below): a server that sends an
endless body, or a byte just often enough to defeat a per-read timeout, stops with an error naming the URL
and the limit.
"""
import hashlib
import http.client
import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO, List, Optional
from urllib.parse import urlsplit

from iopath.common.file_io import get_cache_dir

from .readers import CheckpointFileError

__all__ = ["DownloadLimits", "cache_path", "download"]

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "DINAT_M2F_DOWNLOAD_TIMEOUT"
MAX_BYTES_ENV = "DINAT_M2F_DOWNLOAD_MAX_BYTES"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 1 << 20
_MAX_SEGMENT_BYTES = 255  # the longest file name most file systems hold


@dataclass(frozen=True)
class DownloadLimits:
    """``deadline_s`` for the whole download (connecting, redirects, every byte); at most ``max_bytes``
    received; a connection silent for ``idle_s`` is given up on (within the deadline)."""

    deadline_s: float = 3600.0
    max_bytes: int = 4 << 30  # the released checkpoints are under 1 GiB
    idle_s: float = 60.0

    @classmethod
    def from_environment(cls) -> "DownloadLimits":
        """The defaults, or $DINAT_M2F_DOWNLOAD_TIMEOUT (seconds) and $DINAT_M2F_DOWNLOAD_MAX_BYTES."""
        values = {}
        for name, field, kind in ((TIMEOUT_ENV, "deadline_s", float), (MAX_BYTES_ENV, "max_bytes", int)):
            text = os.environ.get(name)
            if text is None:
                continue
            try:
                value = kind(text)
            except ValueError:
                value = None
            if value is None or not value > 0 or value == float("inf"):
                raise ValueError(f"${name}={text!r}: give a positive finite {'number' if kind is float else 'integer'}")
            values[field] = value
        return cls(**values)


def _checked_segment(url: str, segment: str, what: str) -> str:
    if segment in ("", ".", ".."):
        shown = "an empty segment ('//')" if not segment else f"a '{segment}' segment"
        raise CheckpointFileError(
            f"Refusing the URL {url}: its {what} has {shown}; it could name a file outside the download cache"
        )
    if "\x00" in segment or "\\" in segment or len(segment.encode()) > _MAX_SEGMENT_BYTES:
        raise CheckpointFileError(
            f"Refusing the URL {url}: its {what} segment {segment[:40]!r} cannot be a file name "
            f"(a NUL or backslash, or over {_MAX_SEGMENT_BYTES} bytes)"
        )
    return segment


def cache_path(url: str, cache_root: Optional[str] = None) -> str:
    """The file ``url`` is cached in, under ``cache_root`` (default: iopath's, $FVCORE_CACHE or
    ~/.torch/iopath_cache); see the module docstring. Raises CheckpointFileError naming the URL when it is
    not an http(s) URL naming a file, or has a segment that could leave the cache."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise CheckpointFileError(f"Refusing the URL {url}: only http:// and https:// URLs with a host are downloaded")
    try:
        port = parts.port
    except ValueError as error:
        raise CheckpointFileError(f"Refusing the URL {url}: {error}") from error
    host = parts.hostname if port in (None, _DEFAULT_PORTS[parts.scheme]) else f"{parts.hostname}_{port}"
    if parts.path in ("", "/") or parts.path.endswith("/"):
        raise CheckpointFileError(f"Refusing the URL {url}: it names no file (its path is empty or ends in '/')")
    segments = [_checked_segment(url, host, "host")]
    segments += [_checked_segment(url, s, "path") for s in parts.path.split("/")[1:]]
    if parts.query:
        segments.insert(-1, "query-" + hashlib.sha256(parts.query.encode()).hexdigest()[:16])
    return os.path.join(cache_root or get_cache_dir(), "dinat_m2f", parts.scheme, *segments)


class _Deadline:
    """Shuts the download's connections down when its time is up: a blocked read then returns at once, so
    no server can hold the download past the deadline (a per-read timeout alone is defeated by sending a
    byte just before it expires)."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: List[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def watch(self, sock: socket.socket) -> socket.socket:
        # a duplicate of the descriptor: shutdown acts on the connection, whatever object (a TLS wrapper
        # made later) reads it
        with self._lock:
            self._sockets.append(socket.socket(fileno=os.dup(sock.fileno())))
            if self.expired:
                self._sockets[-1].shutdown(socket.SHUT_RDWR)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed by the server
                    pass


class _WatchedConnections:
    """urllib handler part: every connection it opens (redirects included) is registered with the deadline."""

    def __init__(self, deadline: _Deadline, **kwargs):
        super().__init__(**kwargs)
        self.deadline = deadline

    def do_open(self, http_class, request, **kwargs):
        deadline = self.deadline

        class WatchedConnection(http_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                create = self._create_connection
                self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

        return super().do_open(WatchedConnection, request, **kwargs)


class _WatchedHTTPHandler(_WatchedConnections, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPSHandler(_WatchedConnections, urllib.request.HTTPSHandler):
    pass


class _HTTPRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only (urllib's own also follows ftp://, outside the deadline)."""

    def redirect_request(self, request, fp, code, msg, headers, new_url):
        if urlsplit(new_url).scheme not in _DEFAULT_PORTS:
            raise urllib.error.HTTPError(new_url, code, f"redirected to a non-http(s) URL {new_url}", headers, fp)
        return super().redirect_request(request, fp, code, msg, headers, new_url)


def _fail(url: str, reason: str) -> CheckpointFileError:
    return CheckpointFileError(f"Cannot download {url}: {reason}")


def _past_deadline(url: str, limits: DownloadLimits, received: int) -> CheckpointFileError:
    return _fail(url, f"not finished within {limits.deadline_s:g} s ({received} bytes received; set ${TIMEOUT_ENV} "
                 "to allow longer)")


def _over_size(url: str, limits: DownloadLimits, what: str) -> CheckpointFileError:
    return _fail(url, f"the server {what}, over the limit of {limits.max_bytes} bytes (set ${MAX_BYTES_ENV} to "
                 "allow more)")


def _read_some(response, url: str, limits: DownloadLimits, deadline: _Deadline, received: int) -> bytes:
    """What has arrived (at most a chunk): a slow server holds no read for long."""
    try:
        return response.read1(_CHUNK)
    except (OSError, http.client.HTTPException) as error:  # connection reset, IncompleteRead
        if deadline.expired:
            raise _past_deadline(url, limits, received) from error
        raise _fail(url, f"the transfer broke off ({error!r})") from error


def download(url: str, f: BinaryIO, limits: DownloadLimits) -> None:
    """Write the body of ``url`` to ``f``, within ``limits``. Raises CheckpointFileError naming the URL on an
    HTTP error, a broken or short transfer, an empty body, or a limit reached."""
    with _Deadline(limits.deadline_s) as deadline:
        opener = urllib.request.build_opener(
            _WatchedHTTPHandler(deadline), _WatchedHTTPSHandler(deadline), _HTTPRedirectsOnly()
        )
        try:
            response = opener.open(url, timeout=min(limits.idle_s, limits.deadline_s))
        except urllib.error.HTTPError as error:
            raise _fail(url, f"HTTP {error.code} {error.reason}") from error
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            if deadline.expired:
                raise _past_deadline(url, limits, 0) from error
            raise _fail(url, str(getattr(error, "reason", error))) from error
        with response:
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            if expected is not None and expected > limits.max_bytes:
                raise _over_size(url, limits, f"announces {expected} bytes")
            while chunk := _read_some(response, url, limits, deadline, f.tell()):
                if f.tell() + len(chunk) > limits.max_bytes:
                    raise _over_size(url, limits, "sends more")
                try:
                    f.write(chunk)
                except OSError as error:  # e.g. the disk is full
                    raise _fail(url, f"cannot write to the cache ({error.strerror})") from error
    received = f.tell()
    if deadline.expired:  # the shut-down connection read as the end of the body
        raise _past_deadline(url, limits, received)
    if expected is not None and received != expected:
        raise _fail(url, f"received {received} of {expected} bytes")
    if received == 0:
        raise _fail(url, "the server sent an empty file")
