# fileslink: upload files to files.link with nothing but the Python standard library.
#
# MIT License
#
# Copyright (c) 2026 the fileslink authors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in all
# copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
"""Upload files to files.link: presign, PUT, confirm; multipart for big files.

One call, configured from the environment (FILESLINK_KEY, FILESLINK_FOLDER,
FILESLINK_BASE_URL)::

    import fileslink
    f = fileslink.upload("report.pdf")
    print(f.id, f.size)

A client to reuse (connections, rate-limit state) and share between threads::

    with fileslink.Client(max_workers=8) as client:
        files = client.upload_many(["a.jpg", "b.jpg"], folder_id="...")

Every error is a FilesLinkError subclass (or an OSError for a local file that
cannot be read), and none of them carries the API key.  From a shell::

    python -m fileslink upload ./photos --folder FOLDER_ID
"""

from __future__ import annotations

import collections
import http.client
import os
import random
import re
import select
import socket
import sys
import threading
import time
import urllib.parse

# json, hashlib, concurrent.futures, logging, tempfile, urllib.request and
# argparse are imported where first needed: a Lambda cold start pays for every
# module imported here, and http.client is the floor we measure against.

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthError",
    "Client",
    "ConfigError",
    "FilesLinkError",
    "ProtocolError",
    "RateLimitError",
    "Retry",
    "SourceChangedError",
    "TransferError",
    "UploadManyError",
    "UploadedFile",
    "main",
    "upload",
]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs import time; annotations are strings anyway
    import ssl
    from concurrent.futures import Future, ThreadPoolExecutor
    from typing import (
        Any,
        BinaryIO,
        Callable,
        Deque,
        Dict,
        Iterable,
        Iterator,
        List,
        Optional,
        Sequence,
        Set,
        Tuple,
        TypeVar,
        Union,
    )

    T = TypeVar("T")

    #: What upload() accepts: a path, bytes, or a binary file object.
    Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]
    #: What upload_many() accepts per item: a source, or (name, source).
    Item = Union[Source, Tuple[str, Source]]
    Progress = Callable[[str, int, int], None]
    Json = Dict[str, Any]


# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

_DEFAULT_BASE_URL = "https://api.files.link"
_ENV_KEY = "FILESLINK_KEY"
_ENV_FOLDER = "FILESLINK_FOLDER"
_ENV_BASE_URL = "FILESLINK_BASE_URL"

#: Bytes per socket write: 8 KiB writes (urllib's) run ~5x slower on loopback.
_BLOCK = 1024 * 1024
#: Error bodies are read up to this much; a hostile 10 MiB page is not held.
_MAX_ERROR_BODY = 64 * 1024
#: Successful API bodies (a listing of a big folder) are read up to this much.
_MAX_BODY = 32 * 1024 * 1024
#: A non-seekable source is held in memory up to this size, then spooled to disk.
_SPOOL_MEMORY = 8 * 1024 * 1024
#: Object storage allows at most this many parts per multipart upload.
_MAX_PARTS = 10000
#: How often a single-part upload is presigned again after its URL expired.
_EXPIRED_REPRESIGNS = 2
#: A Retry-After longer than this is not waited for: the error is raised.
_MAX_RETRY_AFTER = 900.0
#: Statuses worth another try: the request may succeed unchanged.
_RETRY_STATUSES = frozenset((408, 429, 500, 502, 503, 504))
#: How long aborting a multipart upload may take after Ctrl-C.
_ABORT_TIMEOUT = 1.5
#: Idle connections kept per origin beyond max_workers.
_SPARE_CONNECTIONS = 2

_USER_AGENT = "fileslink/%s python/%d.%d" % ((__version__,) + sys.version_info[:2])

#: Content types by extension: the mimetypes module reads /etc/mime.types and
#: answers differently from machine to machine; a presigned URL may be signed
#: with the type, so the guess must be the same everywhere.
_MIME_TYPES = {
    "7z": "application/x-7z-compressed", "aac": "audio/aac", "avi": "video/x-msvideo",
    "avif": "image/avif", "bmp": "image/bmp", "bz2": "application/x-bzip2",
    "css": "text/css", "csv": "text/csv", "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "epub": "application/epub+zip", "flac": "audio/flac", "gif": "image/gif",
    "gz": "application/gzip", "heic": "image/heic", "htm": "text/html",
    "html": "text/html", "ico": "image/vnd.microsoft.icon", "ics": "text/calendar",
    "jpeg": "image/jpeg", "jpg": "image/jpeg", "js": "text/javascript",
    "json": "application/json", "m4a": "audio/mp4", "md": "text/markdown",
    "mkv": "video/x-matroska", "mov": "video/quicktime", "mp3": "audio/mpeg",
    "mp4": "video/mp4", "mpeg": "video/mpeg", "odt": "application/vnd.oasis.opendocument.text",
    "oga": "audio/ogg", "ogg": "audio/ogg", "ogv": "video/ogg", "otf": "font/otf",
    "parquet": "application/vnd.apache.parquet", "pdf": "application/pdf",
    "png": "image/png", "ppt": "application/vnd.ms-powerpoint",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "rar": "application/vnd.rar", "rtf": "application/rtf", "svg": "image/svg+xml",
    "tar": "application/x-tar", "tgz": "application/gzip", "tif": "image/tiff",
    "tiff": "image/tiff", "ttf": "font/ttf", "txt": "text/plain", "wav": "audio/wav",
    "weba": "audio/webm", "webm": "video/webm", "webp": "image/webp", "woff": "font/woff",
    "woff2": "font/woff2", "xls": "application/vnd.ms-excel",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "xml": "application/xml", "yaml": "application/yaml", "yml": "application/yaml",
    "zip": "application/zip", "zst": "application/zstd",
}
_DEFAULT_MIME = "application/octet-stream"


# ---------------------------------------------------------------------------
# The protocol: routes [doc], and the one table of what is [assumed]
# ---------------------------------------------------------------------------

#: The files.link routes this client calls (published by files.link).
_ROUTES = {
    "presign": "/v1/files/{0}",
    "confirm": "/v1/files/confirm-upload",
    "initiate": "/v1/files/multipart/{0}/initiate",
    "complete": "/v1/files/multipart/complete",
    "abort": "/v1/files/multipart/abort",
    "file": "/v1/files/{0}",
    "folder_files": "/v1/files/folder/{0}",
    "signed": "/v1/files/signed/{0}",
    "link": "/v1/p",
    "public": "/v1/p/{0}",
    "file_link": "/v1/p/file/{0}",
    "projects": "/v1/projects",
    "projects_page": "/v1/projects/{0}",
    "project": "/v1/projects/project/{0}",
    "project_delete": "/v1/projects/{0}",
    "folders": "/v1/folders",
    "project_folders": "/v1/folders/project/{0}",
    "folder": "/v1/folders/{0}",
}

#: [assumed] Everything files.link has not published, in one place, so that
#: correcting a guess is a one-line change (README: "What is assumed").
_ASSUMED: Dict[str, Any] = {
    # Names in the multipart initiate response `data`: the first found wins.
    "file_id": ("fileId", "id"),
    "upload_id": ("uploadId", "UploadId"),
    "key": ("key", "Key", "s3Key"),
    "bucket": ("bucket", "Bucket"),
    "part_size": ("partSize", "chunkSize"),
    "parts": ("parts", "urls", "presignedUrls", "partUrls"),
    "part_url": ("url", "signedUrl", "presignedUrl"),
    "part_number": ("partNumber", "PartNumber"),
    # Where a folder listing keeps its files [seen: both shapes].
    "listing": ("data", "data.files"),
    # Completing a multipart upload marks the file uploaded: no confirm call.
    "complete_confirms": True,
    # Files per presign / confirm call: the API takes lists, its limit is unpublished.
    "batch_size": 50,
}


def _pick(data: Json, field: str, default: Any = None) -> Any:
    """The value of the first alias of `field` present in `data`."""
    for name in _ASSUMED[field]:
        value: Any = data
        for step in name.split("."):
            value = value.get(step) if isinstance(value, dict) else None
        if value is not None:
            return value
    return default


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class FilesLinkError(Exception):
    """Base class of every error fileslink raises (besides OSError for local files)."""


class ConfigError(FilesLinkError):
    """No API key, no folder id, or an option value that cannot work."""


class APIError(FilesLinkError):
    """The files.link API answered with an error (or could not be reached).

    Attributes:
        status: the HTTP status, or None when no answer came.
        message: the server's own `message`, if it sent one.
        body: the start of the response body (at most 64 KiB).
    """

    def __init__(self, text: str, status: Optional[int] = None, message: str = "",
                 body: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.message = message
        self.body = body


class AuthError(APIError):
    """401 or 403: the key is missing, wrong, or the account is blocked."""


class RateLimitError(APIError):
    """429 after the retries ran out (or a Retry-After too long to wait)."""


class TransferError(FilesLinkError):
    """A PUT to a presigned URL failed for good.

    Attributes:
        status: the HTTP status of the last try, or None (network error).
        part: the multipart part number, or None for a single-part upload.
    """

    def __init__(self, text: str, status: Optional[int] = None,
                 part: Optional[int] = None) -> None:
        super().__init__(text)
        self.status = status
        self.part = part


class SourceChangedError(TransferError):
    """The local file changed (size or modification time) while it was sent."""


class ProtocolError(FilesLinkError):
    """A response the client cannot read: not JSON, fields missing, a bad URL."""


class UploadManyError(FilesLinkError):
    """Some files of an upload_many() failed; the others were uploaded.

    Attributes:
        failures: (index, name, exception) for each failed source.
        uploaded: the UploadedFile of each source that succeeded.
        results: per source, in order, its UploadedFile or its exception.
    """

    def __init__(self, failures: List[Tuple[int, str, BaseException]],
                 results: List[Union[UploadedFile, BaseException]]) -> None:
        shown = "; ".join("%s: %s" % (name, exc) for _, name, exc in failures[:5])
        more = " (and %d more)" % (len(failures) - 5) if len(failures) > 5 else ""
        super().__init__("%d of %d files failed: %s%s"
                         % (len(failures), len(results), shown, more))
        self.failures = failures
        self.results = results
        self.uploaded = [r for r in results if isinstance(r, UploadedFile)]


class _Retryable(Exception):
    """One try failed in a way another try may fix (internal)."""

    def __init__(self, error: FilesLinkError, retry_after: Optional[float] = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _Expired(Exception):
    """A presigned URL has expired: sending again to it cannot work (internal)."""


class _Cancelled(Exception):
    """The upload was cancelled: Ctrl-C, or a sibling part failed (internal)."""


# ---------------------------------------------------------------------------
# Values: UploadedFile, Retry
# ---------------------------------------------------------------------------


class UploadedFile:
    """An uploaded file (immutable).

    Attributes: id, name, size, mime_type, s3_key, multipart (bool), and url
    (the permanent public link, or None).
    """

    __slots__ = ("id", "name", "size", "mime_type", "s3_key", "multipart", "url")
    id: str
    name: str
    size: int
    mime_type: str
    s3_key: str
    multipart: bool
    url: Optional[str]

    def __init__(self, id: str, name: str, size: int, mime_type: str, s3_key: str,
                 multipart: bool = False, url: Optional[str] = None) -> None:
        for field, value in zip(self.__slots__, (id, name, size, mime_type, s3_key,
                                                 multipart, url)):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("UploadedFile is immutable")

    def _replace(self, **changes: Any) -> UploadedFile:
        fields = {f: getattr(self, f) for f in self.__slots__}
        fields.update(changes)
        return UploadedFile(**fields)

    def to_dict(self) -> Json:
        """The JSON shape the CLI prints: id, name, size, s3Key, mimeType, multipart, url."""
        return {"id": self.id, "name": self.name, "size": self.size, "s3Key": self.s3_key,
                "mimeType": self.mime_type, "multipart": self.multipart, "url": self.url}

    def _key(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UploadedFile) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "UploadedFile(%s)" % ", ".join(
            "%s=%r" % (f, getattr(self, f)) for f in self.__slots__)


class Retry:
    """How failed calls are tried again (immutable).

    Args:
        attempts: tries in all, the first included (1 = never retry).
        backoff: the first wait's upper bound in seconds; it doubles per try.
        max_backoff: the longest computed wait.

    Waits are "full jitter": uniform between 0 and the bound, so many clients
    that failed together do not come back together. A server's Retry-After
    replaces the computed wait.
    """

    __slots__ = ("attempts", "backoff", "max_backoff")
    attempts: int
    backoff: float
    max_backoff: float

    def __init__(self, attempts: int = 5, backoff: float = 0.5,
                 max_backoff: float = 30.0) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError("Retry attempts must be a whole number >= 1, not %r" % (attempts,))
        for label, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError("Retry %s must be a number >= 0, not %r" % (label, value))
        object.__setattr__(self, "attempts", attempts)
        object.__setattr__(self, "backoff", float(backoff))
        object.__setattr__(self, "max_backoff", float(max_backoff))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Retry is immutable")

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        bound = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return random.uniform(0.0, bound)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retry) and (self.attempts, self.backoff, self.max_backoff) == (
            other.attempts, other.backoff, other.max_backoff)

    def __hash__(self) -> int:
        return hash((self.attempts, self.backoff, self.max_backoff))

    def __repr__(self) -> str:
        return "Retry(attempts=%d, backoff=%r, max_backoff=%r)" % (
            self.attempts, self.backoff, self.max_backoff)


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # already loaded by http.client

    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


def _parse_ratelimit(headers: http.client.HTTPMessage) -> Optional[Tuple[int, float]]:
    """(calls left, seconds to reset) from the IETF RateLimit header fields."""
    combined = headers.get("ratelimit")
    if combined:
        left = re.search(r"(?:^|[;,\s])r=(\d+)", combined)
        reset = re.search(r"(?:^|[;,\s])t=(\d+)", combined)
        if left and reset:
            return int(left.group(1)), float(reset.group(1))
    for prefix in ("ratelimit-", "x-ratelimit-"):
        left_text, reset_text = headers.get(prefix + "remaining"), headers.get(prefix + "reset")
        if left_text and reset_text and left_text.strip().isdigit():
            try:
                return int(left_text), float(reset_text)
            except ValueError:
                return None
    return None


class _RateGate:
    """The API's call budget, shared by every thread of a Client.

    Each response says how many calls are left in the window and when it
    resets; once none are left, callers wait for the reset instead of
    spending retries on 429s.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left: Optional[int] = None
        self._reset_at = 0.0

    def reserve(self) -> float:
        """Take one call from the budget; the seconds to wait before making it."""
        with self._lock:
            now = time.monotonic()
            if self._left is None or now >= self._reset_at:
                self._left = None
                return 0.0
            if self._left > 0:
                self._left -= 1
                return 0.0
            return self._reset_at - now

    def update(self, left: int, reset: float) -> None:
        with self._lock:
            self._left, self._reset_at = left, time.monotonic() + reset


# ---------------------------------------------------------------------------
# Logging and redaction
# ---------------------------------------------------------------------------


def _log(level: int, msg: str, *args: object) -> None:
    """Log to the "fileslink" logger, if the application uses logging at all.

    Importing logging costs a cold start ~4 ms; an application that never
    imported it has no handler that could receive the record.
    """
    logging = sys.modules.get("logging")
    if logging is not None:
        logger = logging.getLogger("fileslink")
        if logger.isEnabledFor(level):
            logger.log(level, msg, *args)


_DEBUG, _INFO, _WARNING = 10, 20, 30
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _where(url: str) -> str:
    """A URL fit for a message: the query string (a signature) left out."""
    parts = urllib.parse.urlsplit(url)
    return "%s://%s%s%s" % (parts.scheme, parts.netloc, parts.path,
                            "?..." if parts.query else "")


def _unsigned(text: str, url: str) -> str:
    """Text from storage may echo the request line: leave its signature out."""
    query = urllib.parse.urlsplit(url).query
    if query:
        text = text.replace(query, "...")
        for _, value in urllib.parse.parse_qsl(query):
            if len(value) >= 8:
                text = text.replace(value, "...")
    return text


def _clip(text: str, limit: int = 300) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------
# Wire: the only code that touches sockets
# ---------------------------------------------------------------------------


class _Response:
    __slots__ = ("status", "reason", "headers", "body", "truncated")

    def __init__(self, status: int, reason: str, headers: http.client.HTTPMessage,
                 body: bytes, truncated: bool) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.body, self.truncated = body, truncated

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Conn:
    """A pooled connection and how requests on it name their target."""

    __slots__ = ("http", "origin", "absolute", "proxy_auth", "reused")

    def __init__(self, conn: http.client.HTTPConnection, origin: Tuple[str, str, int],
                 absolute: bool, proxy_auth: Optional[str]) -> None:
        self.http, self.origin, self.absolute = conn, origin, absolute
        self.proxy_auth, self.reused = proxy_auth, False


class _Cancel:
    """Stops a running upload: a flag the workers check between blocks, and
    the sockets they may be blocked in, shut down so they return at once."""

    def __init__(self, parent: Optional[_Cancel] = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._conns: Set[_Conn] = set()
        self._children: Set[_Cancel] = set()
        self._parent = parent
        if parent is not None:
            with parent._lock:
                parent._children.add(self)
            if parent.is_set():
                self.set()

    def detach(self) -> None:
        """Leave the parent: a finished job must not be kept alive by its run."""
        if self._parent is not None:
            with self._parent._lock:
                self._parent._children.discard(self)

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise _Cancelled()

    def wait(self, seconds: float) -> None:
        """Sleep, but raise _Cancelled as soon as the upload is cancelled."""
        if self._event.wait(seconds):
            raise _Cancelled()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            conns, children = list(self._conns), list(self._children)
        for conn in conns:
            sock = conn.http.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for child in children:
            child.set()

    def track(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.add(conn)

    def untrack(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)


_NEVER = _Cancel()  # for calls made outside an upload: never set


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _proxy_for(scheme: str, netloc: str) -> Optional[Tuple[str, int, Optional[str]]]:
    """(host, port, Proxy-Authorization) of the proxy for a URL, or None.

    The rules are urllib's (getproxies, proxy_bypass with NO_PROXY), but
    urllib.request is only imported when some *_proxy variable is set.
    """
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None
    import urllib.request

    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(netloc):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urllib.parse.urlsplit(proxy)
    auth = None
    if parts.username is not None:
        import base64

        pair = "%s:%s" % (urllib.parse.unquote(parts.username),
                          urllib.parse.unquote(parts.password or ""))
        auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return parts.hostname or "", parts.port or 8080, auth


def _split_url(url: str) -> Tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an http(s) URL already checked."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return scheme, parts.hostname or "", port, target


def _network_error(what: str, where: str, exc: BaseException) -> Tuple[str, bool]:
    """A message for a failed exchange, and whether another try may help."""
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return ("%s: the TLS certificate of %s was refused (%s); trust your CA with "
                "--ca-bundle, ssl_context= or SSL_CERT_FILE" % (
                    what, where, _clip(str(exc.verify_message or exc))), False)
    return "%s: no answer from %s: %s" % (what, where, _clip(str(exc) or type(exc).__name__)), True


def _is_stale_error(exc: BaseException) -> bool:
    """Errors a kept-alive connection that the server closed while idle gives."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                        http.client.RemoteDisconnected)):
        return True
    return type(exc).__name__ in ("SSLEOFError", "SSLZeroReturnError")


class _Transport:
    """HTTP/1.1 exchanges over pooled persistent connections.

    A connection is checked out for one exchange and returned when its
    response was read to the end, so each worker thread in effect keeps
    its own connection per host.
    """

    def __init__(self, timeout: float, ssl_context: Optional[ssl.SSLContext],
                 max_idle: int) -> None:
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: Dict[Tuple[str, str, int], List[_Conn]] = {}

    def ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl_context is None:
                import ssl

                # Honours SSL_CERT_FILE / SSL_CERT_DIR, as OpenSSL reads them.
                self._ssl_context = ssl.create_default_context()
            return self._ssl_context

    def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        netloc = host if ":" not in host else "[%s]" % host
        if port not in (80, 443):
            netloc += ":%d" % port
        proxy = _proxy_for(scheme, netloc)
        conn: http.client.HTTPConnection
        if scheme == "https":
            if proxy is None:
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                   context=self.ssl_context())
            else:
                conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=self.timeout,
                                                   context=self.ssl_context())
                conn.set_tunnel(host, port, {"Proxy-Authorization": proxy[2]} if proxy[2] else None)
        else:
            conn = http.client.HTTPConnection(proxy[0] if proxy else host,
                                              proxy[1] if proxy else port, timeout=self.timeout)
        # Plain http through a proxy: absolute-form targets, credentials per request.
        via_proxy = scheme == "http" and proxy is not None
        return _Conn(conn, (scheme, host, port), via_proxy, proxy[2] if via_proxy and proxy else None)

    def _checkout(self, origin: Tuple[str, str, int], fresh: bool) -> _Conn:
        while not fresh:
            with self._lock:
                pool = self._idle.get(origin)
                conn = pool.pop() if pool else None
            if conn is None:
                break
            if _idle_and_open(conn.http.sock):
                conn.reused = True
                return conn
            conn.http.close()  # the server closed it while idle
        return self._connect(*origin)

    def _checkin(self, conn: _Conn) -> None:
        with self._lock:
            pool = self._idle.setdefault(conn.origin, [])
            if len(pool) < self._max_idle:
                pool.append(conn)
                return
        conn.http.close()

    def close(self) -> None:
        with self._lock:
            pools, self._idle = list(self._idle.values()), {}
        for pool in pools:
            for conn in pool:
                conn.http.close()

    def exchange(self, method: str, url: str, headers: Dict[str, str],
                 body: Union[bytes, _Payload, None] = None, *, cancel: _Cancel = _NEVER,
                 max_body: int = _MAX_ERROR_BODY, timeout: Optional[float] = None) -> _Response:
        """Send one request and read its response (up to max_body bytes).

        A kept-alive connection that turns out to be closed by the server is
        replaced once, without the caller seeing it: that failure says
        nothing about the request.
        """
        scheme, host, port, target = _split_url(url)
        fresh = False
        while True:
            cancel.check()
            conn = self._checkout((scheme, host, port), fresh)
            cancel.track(conn)
            try:
                # Each exchange sets its own: a pooled connection may come
                # from a short-timeout abort.
                conn.http.timeout = self.timeout if timeout is None else timeout
                if conn.http.sock is not None:
                    conn.http.sock.settimeout(conn.http.timeout)
                return self._once(conn, url if conn.absolute else target, method,
                                  headers, body, max_body)
            except BaseException as exc:
                conn.http.close()
                if conn.reused and not fresh and _is_stale_error(exc) and not cancel.is_set():
                    _log(_DEBUG, "%s %s: kept-alive connection was closed; reconnecting",
                         method, _where(url))
                    fresh = True
                    continue
                raise
            finally:
                cancel.untrack(conn)

    def _once(self, conn: _Conn, target: str, method: str, headers: Dict[str, str],
              body: Union[bytes, _Payload, None], max_body: int) -> _Response:
        h = conn.http
        h.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            h.putheader(name, value)
        if conn.proxy_auth:
            h.putheader("Proxy-Authorization", conn.proxy_auth)
        if body is not None:
            h.putheader("Content-Length", str(len(body) if isinstance(body, bytes) else body.length))
        answered_early = False
        try:
            if isinstance(body, _Payload):
                h.endheaders()
                body.send(h)
            else:
                h.endheaders(body)
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            # Object storage may answer before the body is in (a 403 for an
            # expired URL) and reset the connection: that answer is the news.
            try:
                response = h.getresponse()
            except Exception:
                raise exc from None
            answered_early = True
        else:
            response = h.getresponse()
        data = _read_full(response, max_body + 1)
        truncated = len(data) > max_body
        if truncated:
            data = data[:max_body]
        if answered_early or truncated or response.will_close or not response.isclosed():
            h.close()
        else:
            self._checkin(conn)
        return _Response(response.status, response.reason, response.headers, data, truncated)


def _idle_and_open(sock: Optional[socket.socket]) -> bool:
    """Whether an idle connection is still usable: nothing to read, no EOF."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


# ---------------------------------------------------------------------------
# Sources: what gets read, in blocks, from where
# ---------------------------------------------------------------------------


def _md5() -> Any:
    import hashlib

    if sys.version_info >= (3, 9):  # an integrity check, not security: FIPS allows it
        return hashlib.md5(usedforsecurity=False)
    return hashlib.md5()


class _Source:
    """A file to upload: its name, size, type, and positional reads."""

    name: str
    size: int
    mime_type: str

    def readinto(self, buf: memoryview, offset: int) -> int:
        raise NotImplementedError

    def view(self, offset: int, length: int) -> Optional[memoryview]:
        """The bytes themselves, when they are in memory (no copy)."""
        return None

    def check_unchanged(self) -> None:
        """Raise SourceChangedError if the data changed since it was opened."""

    def close(self) -> None:
        pass


class _PathSource(_Source):
    """A file on disk, opened by us; every worker reads its own range."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name
        self._file = open(path, "rb", buffering=0)  # OSError here: before any I/O
        try:
            st = os.fstat(self._file.fileno())
            import stat

            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(21, "Is a directory", path)
        except BaseException:
            self._file.close()
            raise
        self._stamp = (st.st_size, st.st_mtime_ns)
        self.size = st.st_size
        self._lock = threading.Lock()
        self._pread = getattr(os, "preadv", None)

    def readinto(self, buf: memoryview, offset: int) -> int:
        if self._pread is not None:
            return int(self._pread(self._file.fileno(), [buf], offset))
        with self._lock:  # no positional read here: one shared file position
            self._file.seek(offset)
            return self._file.readinto(buf) or 0

    def check_unchanged(self) -> None:
        st = os.fstat(self._file.fileno())
        if (st.st_size, st.st_mtime_ns) != self._stamp:
            raise SourceChangedError(
                "%s changed while it was being uploaded (size %d -> %d); not confirmed"
                % (self.name, self._stamp[0], st.st_size))

    def close(self) -> None:
        self._file.close()


class _BytesSource(_Source):
    def __init__(self, data: Union[bytes, bytearray, memoryview], name: str) -> None:
        self._data = memoryview(data).cast("B")
        self.name, self.size = name, self._data.nbytes

    def readinto(self, buf: memoryview, offset: int) -> int:
        chunk = self._data[offset:offset + len(buf)]
        buf[:len(chunk)] = chunk
        return len(chunk)

    def view(self, offset: int, length: int) -> memoryview:
        return self._data[offset:offset + length]


class _StreamSource(_Source):
    """A seekable binary file object; the caller's unless `owned`."""

    def __init__(self, stream: BinaryIO, name: str, owned: bool = False) -> None:
        self._stream, self.name, self._owned = stream, name, owned
        self._start = stream.tell()
        self.size = stream.seek(0, os.SEEK_END) - self._start
        stream.seek(self._start)
        self._lock = threading.Lock()

    def readinto(self, buf: memoryview, offset: int) -> int:
        with self._lock:
            self._stream.seek(self._start + offset)
            readinto = getattr(self._stream, "readinto", None)
            if readinto is not None:
                return int(readinto(buf) or 0)
            chunk = self._stream.read(len(buf))
            buf[:len(chunk)] = chunk
            return len(chunk)

    def close(self) -> None:
        if self._owned:
            self._stream.close()


def _spool(stream: BinaryIO, name: str) -> _Source:
    """A non-seekable stream, kept in memory if small, else in a temp file."""
    head = _read_full(stream, _SPOOL_MEMORY + 1)
    if len(head) <= _SPOOL_MEMORY:
        return _BytesSource(head, name)
    import tempfile

    spool = tempfile.TemporaryFile()  # removed by the OS when closed
    try:
        spool.write(head)
        del head
        while True:
            chunk = stream.read(_BLOCK)
            if not chunk:
                break
            spool.write(chunk)
        spool.seek(0)
        return _StreamSource(spool, name, owned=True)
    except BaseException:
        spool.close()
        raise


def _read_full(stream: Any, limit: int) -> bytes:
    """Up to `limit` bytes, read in blocks: before 3.10, HTTPResponse.read(n)
    allocates and zero-fills n bytes whatever the body's size."""
    chunks, have = [], 0
    while have < limit:
        chunk = stream.read(min(_BLOCK, limit - have))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _clean_name(name: str) -> str:
    """A name fit for the API: undecodable bytes and control characters
    (a name from the file system may hold both) become U+FFFD and "_"."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _CONTROL.sub("_", name)


def _guess_mime(name: str) -> str:
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    return _MIME_TYPES.get(ext, _DEFAULT_MIME)


def _open_source(item: Any, name: Optional[str], mime_type: Optional[str]) -> _Source:
    """Turn what the caller gave into a _Source; local errors raise here."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        name, item = item
    if name is not None:
        if not isinstance(name, str) or not name or _CONTROL.search(name):
            raise ConfigError("name must be a non-empty string without control characters, "
                              "not %r" % (name,))
    source: _Source
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not isinstance(path, str):
            path = os.fsdecode(path)
        source = _PathSource(path, name or _clean_name(os.path.basename(path.rstrip("/\\"))))
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if name is None:
            raise ConfigError("name= is required to upload bytes")
        source = _BytesSource(item, name)
    elif hasattr(item, "read"):
        if name is None:
            given = getattr(item, "name", None)
            if not isinstance(given, str) or given.startswith("<"):
                raise ConfigError("name= is required for a file object without a file name")
            name = _clean_name(os.path.basename(given))
        try:
            seekable = bool(item.seekable())
        except (AttributeError, OSError, ValueError):
            seekable = False
        source = _StreamSource(item, name) if seekable else _spool(item, name)
    else:
        raise ConfigError("cannot upload a %s: give a path, bytes or a binary file object"
                          % type(item).__name__)
    if not source.name:
        source.close()
        raise ConfigError("cannot tell the file's name: pass name=")
    source.mime_type = mime_type or _guess_mime(source.name)
    return source


class _Payload:
    """The body of one PUT: a range of a source, sent in large blocks.

    Reads go through a buffer bounded to the range: http.client would send
    whatever a file object yields, even past Content-Length. The MD5 of what
    was actually sent is computed on the way, never by a second read.
    """

    def __init__(self, source: _Source, offset: int, length: int, checksum: bool,
                 progress: Callable[[int], None], cancel: _Cancel) -> None:
        self.source, self.offset, self.length = source, offset, length
        self.checksum, self.md5 = checksum, None
        self.progress, self.cancel = progress, cancel
        self.sent = 0

    def __len__(self) -> int:
        return self.length

    def send(self, conn: http.client.HTTPConnection) -> None:
        """Send the whole range from its start: a payload may be sent again
        on a fresh connection, and must then send the same bytes."""
        if self.sent:
            self.progress(-self.sent)
            self.sent = 0
        self.md5 = _md5() if self.checksum else None
        # Large blocks through sendall, not sendfile: measured on loopback,
        # 1 MiB writes beat socket.sendfile (3460 vs 2784 MiB/s per stream).
        sock = conn.sock  # connected by endheaders()
        view = self.source.view(self.offset, self.length)
        buf = None if view is not None else memoryview(bytearray(min(_BLOCK, self.length)))
        while self.sent < self.length:
            self.cancel.check()
            want = min(_BLOCK, self.length - self.sent)
            if view is not None:
                chunk = view[self.sent:self.sent + want]
            else:
                assert buf is not None
                n = self.source.readinto(buf[:want], self.offset + self.sent)
                if n <= 0:
                    raise SourceChangedError("%s ended early: it was truncated while being uploaded"
                                             % self.source.name)
                chunk = buf[:n]
            if self.md5 is not None:
                self.md5.update(chunk)
            sock.sendall(chunk)
            self.sent += len(chunk)
            self.progress(len(chunk))

    def hexdigest(self) -> Optional[str]:
        return None if self.md5 is None else str(self.md5.hexdigest())


# ---------------------------------------------------------------------------
# API calls: the files.link calls, each retried; the only code that holds the key
# ---------------------------------------------------------------------------

_BAD_ID = re.compile(r"[/?#%\\\s\x00-\x1f\x7f]")


def _check_id(value: Any, what: str) -> str:
    """An id that goes into a URL path: refused rather than escaped."""
    if not isinstance(value, str) or not value or _BAD_ID.search(value):
        raise ConfigError("%s must be a non-empty id without '/', '?', '#', '%%', "
                          "spaces or control characters, not %r" % (what, value))
    return value


def _need_str(data: Json, field: str, what: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise ProtocolError("%s: no `%s` in the response; keys seen: %s"
                            % (what, field, ", ".join(sorted(data))))
    return value


_PLAIN_MD5 = re.compile(r'^"[0-9a-fA-F]{32}"$')
_S3_FIELD = re.compile(r"<(Code|Message)>([^<]{0,300})</\1>")


def _storage_message(text: str) -> str:
    """Code and Message of an S3-style XML error, else the start of the body."""
    fields = dict(_S3_FIELD.findall(text))
    if fields:
        return ": ".join(v for v in (fields.get("Code"), fields.get("Message")) if v)
    return _clip(text, 200)


class _API:
    """The calls an upload is made of, and the one retry loop they share."""

    def __init__(self, key: str, base_url: str, transport: _Transport, retry: Retry,
                 checksum: bool, plain_ok: bool) -> None:
        self._key, self.base_url, self._transport = key, base_url, transport
        self.retry, self.checksum, self.plain_ok = retry, checksum, plain_ok
        self._gate = _RateGate()

    # -- the calls an upload is made of

    def presign(self, folder: str, sources: Sequence[_Source],
                cancel: _Cancel) -> List[Tuple[str, str, str]]:
        meta = [{"name": s.name, "size": s.size, "mimeType": s.mime_type} for s in sources]
        path = _ROUTES["presign"].format(folder)
        data = self.call("POST", path, {"filesMetadata": meta}, cancel=cancel)
        urls = data.get("urls")
        if not isinstance(urls, list) or len(urls) != len(sources):
            raise ProtocolError("POST %s: expected %d entries in `urls`, got %s; keys seen: %s" % (
                path, len(sources), len(urls) if isinstance(urls, list) else "none",
                ", ".join(sorted(data))))
        entries = []
        for entry in urls:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) \
                    or not isinstance(entry.get("url"), str):
                raise ProtocolError("POST %s: an entry of `urls` lacks `id` or `url`" % path)
            self.check_presigned(entry["url"])
            entries.append((entry["id"], entry["url"], str(entry.get("s3Key") or "")))
        return entries

    def confirm(self, ids: List[str], cancel: _Cancel) -> None:
        self.call("POST", _ROUTES["confirm"], {"ids": ids}, cancel=cancel)

    def initiate(self, folder: str, source: _Source, cancel: _Cancel) -> _Plan:
        meta = {"name": source.name, "size": source.size, "mimeType": source.mime_type}
        data = self.call("POST", _ROUTES["initiate"].format(folder), {"fileMetadata": meta},
                         cancel=cancel)
        raw = data.get("data")
        try:
            plan = _plan_parts(source.size, raw)
            for url in plan.urls:
                self.check_presigned(url)
        except ProtocolError:
            # An upload was opened that will not be completed: abort it if
            # its ids can be read at all, or storage keeps billing it.
            if isinstance(raw, dict) and isinstance(_pick(raw, "upload_id"), str):
                ids = {"uploadId": _pick(raw, "upload_id"), "fileId": _pick(raw, "file_id"),
                       "key": _pick(raw, "key"), "bucket": _pick(raw, "bucket")}
                self.abort({k: v for k, v in ids.items() if v is not None})
            raise
        return plan

    def complete(self, plan: _Plan, etags: Dict[int, str], cancel: _Cancel) -> None:
        body = plan.ids()
        body["parts"] = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        self.call("POST", _ROUTES["complete"], body, cancel=cancel)

    def abort(self, ids: Json, timeout: Optional[float] = None) -> None:
        """Best effort: an unaborted multipart upload keeps storage billed.
        A timeout means Ctrl-C: one short try, so the user is not kept waiting."""
        try:
            self.call("POST", _ROUTES["abort"], ids, attempts=1 if timeout else None,
                      timeout=timeout)
            _log(_INFO, "aborted multipart upload %s", ids.get("uploadId"))
        except (FilesLinkError, _Cancelled) as exc:
            _log(_WARNING, "could not abort multipart upload %s: %s", ids.get("uploadId"), exc)

    def check_presigned(self, url: str) -> None:
        """Refuse, before any I/O, a presigned URL we must not send a file to."""
        try:
            parts = urllib.parse.urlsplit(url)
            scheme, host = parts.scheme.lower(), parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ProtocolError("the presigned URL is malformed") from None
        if scheme not in ("http", "https") or not host or _CONTROL.search(url) or " " in url:
            raise ProtocolError("the presigned URL %s is not an http(s) URL with a host"
                                % _clip(_where(url), 100))
        if scheme == "http" and not self.plain_ok:
            raise ProtocolError("refusing to send file bytes unencrypted to %s (the presigned "
                                "URL is plain http)" % host)

    # -- the two kinds of request, each retried

    def retrying(self, attempt: Callable[[int], T], what: str, cancel: _Cancel,
                 attempts: Optional[int] = None) -> T:
        """Call attempt(n) until it returns, a non-retryable error, or the
        tries run out. The one retry loop of the module."""
        total = attempts or self.retry.attempts
        for n in range(1, total + 1):
            try:
                return attempt(n)
            except _Retryable as failure:
                wait_long = failure.retry_after is not None and failure.retry_after > _MAX_RETRY_AFTER
                if n >= total or wait_long:
                    raise failure.error from failure.__cause__
                delay = self.retry.delay(n, failure.retry_after)
                _log(_DEBUG, "%s: %s; try %d of %d in %.2fs", what, failure.error, n + 1,
                     total, delay)
                cancel.wait(delay)
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, payload: Optional[Json] = None, *,
             cancel: _Cancel = _NEVER, attempts: Optional[int] = None,
             timeout: Optional[float] = None) -> Json:
        """One API call, retried; its decoded JSON object."""
        import json

        body = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Authorization": self._key, "Accept": "application/json",
                   "User-Agent": _USER_AGENT}
        if body is not None:
            headers["Content-Type"] = "application/json"
        what = "%s %s" % (method, path)

        def attempt(n: int) -> Json:
            wait = self._gate.reserve()
            while wait > 0:
                _log(_DEBUG, "%s: rate limit budget spent; waiting %.2fs", what, wait)
                cancel.wait(wait)
                wait = self._gate.reserve()
            started = time.monotonic()
            try:
                resp = self._transport.exchange(method, self.base_url + path, headers, body,
                                                cancel=cancel, max_body=_MAX_BODY, timeout=timeout)
            except (OSError, http.client.HTTPException) as exc:
                if cancel.is_set():
                    raise _Cancelled() from None
                text, transient = _network_error(what, self.base_url, exc)
                error = APIError(self.redact(text))
                if not transient:  # the same certificate will be refused again
                    raise error from exc
                raise _Retryable(error) from exc
            _log(_DEBUG, "%s -> %d (try %d, %.3fs)", what, resp.status, n,
                 time.monotonic() - started)
            limit = _parse_ratelimit(resp.headers)
            if limit is not None:
                self._gate.update(*limit)
            return self.judge(what, resp)

        return self.retrying(attempt, what, cancel, attempts)

    def judge(self, what: str, resp: _Response) -> Json:
        """The JSON of a good answer; otherwise the error it means."""
        import json

        status, text = resp.status, self.redact(resp.text())
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = None
        if 200 <= status < 300:
            if not text.strip():
                return {}  # 204 No Content, or an empty 200 to a DELETE
            if resp.truncated:
                raise ProtocolError("%s: the response is larger than %d bytes" % (what, _MAX_BODY))
            if not isinstance(data, dict):
                raise ProtocolError("%s: answered %d with a body that is not a JSON object: %s"
                                    % (what, status, _clip(text, 200) or "(empty)"))
            if data.get("success") is False:
                message = _clip(str(data.get("message") or "no message"))
                raise APIError("%s: the API reported a failure: %s" % (what, message), status,
                               message, text[:_MAX_ERROR_BODY])
            return data
        message = _clip(str(data.get("message") or "")) if isinstance(data, dict) else ""
        detail = message or _clip(text, 200) or "(empty body)"
        cls: type = APIError
        if 300 <= status < 400:
            detail = "a redirect, not followed: API calls never leave %s" % self.base_url
        elif status == 401:
            cls, detail = AuthError, "the API key was rejected (%s)" % detail
        elif status == 403:
            cls, detail = AuthError, "access denied, is the account blocked? (%s)" % detail
        elif status == 429:
            cls = RateLimitError
        error = cls("%s: %d %s: %s" % (what, status, resp.reason, detail), status, message,
                    text[:_MAX_ERROR_BODY])
        if status in _RETRY_STATUSES:
            retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
            if status == 429 and retry_after is not None:
                self._gate.update(0, retry_after)
            raise _Retryable(error, retry_after)
        raise error

    def redact(self, text: str) -> str:
        """A hostile or careless server may echo the key back: never pass it on."""
        return text.replace(self._key, "***") if self._key in text else text

    def put(self, url: str, source: _Source, offset: int, length: int, part: int,
            progress: Callable[[int], None], cancel: _Cancel) -> str:
        """PUT bytes [offset, offset + length) of source to a presigned URL,
        retried (each try re-reads from offset); the ETag, quotes included.

        Raises _Expired for an expired URL: only the caller can get a new one.
        """
        label = "part %d of %s" % (part, source.name) if part else source.name
        what = "PUT %s" % label
        headers = {"Content-Type": source.mime_type, "User-Agent": _USER_AGENT}

        def attempt(n: int) -> str:
            payload = _Payload(source, offset, length, self.checksum, progress, cancel)
            started = time.monotonic()
            try:
                resp = self._transport.exchange("PUT", url, headers, payload, cancel=cancel)
            except (OSError, http.client.HTTPException, _Cancelled) as exc:
                progress(-payload.sent)
                if cancel.is_set():
                    raise _Cancelled() from None
                text, transient = _network_error(what, _where(url), exc)
                error = TransferError(text, None, part or None)
                if not transient:
                    raise error from exc
                raise _Retryable(error) from exc
            except SourceChangedError:
                progress(-payload.sent)
                raise
            _log(_DEBUG, "%s to %s -> %d (try %d, %.3fs)", what, _where(url), resp.status, n,
                 time.monotonic() - started)
            etag = resp.headers.get("ETag")
            if 200 <= resp.status < 300:
                if etag is not None and _CONTROL.search(etag):
                    raise ProtocolError("%s: storage sent an ETag with control characters" % what)
                sent = payload.hexdigest()
                if sent and etag and _PLAIN_MD5.match(etag) and etag[1:-1].lower() != sent:
                    progress(-payload.sent)
                    raise _Retryable(TransferError(
                        "%s: storage reports MD5 %s, the bytes sent have MD5 %s"
                        % (what, etag[1:-1].lower(), sent), resp.status, part or None))
                if part and not etag:
                    raise ProtocolError("%s: storage answered without an ETag" % what)
                return etag or ""
            progress(-payload.sent)
            text = resp.text()
            if resp.status == 403 and "expired" in text.lower():
                raise _Expired()
            error = TransferError("%s to %s: %d %s: %s" % (
                what, _where(url), resp.status, resp.reason,
                _unsigned(_storage_message(text), url)), resp.status, part or None)
            if resp.status in _RETRY_STATUSES:
                raise _Retryable(error, _parse_retry_after(resp.headers.get("Retry-After")))
            raise error

        return self.retrying(attempt, what, cancel)

    def link_uploaded(self, name: str, file_id: str) -> str:
        """link() for a file just uploaded: an error must say the bytes are there."""
        try:
            return self.link(file_id)
        except (AuthError, _Cancelled):
            raise
        except FilesLinkError as exc:
            raise APIError("%s was uploaded (id %s) but its link was not created: %s"
                           % (name, file_id, exc), getattr(exc, "status", None)) from exc

    def link(self, file_id: str) -> str:
        """Create a permanent public link; its full URL."""
        data = self.call("POST", _ROUTES["link"], {"fileId": _check_id(file_id, "file id")})
        link = _need_str(data, "link", "POST /v1/p")
        if link.startswith(("http://", "https://")):
            return link
        return self.base_url + _ROUTES["public"].format(urllib.parse.quote(link, safe=""))


# ---------------------------------------------------------------------------
# Engine: the jobs of one upload, and the coordinator that runs them
# ---------------------------------------------------------------------------

class _Plan:
    """A multipart upload as initiated: ids and the part URLs, in order."""

    __slots__ = ("file_id", "upload_id", "key", "bucket", "size", "part_size", "urls")

    def __init__(self, file_id: str, upload_id: str, key: str, bucket: Optional[str],
                 size: int, part_size: int, urls: List[str]) -> None:
        self.file_id, self.upload_id, self.key, self.bucket = file_id, upload_id, key, bucket
        self.size, self.part_size, self.urls = size, part_size, urls

    def span(self, number: int) -> Tuple[int, int]:
        """(offset, length) of part `number` (1-based)."""
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)

    def ids(self) -> Json:
        ids: Json = {"key": self.key, "uploadId": self.upload_id, "fileId": self.file_id}
        if self.bucket is not None:
            ids["bucket"] = self.bucket
        return ids


def _plan_parts(size: int, data: Any) -> _Plan:
    """Read an initiate response's `data` tolerantly and check its part plan.

    Raises ProtocolError naming the keys it saw when it cannot make sense of it.
    """
    if not isinstance(data, dict):
        raise ProtocolError("multipart initiate: `data` is not an object: %s" % _clip(repr(data)))
    seen = ", ".join(sorted(map(str, data))) or "none"
    file_id, upload_id = _pick(data, "file_id"), _pick(data, "upload_id")
    raw_parts = _pick(data, "parts")
    if not isinstance(file_id, str) or not isinstance(upload_id, str) or not isinstance(
            raw_parts, list) or not raw_parts:
        raise ProtocolError("multipart initiate: need a file id, an upload id and part URLs; "
                            "keys seen: %s" % seen)
    numbered = []
    for position, item in enumerate(raw_parts, 1):
        if isinstance(item, str):
            numbered.append((position, item))
        elif isinstance(item, dict) and isinstance(_pick(item, "part_url"), str):
            number = _pick(item, "part_number", position)
            if not isinstance(number, int) or isinstance(number, bool):
                raise ProtocolError("multipart initiate: part number %r is not an integer" % (number,))
            numbered.append((number, _pick(item, "part_url")))
        else:
            raise ProtocolError("multipart initiate: part %d has no URL; keys seen: %s" % (
                position, ", ".join(sorted(item)) if isinstance(item, dict) else type(item).__name__))
    numbered.sort()
    count = len(numbered)
    if [n for n, _ in numbered] != list(range(1, count + 1)):
        raise ProtocolError("multipart initiate: part numbers are not 1..%d" % count)
    if count > _MAX_PARTS:
        raise ProtocolError("multipart initiate: %d parts; object storage allows %d"
                            % (count, _MAX_PARTS))
    part_size = _pick(data, "part_size") or -(-size // count)
    if not isinstance(part_size, int) or part_size < 1 or -(-size // part_size) != count:
        raise ProtocolError("multipart initiate: %d parts of %r bytes do not cover %d bytes"
                            % (count, part_size, size))
    key, bucket = _pick(data, "key", ""), _pick(data, "bucket")
    return _Plan(file_id, upload_id, str(key), None if bucket is None else str(bucket),
                 size, part_size, [url for _, url in numbered])


class _Job:
    """One file of a run: where it goes, how far it got, how it ended."""

    def __init__(self, index: int, source: _Source, run: _Run) -> None:
        self.index, self.source, self.run = index, source, run
        self.cancel = _Cancel(run.cancel)
        self.multipart = run.goes_multipart(source)
        self.file_id = self.url = self.s3_key = ""
        self.plan: Optional[_Plan] = None
        self.etags: Dict[int, str] = {}
        self.next_part = 1
        self.inflight = 0
        self.error: Optional[BaseException] = None
        self.batch: Optional[List[_Job]] = None
        self._sent = 0
        self._lock = threading.Lock()

    def add_progress(self, delta: int) -> None:
        callback = self.run.progress
        with self._lock:
            self._sent += delta
            if callback is not None:
                callback(self.source.name, self._sent, self.source.size)

    def tasks_total(self) -> int:
        return len(self.plan.urls) if self.plan is not None else 1


class _Run:
    """One upload_many() (or one multipart upload()).

    The caller's thread coordinates: it presigns a batch just before the
    workers would run dry, hands PUTs (whole files or parts) to a thread
    pool, confirms each batch as soon as its files are in, and completes
    each multipart upload as its last part lands. Nothing is held for the
    sources not reached yet, so 10,000 files cost what 100 do.
    """

    def __init__(self, api: _API, workers: int, threshold: int, batch_size: int,
                 folder_id: str, progress: Optional[Progress], link: bool,
                 on_file: Optional[Callable[[int, Any], None]]) -> None:
        self.api, self.workers, self.threshold = api, workers, threshold
        self.batch_size, self.folder, self.progress = batch_size, folder_id, progress
        self.link, self.on_file = link, on_file
        self.cancel = _Cancel()
        self.pool: Optional[ThreadPoolExecutor] = None
        self.futures: Dict[Future[str], Tuple[_Job, int]] = {}
        self.feed: Deque[_Job] = collections.deque()
        self.started: Set[_Job] = set()  # multipart uploads initiated, not yet ended
        self.live: Set[_Job] = set()  # jobs whose source is open
        self.results: List[Any] = []
        self.failures: List[Tuple[int, str, BaseException]] = []
        self.exhausted = False
        self._queued = 0
        self._lock = threading.Lock()

    def goes_multipart(self, source: _Source) -> bool:
        return 0 < source.size >= self.threshold

    # -- the loop -----------------------------------------------------------

    def run(self, items: Iterable[Any]) -> List[Any]:
        numbered = enumerate(items)
        try:
            while True:
                self._fill(numbered)
                if not self.futures:
                    if self.exhausted and not self.feed:
                        break
                    continue
                self._reap()
        except BaseException as exc:
            self._stop(exc)
            raise
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=not self.cancel.is_set())
        return self.results

    def _fill(self, numbered: Iterator[Tuple[int, Any]]) -> None:
        """Submit tasks until every worker has one queued behind the one it runs."""
        workers = self.workers
        while self._queued < workers:
            if self.feed:
                self._submit(self.feed[0])
            elif self.exhausted:
                return
            else:
                self._admit(numbered)

    def _submit(self, job: _Job) -> None:
        if job.error is not None or job.next_part > job.tasks_total():
            self.feed.popleft()
            return
        number = job.next_part if job.plan is not None else 0
        job.next_part += 1
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.workers, "fileslink")
        with self._lock:
            self._queued += 1
        job.inflight += 1
        self.futures[self.pool.submit(self._task, job, number)] = (job, number)

    def _task(self, job: _Job, number: int) -> str:
        """Runs in a worker: one PUT, retried; the ETag."""
        with self._lock:
            self._queued -= 1
        job.cancel.check()
        try:
            if job.plan is None:
                return self.send_single(job)
            offset, length = job.plan.span(number)
            try:
                return self.api.put(job.plan.urls[number - 1], job.source, offset, length,
                                    number, job.add_progress, job.cancel)
            except _Expired:
                raise TransferError("the presigned URL of part %d of %s expired; the multipart "
                                    "upload was aborted" % (number, job.source.name), 403,
                                    number) from None
        except (OSError, FilesLinkError):
            job.cancel.set()  # siblings stop now, not when the coordinator wakes
            raise

    def _admit(self, numbered: Iterator[Tuple[int, Any]]) -> None:
        """Open the next sources: a batch of small ones to presign, or one big one."""
        batch: List[_Job] = []
        while len(batch) < self.batch_size:
            try:
                index, item = next(numbered)
            except StopIteration:
                self.exhausted = True
                break
            self.results.append(None)
            try:
                source = item if isinstance(item, _Source) else _open_source(item, None, None)
            except (OSError, FilesLinkError) as exc:
                self._record(index, _item_name(item), exc)
                continue
            job = _Job(index, source, self)
            self.live.add(job)
            if job.multipart:
                self._initiate(job)
                break
            batch.append(job)
        if batch:
            self._presign(batch)

    def _presign(self, batch: List[_Job]) -> None:
        try:
            entries = self.api.presign(self.folder, [j.source for j in batch], self.cancel)
        except (AuthError, _Cancelled):
            raise
        except FilesLinkError as exc:
            for job in batch:
                self._finish(job, exc)
            return
        for job, (file_id, url, s3_key) in zip(batch, entries):
            job.file_id, job.url, job.s3_key, job.batch = file_id, url, s3_key, batch
            self.feed.append(job)

    def _initiate(self, job: _Job) -> None:
        try:
            job.plan = self.api.initiate(self.folder, job.source, self.cancel)
        except (AuthError, _Cancelled):
            raise
        except FilesLinkError as exc:
            self._finish(job, exc)
            return
        job.file_id, job.s3_key = job.plan.file_id, job.plan.key
        self.started.add(job)
        self.feed.append(job)

    def _reap(self) -> None:
        """Wait for some task to end and act on what it means."""
        from concurrent.futures import FIRST_COMPLETED, CancelledError, wait

        done, _ = wait(list(self.futures), timeout=1.0, return_when=FIRST_COMPLETED)
        for future in done:
            job, number = self.futures.pop(future)
            job.inflight -= 1
            try:
                etag = future.result()
            except (CancelledError, _Cancelled):
                pass  # the job failed already, or the run is stopping
            except (OSError, FilesLinkError) as exc:
                self._fail(job, exc)
            else:
                if number:
                    job.etags[number] = etag
            if job.plan is None:
                self._batch_done(job.batch)
            elif job.error is not None:
                if job.inflight == 0 and job in self.started:
                    self._abort(job)  # only once no part of it is still being sent
            elif len(job.etags) == len(job.plan.urls):
                self._complete(job)

    def send_single(self, job: _Job) -> str:
        """PUT a whole file; presign it again if its URL expired. Its ETag."""
        for represign in range(_EXPIRED_REPRESIGNS + 1):
            try:
                return self.api.put(job.url, job.source, 0, job.source.size, 0,
                                    job.add_progress, job.cancel)
            except _Expired:
                if represign == _EXPIRED_REPRESIGNS:
                    break
                _log(_INFO, "%s: presigned URL expired; presigning again", job.source.name)
                # A new id: the old row stays unconfirmed, and so invisible.
                job.file_id, job.url, job.s3_key = self.api.presign(
                    self.folder, [job.source], job.cancel)[0]
        raise TransferError("the presigned URL for %s kept expiring before the upload ended "
                            "(presigned %d times); check the machine's clock"
                            % (job.source.name, _EXPIRED_REPRESIGNS + 1), 403)

    # -- endings ------------------------------------------------------------

    def _fail(self, job: _Job, exc: BaseException) -> None:
        """A task of `job` failed for good: stop its other tasks now."""
        if job.error is None:
            job.error = exc
            job.cancel.set()
            for future, (other, _) in self.futures.items():
                if other is job and future.cancel():
                    with self._lock:  # a task cancelled before it ran never counts itself out
                        self._queued -= 1
            if job.plan is None:
                self._finish(job, exc)

    def _batch_done(self, batch: Optional[List[_Job]]) -> None:
        assert batch is not None
        if any(j.error is None and j.inflight for j in batch) or any(
                j.error is None and j.next_part == 1 for j in batch):
            return  # some file of the batch is still queued or being sent
        good = [j for j in batch if j.error is None and self.results[j.index] is None]
        for job in good:
            try:
                job.source.check_unchanged()
            except SourceChangedError as exc:
                self._finish(job, exc)
        good = [j for j in good if j.error is None]
        if not good:
            return
        try:
            self.api.confirm([j.file_id for j in good], self.cancel)
        except (AuthError, _Cancelled):
            raise
        except FilesLinkError as exc:
            for job in good:
                self._finish(job, exc)
            return
        for job in good:
            self._succeed(job, multipart=False)

    def _complete(self, job: _Job) -> None:
        assert job.plan is not None
        try:
            job.source.check_unchanged()
            self.api.complete(job.plan, job.etags, self.cancel)
        except (AuthError, _Cancelled):
            raise
        except FilesLinkError as exc:
            job.error = exc
            self._abort(job)
            return
        self.started.discard(job)
        self._succeed(job, multipart=True)

    def _abort(self, job: _Job) -> None:
        self.started.discard(job)
        assert job.plan is not None
        self.api.abort(job.plan.ids())
        self._finish(job, job.error or TransferError("multipart upload aborted"))

    def _succeed(self, job: _Job, multipart: bool) -> None:
        source = job.source
        result = UploadedFile(job.file_id, source.name, source.size, source.mime_type,
                              job.s3_key, multipart)
        if self.link:
            try:
                result = result._replace(url=self.api.link_uploaded(source.name, job.file_id))
            except AuthError:
                raise
            except APIError as exc:
                self._finish(job, exc)
                return
        self._finish(job, result)

    def _finish(self, job: _Job, outcome: Any) -> None:
        if isinstance(outcome, BaseException) and job.error is None:
            job.error = outcome
        job.source.close()
        job.cancel.detach()
        self.live.discard(job)
        self._record(job.index, job.source.name, outcome)

    def _record(self, index: int, name: str, outcome: Any) -> None:
        if self.results[index] is not None:
            return
        self.results[index] = outcome
        if isinstance(outcome, BaseException):
            self.failures.append((index, name, outcome))
            _log(_INFO, "failed: %s: %s", name, outcome)
        else:
            _log(_INFO, "uploaded %s as %s", name, outcome.id)
        if self.on_file is not None:
            self.on_file(index, outcome)

    def _stop(self, exc: BaseException) -> None:
        """The run ends early (Ctrl-C, SystemExit, a fatal error): stop every
        worker now and abort every multipart upload left open."""
        self.cancel.set()
        for future in self.futures:
            future.cancel()  # 3.8 has no shutdown(cancel_futures=True)
        interrupted = not isinstance(exc, Exception)
        for job in list(self.started):
            if job.error is None:
                job.error = TransferError("upload of %s cancelled" % job.source.name)
            self.started.discard(job)
            assert job.plan is not None
            self.api.abort(job.plan.ids(), _ABORT_TIMEOUT if interrupted else None)
        for job in self.live:
            job.source.close()


def _item_name(item: Any) -> str:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0]
    if isinstance(item, (str, os.PathLike)):
        return os.fsdecode(os.fspath(item))
    return str(getattr(item, "name", "<%s>" % type(item).__name__))


# ---------------------------------------------------------------------------
# Client: the public facade
# ---------------------------------------------------------------------------

class Client:
    """A files.link client: configuration, connections and the rate-limit budget.

    Args:
        api_key: default $FILESLINK_KEY; missing -> ConfigError.
        base_url: default $FILESLINK_BASE_URL, else https://api.files.link.
        timeout: seconds per socket operation (connect, each send, each read).
        retry: a Retry; None -> Retry().
        max_workers: parallel PUTs (parts, or files in upload_many).
        multipart_threshold: files of at least this many bytes go multipart.
        ssl_context: an ssl.SSLContext (a corporate CA); used for the API
            and for presigned URLs alike.
        allow_insecure: permit a plain-http base URL (and presigned URLs)
            to a host other than loopback.
        checksum: compare the MD5 of the bytes sent with the ETag storage
            returns (about 1 s of CPU per GiB); False sends at wire speed.
        batch_size: files per presign and per confirm call in upload_many.

    The constructor only validates and stores: no network, no threads. A
    Client is safe to share between threads; close() (or `with`) drops its
    idle connections.
    """

    def __init__(self, api_key: Optional[str] = None, base_url: Optional[str] = None,
                 timeout: float = 60.0, retry: Optional[Retry] = None, max_workers: int = 8,
                 multipart_threshold: int = 100 * 1024 * 1024,
                 ssl_context: Optional[ssl.SSLContext] = None, *,
                 allow_insecure: bool = False, checksum: bool = True,
                 batch_size: Optional[int] = None) -> None:
        key = os.environ.get(_ENV_KEY, "") if api_key is None else api_key
        if not isinstance(key, str) or not key:
            raise ConfigError("no API key: set %s to your files.link API key" % _ENV_KEY)
        if _CONTROL.search(key) or key != key.strip():
            raise ConfigError("the API key contains a newline, a control character or "
                              "surrounding spaces; check how it was set")
        base = (base_url or os.environ.get(_ENV_BASE_URL) or _DEFAULT_BASE_URL).rstrip("/")
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment or _CONTROL.search(base):
            raise ConfigError("base_url must be an http(s) URL with a host, not %r" % base)
        loopback = _is_loopback(parts.hostname)
        if parts.scheme == "http" and not (loopback or allow_insecure):
            raise ConfigError("refusing plain http to %s: the API key and your files would "
                              "cross the network unencrypted (allow_insecure=True permits it)"
                              % parts.hostname)
        for label, value, low in (("max_workers", max_workers, 1),
                                  ("multipart_threshold", multipart_threshold, 1),
                                  ("batch_size", batch_size, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise ConfigError("%s must be a whole number >= %d, not %r" % (label, low, value))
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError("timeout must be a number of seconds > 0, not %r" % (timeout,))
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError("retry must be a fileslink.Retry, not %r" % (retry,))
        if ssl_context is not None:
            import ssl

            if not isinstance(ssl_context, ssl.SSLContext):
                raise ConfigError("ssl_context must be an ssl.SSLContext")
        self.base_url = base
        self.timeout = float(timeout)
        self.retry = retry or Retry()
        self.max_workers = max_workers
        self.multipart_threshold = multipart_threshold
        self.checksum = bool(checksum)
        self._batch_size = batch_size or int(_ASSUMED["batch_size"])
        self._transport = _Transport(self.timeout, ssl_context, max_workers + _SPARE_CONNECTIONS)
        self._api = _API(key, base, self._transport, self.retry, self.checksum,
                         allow_insecure or (parts.scheme == "http" and loopback))

    def __repr__(self) -> str:  # never the key
        return "fileslink.Client(base_url=%r, max_workers=%d)" % (self.base_url, self.max_workers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close idle connections. The client stays usable."""
        self._transport.close()

    # -- uploads ------------------------------------------------------------

    def upload(self, source: Source, folder_id: Optional[str] = None, *,
               name: Optional[str] = None, mime_type: Optional[str] = None,
               progress: Optional[Progress] = None, link: bool = False) -> UploadedFile:
        """Upload one file and return it.

        Args:
            source: a path, bytes, or a binary file object (seekable or not;
                a stream is spooled, to a temporary file if large).
            folder_id: default $FILESLINK_FOLDER.
            name: the name on files.link; default the file's own name
                (required for bytes and nameless streams).
            mime_type: default guessed from the name.
            progress: progress(name, sent, total), called from worker threads.
            link: also create a permanent public link (UploadedFile.url).

        Raises:
            OSError: the local file is missing, a directory or unreadable.
            FilesLinkError: see the subclasses; a multipart upload that fails
                is aborted first.
        """
        folder = self._folder(folder_id)
        src = _open_source(source, name, mime_type)
        run = self._run(folder, progress, link, None)
        try:
            if run.goes_multipart(src):  # parts in parallel: the coordinator's work
                results = run.run([src])
                if run.failures:
                    raise run.failures[0][2]
                return results[0]  # type: ignore[no-any-return]
            # One small file: three calls in this thread, no pool to start.
            job = _Job(0, src, run)
            job.file_id, job.url, job.s3_key = self._api.presign(folder, [src], run.cancel)[0]
            run.send_single(job)
            src.check_unchanged()
            self._api.confirm([job.file_id], run.cancel)
            url = self._api.link_uploaded(src.name, job.file_id) if link else None
            return UploadedFile(job.file_id, src.name, src.size, src.mime_type, job.s3_key,
                                False, url)
        finally:
            src.close()

    def upload_many(self, sources: Iterable[Item], folder_id: Optional[str] = None, *,
                    progress: Optional[Progress] = None, link: bool = False,
                    on_file: Optional[Callable[[int, Any], None]] = None) -> List[UploadedFile]:
        """Upload many files in parallel; their UploadedFiles in the order given.

        Args:
            sources: paths, bytes, file objects, or (name, source) pairs; any
                iterable, read as the upload goes (a generator of 10,000
                paths is never held at once).
            on_file: on_file(index, result) as each file ends, result being
                its UploadedFile or its exception (called in this thread).

        Raises:
            UploadManyError: some files failed; the others were uploaded and
                confirmed, and are in its .uploaded.
            AuthError: the key was refused; nothing more is attempted.
        """
        folder = self._folder(folder_id)
        run = self._run(folder, progress, link, on_file)
        results = run.run(sources)
        if run.failures:
            raise UploadManyError(sorted(run.failures, key=lambda f: f[0]), results)
        return results

    def _run(self, folder: str, progress: Optional[Progress], link: bool,
             on_file: Optional[Callable[[int, Any], None]]) -> _Run:
        return _Run(self._api, self.max_workers, self.multipart_threshold, self._batch_size,
                    folder, progress, link, on_file)

    def _folder(self, folder_id: Optional[str]) -> str:
        folder = folder_id if folder_id is not None else os.environ.get(_ENV_FOLDER)
        if not folder:
            raise ConfigError("no folder id: pass folder_id= or set %s (`fileslink projects` "
                              "and `fileslink folders PROJECT_ID` list them)" % _ENV_FOLDER)
        return _check_id(folder, "folder id")

    # -- the rest of the published API --------------------------------------

    def get_file(self, file_id: str) -> Json:
        """A file's record: id, fileName, fileSize, mimeType, uploaded, ..."""
        data = self._api.call("GET", _ROUTES["file"].format(_check_id(file_id, "file id")))
        record = data.get("data")
        if isinstance(record, dict) and isinstance(record.get("file"), dict):
            return record["file"]  # type: ignore[no-any-return]
        raise ProtocolError("GET file: no `data.file` in the response")

    def list_files(self, folder_id: Optional[str] = None) -> List[Json]:
        """The files of a folder (default $FILESLINK_FOLDER)."""
        data = self._api.call("GET", _ROUTES["folder_files"].format(self._folder(folder_id)))
        files = _pick(data, "listing")
        if isinstance(files, dict):
            files = files.get("files")
        if not isinstance(files, list):
            raise ProtocolError("GET folder files: no list of files in the response")
        return files

    def delete_file(self, file_id: str) -> None:
        self._api.call("DELETE", _ROUTES["file"].format(_check_id(file_id, "file id")))

    def signed_url(self, file_id: str) -> str:
        """A signed download URL for a private file."""
        data = self._api.call("GET", _ROUTES["signed"].format(_check_id(file_id, "file id")))
        return _need_str(data, "url", "GET signed URL")

    def create_link(self, file_id: str) -> str:
        """Create a permanent public link; its full URL."""
        return self._api.link(file_id)

    def get_link(self, file_id: str) -> Json:
        return self._api.call("GET", _ROUTES["file_link"].format(_check_id(file_id, "file id")))

    def delete_link(self, file_id: str) -> None:
        self._api.call("DELETE", _ROUTES["public"].format(_check_id(file_id, "file id")))

    def list_projects(self, page: int = 1) -> Any:
        data = self._api.call("GET", _ROUTES["projects_page"].format(int(page)))
        return data.get("data", data)

    def create_project(self, title: str) -> str:
        data = self._api.call("POST", _ROUTES["projects"], {"title": title})
        return _need_str(data, "projectId", "POST /v1/projects")

    def get_project(self, project_id: str) -> Any:
        data = self._api.call("GET", _ROUTES["project"].format(_check_id(project_id, "project id")))
        return data.get("data", data)

    def delete_project(self, project_id: str) -> None:
        self._api.call("DELETE", _ROUTES["project_delete"].format(_check_id(project_id, "project id")))

    def list_folders(self, project_id: str) -> Any:
        data = self._api.call("GET", _ROUTES["project_folders"].format(
            _check_id(project_id, "project id")))
        return data.get("data", data)

    def create_folder(self, title: str, project_id: str, private: bool = False) -> str:
        data = self._api.call("POST", _ROUTES["folders"], {
            "title": title, "projectId": _check_id(project_id, "project id"),
            "isPrivate": bool(private)})
        return _need_str(data, "folderId", "POST /v1/folders")

    def get_folder(self, folder_id: str) -> Any:
        data = self._api.call("GET", _ROUTES["folder"].format(_check_id(folder_id, "folder id")))
        return data.get("data", data)

    def delete_folder(self, folder_id: str) -> None:
        self._api.call("DELETE", _ROUTES["folder"].format(_check_id(folder_id, "folder id")))


def upload(source: Source, folder_id: Optional[str] = None, *, name: Optional[str] = None,
           mime_type: Optional[str] = None, progress: Optional[Progress] = None,
           link: bool = False) -> UploadedFile:
    """Upload one file with a Client configured from the environment.

    A new Client per call: no module-level state to leak between callers.
    See Client.upload for the arguments.
    """
    with Client() as client:
        return client.upload(source, folder_id, name=name, mime_type=mime_type,
                             progress=progress, link=link)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
#
# The CLI writes through one _Screen: result lines on stdout, messages on
# stderr, and on a terminal a progress line that every other write clears
# first. Nothing here reaches into another object's private state; the
# library's warnings arrive as log records, through the same _Screen.

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_size(text: str) -> int:
    """'64M' -> 67108864 (K, M, G, T are powers of 1024; 'B'/'iB' allowed)."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", text, re.IGNORECASE)
    if not match:
        raise ValueError("not a size: %r (try 64M or 1G)" % text)
    return int(float(match.group(1)) * _SUFFIXES[match.group(2).upper()])


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not a whole number: %r" % text) from None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            break
        n /= 1024.0
    return "%d B" % n if unit == "B" else "%.1f %s" % (n, unit)


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)
    return "%d:%02d" % (seconds // 60, seconds % 60)


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the run stops as on Ctrl-C (the library aborts what
    it opened), and the CLI exits 143."""


class _StdoutClosed(KeyboardInterrupt):
    """The reader of stdout went away (`| head -1`): the run stops as on
    Ctrl-C, and the CLI ends quietly with status 0."""


def _write(stream: Any, text: str) -> None:
    """Write text the stream's encoding may not hold (a cp1252 console, a
    name with undecodable bytes): what it cannot encode is escaped."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def _columns(stream: Any) -> int:
    """The terminal's width: $COLUMNS if set (as shutil has it), else the
    width of the terminal the stream writes to, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80  # 0: a terminal that does not say


class _Screen:
    """Every write of the CLI. Results go to stdout, messages to stderr; on
    a terminal, the progress line is cleared before either, so no line
    ever holds both, and the next update draws it again. With TERM=dumb it
    is cleared with spaces instead of escape codes."""

    def __init__(self, out: Any, err: Any) -> None:
        self.out, self.err = out, err
        self.tty = _isatty(err)
        self._ansi = os.environ.get("TERM", "") != "dumb"
        self._drawn = 0  # the width of the progress line on screen; 0: none
        self._lock = threading.RLock()  # one writer at a time: workers draw progress
        self.stopped: List[BaseException] = []  # files a stop cut short (_Stopped)

    def result(self, text: str) -> None:
        """One line on stdout; a closed stdout stops the run (_StdoutClosed)."""
        with self._lock:
            self.clear()
            try:
                _write(self.out, text + "\n")
                self.out.flush()
            except BrokenPipeError:
                raise _StdoutClosed() from None

    def message(self, text: str) -> None:
        """One line on stderr: an error, a warning, a notice, a summary."""
        with self._lock:
            self.clear()
            self._err(text + "\n")

    def status(self, text: str) -> None:
        """Draw the progress line, cut to the terminal's width (the last
        column is left free: some terminals wrap when it is written)."""
        with self._lock:
            text = text[:_columns(self.err) - 1]
            tail = "\x1b[K" if self._ansi else " " * max(self._drawn - len(text), 0)
            self._err("\r" + text + tail)
            self._drawn = len(text)

    def clear(self) -> None:
        with self._lock:
            if self._drawn:
                self._err("\r\x1b[K" if self._ansi else "\r%s\r" % (" " * self._drawn))
                self._drawn = 0

    def _err(self, text: str) -> None:
        try:
            _write(self.err, text)
            self.err.flush()
        except (OSError, ValueError):  # stderr closed: nowhere left to say it
            pass


class _Bar:
    """The progress line: files ended, bytes sent (of how many, when every
    size is known), rate, ETA. Redrawn at most ten times a second from the
    workers' progress calls, and whenever a file ends."""

    def __init__(self, screen: _Screen, files: int, total: Optional[int]) -> None:
        self._screen, self._files, self._total = screen, files, total
        self._lock = threading.Lock()  # guards the counters below
        self._sent: Dict[str, int] = {}
        self._bytes = 0
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self._start = self._drawn = time.monotonic()

    def update(self, name: str, sent: int, total: int) -> None:
        with self._lock:
            self._bytes += sent - self._sent.get(name, 0)
            self._sent[name] = sent
            now = time.monotonic()
            if now - self._drawn < 0.1:
                return
            self._drawn = now
            line = self._line(now)
        self._screen.status(line)

    def file_done(self, name: str, outcome: str, size: Optional[int]) -> None:
        """outcome: "done", "skipped" (its bytes leave the total) or "failed"."""
        with self._lock:
            self._sent.pop(name, None)
            self.counts[outcome] += 1
            if outcome == "skipped" and self._total is not None and size:
                self._total -= size
            line = self._line(time.monotonic())
        self._screen.status(line)

    def _line(self, now: float) -> str:
        rate = self._bytes / max(now - self._start, 1e-6)
        ended = sum(self.counts.values())
        if self._total is None:  # a stream: its size is known only at its end
            return "%d/%d files  %s  %s/s" % (ended, self._files, _human(self._bytes),
                                              _human(rate))
        line = "%d/%d files  %s / %s  %s/s" % (ended, self._files, _human(self._bytes),
                                               _human(self._total), _human(rate))
        if rate > 0 and self._total > self._bytes:
            line += "  ETA %s" % _clock((self._total - self._bytes) / rate)
        return line

    def summary(self) -> str:
        with self._lock:
            elapsed = max(time.monotonic() - self._start, 1e-6)
            done, skipped, failed = (self.counts[k] for k in ("done", "skipped", "failed"))
            return "%d file%s%s%s, %s in %.1f s (%s/s)" % (
                done, "" if done == 1 else "s",
                ", %d skipped" % skipped if skipped else "",
                ", %d failed" % failed if failed else "",
                _human(self._bytes), elapsed, _human(self._bytes / elapsed))


def _show_log(screen: _Screen, verbose: int) -> Callable[[], None]:
    """Send the "fileslink" logger's records to the screen: warnings always
    (what a person must see survives --quiet and a pipe), -v adds info,
    -vv debug. Returns what puts the logger back as it was found."""
    import logging

    class ToScreen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                text = record.getMessage()
            except Exception:  # a malformed record is logging's to report
                self.handleError(record)
                return
            screen.message("fileslink: %s: %s" % (record.levelname.lower(), _clean_name(text)))

    logger = logging.getLogger("fileslink")
    handler = ToScreen()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logger.propagate = False  # an application's root handler must not print them twice

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

    return restore


def _trap_sigterm() -> Callable[[], None]:
    """SIGTERM (containers, systemd, `timeout`) raises _Terminated, so it
    ends a run as Ctrl-C does. Returns what restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals can only be caught in the main thread
    import signal

    def terminate(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the abort short
        raise _Terminated()

    old = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _silence(stream: Any) -> None:
    """Point a closed stdout at /dev/null, so that the interpreter's last
    flush at exit cannot report "Broken pipe" either."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return  # not a file: nothing will flush to a dead pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _certificate_refused(exc: BaseException) -> bool:
    ssl = sys.modules.get("ssl")
    seen: Optional[BaseException] = exc
    while seen is not None and ssl is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    """One line a user can act on."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if isinstance(exc.filename, str) else "file"
        return "%s: %s" % (_clean_name(where), exc.strerror)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, APIError) and exc.status == 400 and "limit" in exc.message.lower():
        return "storage limit exceeded: %s" % text
    if isinstance(exc, AuthError) and exc.status == 401:
        return "%s; check %s" % (text, _ENV_KEY)
    if _certificate_refused(exc):
        return "%s (if a proxy re-signs TLS, --ca-bundle FILE adds its CA)" % text
    return text


def _reason(exc: BaseException) -> str:
    """Why one file failed, its name being already on the line."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _describe(exc)


# -- what a directory holds ---------------------------------------------------

if TYPE_CHECKING:
    #: (name, source, size): size None when only reading the source tells it.
    Entry = Tuple[str, Any, Optional[int]]


def _kind(mode: int) -> str:
    import stat

    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def _walk(paths: Sequence[str], name: Optional[str], screen: _Screen) -> Tuple[List[Entry], int]:
    """The files to upload, and how many paths could not be read (each
    reported on one line). A directory gives every regular file under it,
    named by its path below it with '/'; see _tree."""
    import stat

    entries: List[Entry] = []
    failed = 0
    for path in paths:
        if path == "-":
            entries.append((name or "", sys.stdin.buffer, None))
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            screen.message("fileslink: error: %s" % _describe(exc))
            failed += 1
            continue
        if stat.S_ISDIR(st.st_mode):
            failed += _tree(path, st, entries, screen)
        else:  # not a regular file (a FIFO, <(cmd)): the library reads it as a stream
            own = name or _clean_name(os.path.basename(path.rstrip("/\\")) or path)
            entries.append((own, path, st.st_size if stat.S_ISREG(st.st_mode) else None))
    return entries, failed


def _tree(top: str, top_stat: os.stat_result, entries: List[Entry], screen: _Screen) -> int:
    """Add the regular files under top to entries, each directory's files
    in name order before its subdirectories; the number of failures.

    Special files (FIFO, socket, device) are skipped with a warning and
    never opened: opening a FIFO blocks. Symbolic links are followed, to
    directories too; a link back to a directory above it (a loop) is
    skipped with a warning. An unreadable directory or a dangling link is
    one failure line each; the walk goes on.
    """
    import stat

    failed = 0
    stack = [("", top, frozenset([(top_stat.st_dev, top_stat.st_ino)]))]
    while stack:
        prefix, path, above = stack.pop()
        try:
            with os.scandir(path) as listing:
                found = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            screen.message("fileslink: error: %s: %s" % (_clean_name(path), exc.strerror))
            failed += 1
            continue
        subdirs = []
        for entry in found:
            shown = _clean_name(entry.path)
            try:
                st = entry.stat()  # follows links; a dangling one raises
            except OSError as exc:
                screen.message("fileslink: error: %s: %s" % (shown, exc.strerror))
                failed += 1
                continue
            if stat.S_ISREG(st.st_mode):
                entries.append((_clean_name(prefix + entry.name), entry.path, st.st_size))
            elif stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in above:
                    screen.message("fileslink: warning: skipped %s: a link to a directory "
                                   "above it (a loop)" % shown)
                else:
                    subdirs.append((prefix + entry.name + "/", entry.path, above | {key}))
            else:
                screen.message("fileslink: warning: skipped %s: %s, not a regular file"
                               % (shown, _kind(st.st_mode)))
        stack.extend(reversed(subdirs))
    return failed


def _selected(name: str, rules: Sequence[Tuple[str, str]]) -> bool:
    """aws s3's rule: every file is in; each --exclude / --include that
    matches the name, in the order given, decides anew (the last match
    wins). Globs are fnmatch's, case-sensitive; '*' matches '/' too."""
    import fnmatch

    keep = True
    for verb, pattern in rules:
        if fnmatch.fnmatchcase(name, pattern):
            keep = verb == "include"
    return keep


# -- arguments ------------------------------------------------------------------

def _parser() -> Any:
    import argparse

    class Parser(argparse.ArgumentParser):
        """One error style for argparse's messages and ours: the usage of the
        command at fault, then `fileslink: error: ...`; exit status 2."""

        def error(self, message: str) -> Any:
            self.print_usage(sys.stderr)
            self.exit(2, "fileslink: error: %s\n" % message)

    def checked(parse: Callable[[str], int], low: int, what: str) -> Callable[[str], int]:
        def convert(text: str) -> int:
            try:
                value = parse(text)
            except ValueError as exc:  # argparse would print "invalid convert value"
                raise argparse.ArgumentTypeError(str(exc)) from None
            if value < low:
                raise argparse.ArgumentTypeError("%s must be at least %d, not %r" % (what, low, text))
            return value
        return convert

    def global_options(parser: Any, default: Callable[[Any], Any]) -> None:
        """The options every command takes, before or after its name. Only
        the top level sets defaults: a command's would overwrite the value
        given before the command's name."""
        group = parser.add_argument_group("options of every command, before or after its name")
        group.add_argument("-v", "--verbose", action="count", default=default(0),
                            help="log to stderr: -v each file, API call and retry; "
                            "-vv every request, storage included (the key redacted)")
        group.add_argument("-q", "--quiet", action="store_true", default=default(False),
                            help="no progress line and no summary, even on a terminal "
                            "(errors and warnings are still written)")
        group.add_argument("--json", action="store_true", default=default(False),
                            help="one JSON object per line on stdout")
        group.add_argument("--folder", metavar="ID", default=default(None),
                            help="the folder id (default $%s)" % _ENV_FOLDER)
        group.add_argument("--ca-bundle", metavar="FILE", default=default(None),
                            help="also trust the CA certificates in FILE (a corporate proxy's CA)")
        group.add_argument("--allow-insecure", action="store_true", default=default(False),
                            help="permit a plain-http base URL to a remote host (as "
                            "FILESLINK_ALLOW_INSECURE=1 does); the key would cross unencrypted")

    parser = Parser(prog="fileslink", allow_abbrev=False,
                    description="Upload files to files.link. The API key comes from $%s; "
                    "$%s and $%s are optional." % (_ENV_KEY, _ENV_FOLDER, _ENV_BASE_URL))
    parser.add_argument("--version", action="version", version="fileslink " + __version__,
                        help="print the version and exit")
    global_options(parser, lambda value: value)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="run `fileslink COMMAND --help` for its options")
    sub.required = True

    def command(name: str, summary: str, examples: Sequence[str], description: str = "") -> Any:
        # allow_abbrev is not inherited by subcommands (3.8 to 3.13): say it again.
        cmd = sub.add_parser(name, help=summary, description=description or summary,
                             allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog="example%s:\n%s" % ("s" if len(examples) > 1 else "",
                                                        "\n".join("  " + e for e in examples)))
        global_options(cmd, lambda value: argparse.SUPPRESS)
        cmd.set_defaults(usage=cmd)
        return cmd

    up = command("upload", "upload files and directories", [
        "fileslink upload report.pdf --folder FOLDER_ID",
        "fileslink upload ./photos --skip-existing --exclude '*.tmp'",
        "fileslink upload ./photos --dry-run",
        "pg_dump db | fileslink upload - --name db.sql"],
        "Upload files; a directory uploads every file under it, named by its path "
        "below the directory.")
    up.add_argument("paths", nargs="+", metavar="PATH",
                    help="a file, a directory, or - for stdin")
    up.add_argument("--name", help="the name to give the file (required with -)")
    up.add_argument("--link", action="store_true", help="create permanent links and print them")
    up.add_argument("--workers", type=checked(_whole, 1, "--workers"), default=8, metavar="N",
                    help="parallel PUTs, files or parts (8)")
    up.add_argument("--threshold", type=checked(_parse_size, 1, "--threshold"),
                    default=100 << 20, metavar="SIZE",
                    help="files of SIZE or more go multipart: in parts, sent in parallel "
                    "(100M; K, M, G suffixes)")
    up.add_argument("--no-checksum", action="store_true",
                    help="skip the MD5 comparison with storage's ETag (faster)")
    up.add_argument("--skip-existing", action="store_true",
                    help="skip each file whose name and size match a file in the folder")
    up.add_argument("--dry-run", action="store_true",
                    help="print what would be uploaded and skipped; upload nothing")
    up.add_argument("--exclude", dest="rules", action="append", default=[], metavar="GLOB",
                    type=lambda glob: ("exclude", glob),
                    help="leave out files whose name (their path below the directory) "
                    "matches GLOB; repeatable, the last matching --exclude/--include wins")
    up.add_argument("--include", dest="rules", action="append", metavar="GLOB",
                    type=lambda glob: ("include", glob),
                    help="take back files an earlier --exclude left out; repeatable")
    up.add_argument("--bwlimit", type=checked(_parse_size, 1, "--bwlimit"), metavar="RATE",
                    help="at most RATE bytes per second across all workers (K, M, G suffixes)")
    up.add_argument("--resume", action="store_true",
                    help="keep an interrupted multipart upload to continue it when the same "
                    "command runs again (see `fileslink pending`)")

    ls = command("ls", "list the files of a folder", ["fileslink ls", "fileslink ls FOLDER_ID --json"])
    ls.add_argument("folder_id", nargs="?", metavar="FOLDER_ID",
                    help="the folder (default --folder, then $%s)" % _ENV_FOLDER)
    rm = command("rm", "delete files", ["fileslink rm FILE_ID [FILE_ID ...]"])
    rm.add_argument("ids", nargs="+", metavar="FILE_ID", help="a file to delete")
    link = command("link", "create a permanent public link", ["fileslink link FILE_ID"])
    link.add_argument("id", metavar="FILE_ID", help="the file to link")
    projects = command("projects", "list your projects", ["fileslink projects"])
    projects.add_argument("--page", type=checked(_whole, 1, "--page"), default=1, metavar="N",
                          help="the page of the listing (1)")
    folders = command("folders", "list the folders of a project", ["fileslink folders PROJECT_ID"])
    folders.add_argument("project", metavar="PROJECT_ID", help="the project")
    command("pending", "list the multipart uploads kept by --resume",
            ["fileslink pending", "fileslink pending --json"])
    abort = command("abort", "abort multipart uploads kept by --resume",
                    ["fileslink abort ID [ID ...]", "fileslink abort --all"])
    abort.add_argument("ids", nargs="*", metavar="ID", help="an upload `fileslink pending` lists")
    abort.add_argument("--all", action="store_true", help="abort every one of them")
    return parser


def _parse(argv: Optional[Sequence[str]]) -> Any:
    """The arguments, checked; SystemExit (after the usage and one error
    line, or after --help) when they cannot be run."""
    args, unknown = _parser().parse_known_args(argv)
    if unknown:  # reported by the command's parser, so with its usage
        args.usage.error("unrecognized arguments: %s" % " ".join(unknown))
    if args.command == "upload":
        if args.name is not None and len(args.paths) > 1:
            args.usage.error("--name goes with a single PATH")
        if "-" in args.paths and not args.name:
            args.usage.error("reading stdin (-) needs --name")
    if args.command == "abort" and bool(args.ids) == args.all:
        args.usage.error("give the IDs to abort, or --all")
    return args


def _folder(args: Any) -> str:
    """The folder a command works in: --folder, else $FILESLINK_FOLDER."""
    folder = args.folder or os.environ.get(_ENV_FOLDER)
    if not folder:
        raise ConfigError("no folder: pass --folder ID or set %s (`fileslink projects`, then "
                          "`fileslink folders PROJECT_ID`, list them)" % _ENV_FOLDER)
    return str(folder)


def _client(args: Any) -> Client:
    options: Dict[str, Any] = {}
    if args.ca_bundle:
        import ssl

        context = ssl.create_default_context()  # keep the system CAs: add, not replace
        try:
            context.load_verify_locations(cafile=args.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("--ca-bundle %s: %s" % (args.ca_bundle, exc)) from None
        options["ssl_context"] = context
    if args.allow_insecure:  # otherwise the library reads FILESLINK_ALLOW_INSECURE
        options["allow_insecure"] = True
    if args.command == "upload":
        options.update(max_workers=args.workers, multipart_threshold=args.threshold,
                       checksum=not args.no_checksum, max_bandwidth=args.bwlimit)
    return Client(**options)


# -- the commands ---------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line. Returns the exit status: 0 all done (or stdout was
    closed), 1 something failed, 2 usage or configuration, 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM)."""
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    screen = _Screen(sys.stdout, sys.stderr)
    restore_log = _show_log(screen, args.verbose)
    restore_signal = _trap_sigterm()
    try:
        with _client(args) as client:
            return int(_COMMANDS[args.command](client, args, screen))
    except _StdoutClosed:
        screen.clear()
        _silence(sys.stdout)
        return 0
    except KeyboardInterrupt as exc:
        screen.message(_stop_line(exc, screen.stopped, args))
        return 143 if isinstance(exc, _Terminated) else 130
    except ConfigError as exc:
        screen.message("fileslink: error: %s" % _describe(exc))
        return 2
    except (FilesLinkError, OSError) as exc:
        screen.message("fileslink: error: %s" % _describe(exc))
        return 1
    finally:
        restore_signal()
        restore_log()


def _stop_line(exc: BaseException, stopped: List[Any], args: Any) -> str:
    """The one line a stop ends with: what was aborted, what was kept."""
    line = "fileslink: %s" % ("terminated" if isinstance(exc, _Terminated) else "interrupted")
    aborted = sum(1 for s in stopped if getattr(s, "aborted", None) is True)
    failed = sum(1 for s in stopped if getattr(s, "aborted", None) is False)
    if aborted:
        line += "; %d unfinished multipart upload%s aborted" % (aborted, "" if aborted == 1 else "s")
    if failed:
        line += "; %d could not be aborted (see above)" % failed
    if getattr(args, "resume", False) and any(getattr(s, "aborted", 0) is None for s in stopped):
        line += "; the same command continues what was kept (`fileslink pending` lists it)"
    return line


def _emit(screen: _Screen, args: Any, record: Json, line: str) -> None:
    import json

    screen.result(json.dumps(record) if args.json else line)


def _cmd_upload(client: Client, args: Any, screen: _Screen) -> int:
    folder = _folder(args)
    found, failed = _walk(args.paths, args.name, screen)
    entries = [e for e in found if not isinstance(e[1], str) or _selected(e[0], args.rules)]
    if args.dry_run:
        _dry_run(client, folder, args, screen, found, entries)
        return 1 if failed else 0
    if not entries:
        if not failed:
            screen.message("fileslink: nothing to upload: %s" % (
                "%d files, all excluded" % len(found) if found else "no files in %s"
                % ", ".join(args.paths)))
        return 1 if failed else 0
    sizes = [size for _, _, size in entries]
    total = None if None in sizes else sum(s or 0 for s in sizes)
    bar = _Bar(screen, len(entries), total) if screen.tty and not args.quiet else None

    def on_file(index: int, result: Any) -> None:
        name, _, size = entries[index]
        if isinstance(result, UploadedFile):
            line = "%s %s" % (result.name, "skipped (%s)" % result.id if result.skipped
                              else "-> %s" % (result.url or result.id))
            _emit(screen, args, result.to_dict(), line)
            outcome = "skipped" if result.skipped else "done"
        elif isinstance(result, _Stopped):  # cut short by a stop: main() sums them up
            screen.stopped.append(result)
            if result.aborted is False:
                screen.message("fileslink: error: %s: %s" % (name, result))
            return
        else:
            screen.message("fileslink: error: %s: %s" % (name, _reason(result)))
            outcome = "failed"
        if bar is not None:
            bar.file_done(name, outcome, size)

    try:
        client.upload_many([(name, source) for name, source, _ in entries], folder,
                           progress=bar.update if bar else None, link=args.link,
                           skip_existing=args.skip_existing, resume=args.resume, on_file=on_file)
    except UploadManyError:
        failed += 1  # each failure has had its line
    if bar is not None:
        screen.message(bar.summary())
    return 1 if failed else 0


def _dry_run(client: Client, folder: str, args: Any, screen: _Screen,
             found: List[Entry], chosen: List[Entry]) -> None:
    """What upload would do, with no presign, initiate or confirm call:
    only the folder's listing, for --skip-existing."""
    existing = _index_existing(client.list_files(folder)) if args.skip_existing else {}
    kept = set(id(entry) for entry in chosen)
    counts = {"upload": 0, "skip": 0, "exclude": 0}
    for entry in found:
        name, _, size = entry
        there = existing.get((name, size)) if size is not None else None
        record: Json = {"name": name, "size": size, "dryRun": True}
        if id(entry) not in kept:
            record["excluded"] = True
            _emit(screen, args, record, "%s excluded" % name)
            counts["exclude"] += 1
        elif there is not None:
            record = dict(there.to_dict(), skipped=True, dryRun=True)
            _emit(screen, args, record, "%s would be skipped (%s)" % (name, there.id))
            counts["skip"] += 1
        else:
            record["mimeType"] = _guess_mime(name)
            shown = "size unknown" if size is None else _human(size)
            _emit(screen, args, record, "%s would be uploaded (%s)" % (name, shown))
            counts["upload"] += 1
    if screen.tty and not args.quiet:
        screen.message("dry run: %d to upload, %d to skip, %d excluded"
                       % (counts["upload"], counts["skip"], counts["exclude"]))


def _listed(record: Json) -> Json:
    """A listing's file record under upload --json's names (name, size),
    with every other field it carries."""
    renamed = {"fileName": "name", "fileSize": "size"}
    entry: Json = {"id": record.get("id"), "name": record.get("fileName"),
                   "size": record.get("fileSize")}
    entry.update((renamed.get(k, k), v) for k, v in record.items() if k not in renamed)
    return entry


def _cmd_ls(client: Client, args: Any, screen: _Screen) -> int:
    folder = args.folder_id or _folder(args)
    for record in client.list_files(folder):
        entry = _listed(record)
        _emit(screen, args, entry, "%s  %10s  %s" % (
            entry["id"], "" if entry["size"] is None else entry["size"],
            _clean_name(str(entry["name"] or ""))))
    return 0


def _cmd_rm(client: Client, args: Any, screen: _Screen) -> int:
    status = 0
    for file_id in args.ids:
        try:
            client.delete_file(file_id)
        except FilesLinkError as exc:
            screen.message("fileslink: error: %s: %s" % (file_id, _describe(exc)))
            status = 1
        else:
            _emit(screen, args, {"id": file_id, "deleted": True}, "deleted %s" % file_id)
    return status


def _cmd_link(client: Client, args: Any, screen: _Screen) -> int:
    url = client.create_link(args.id)
    _emit(screen, args, {"id": args.id, "url": url}, url)
    return 0


def _print_listing(screen: _Screen, args: Any, value: Any, id_field: str) -> int:
    """One line (or JSON object) per project or folder of a listing."""
    if isinstance(value, dict):  # the listing's shape is not published: look for the list
        lists = [value[k] for k in ("folders", "projects", "items", "data")
                 if isinstance(value.get(k), list)]
        value = lists[0] if lists else [value]
    for record in value if isinstance(value, list) else []:
        if isinstance(record, dict):
            line = "%s  %s" % (record.get("id") or record.get(id_field), record.get("title", ""))
        else:
            line = str(record)
        _emit(screen, args, record, line)
    return 0


def _cmd_folders(client: Client, args: Any, screen: _Screen) -> int:
    return _print_listing(screen, args, client.list_folders(args.project), "folderId")


def _cmd_projects(client: Client, args: Any, screen: _Screen) -> int:
    return _print_listing(screen, args, client.list_projects(args.page), "projectId")


def _cmd_pending(client: Client, args: Any, screen: _Screen) -> int:
    for up in client.pending():
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(up.expires))
        record = {"id": up.id, "name": up.name, "size": up.size, "partsDone": up.parts_done,
                  "partsTotal": up.parts_total, "expires": expires, "folderId": up.folder_id}
        _emit(screen, args, record, "%s  %d/%d parts  %s  expires %s  %s" % (
            up.id, up.parts_done, up.parts_total, _human(up.size), expires, up.name))
    return 0


def _cmd_abort(client: Client, args: Any, screen: _Screen) -> int:
    aborted = client.abort_pending(None if args.all else list(args.ids))
    for upload_id in aborted:
        _emit(screen, args, {"id": upload_id, "aborted": True}, "aborted %s" % upload_id)
    missing = [i for i in args.ids if i not in aborted]
    for upload_id in missing:
        screen.message("fileslink: error: %s: no such pending upload (`fileslink pending` "
                       "lists them)" % upload_id)
    return 1 if missing else 0


_COMMANDS: Dict[str, Callable[[Client, Any, _Screen], int]] = {
    "upload": _cmd_upload, "ls": _cmd_ls, "rm": _cmd_rm, "link": _cmd_link,
    "folders": _cmd_folders, "projects": _cmd_projects, "pending": _cmd_pending,
    "abort": _cmd_abort,
}


if __name__ == "__main__":
    sys.exit(main())
