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

The design, for the next maintainer: API calls and presigned PUTs go through
http.client on pooled keep-alive connections, under urllib's proxy rules, and
not through urllib.request's opener, for measured reasons: the opener adds
`Content-Type: application/x-www-form-urlencoded` to every body (a presigned
URL signed for another type refuses it), opens a new connection per request
(a TLS handshake per part), and carries `Authorization` across redirects to
other hosts.  Parallel PUTs run on a concurrent.futures thread pool that one
coordinating thread feeds, so every decision (what to presign, when to
confirm, complete or abort) is taken in one thread.
"""

from __future__ import annotations

import collections
import http.client
import io
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
# module imported here, and http.client (which imports io, socket, ssl and
# email) is the floor we measure against.

__version__ = "0.1.0"

__all__ = [
    "APIError", "AuthError", "Client", "ConfigError", "FilesLinkError", "PendingUpload",
    "ProtocolError", "RateLimitError", "Retry", "SourceChangedError", "TransferError",
    "UploadManyError", "UploadedFile", "main", "upload",
]

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs import time; annotations are strings anyway
    import ssl
    from concurrent.futures import Future, ThreadPoolExecutor
    from queue import SimpleQueue
    from typing import (
        Any, BinaryIO, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence,
        Set, Tuple, TypeVar, Union,
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
_ENV_INSECURE = "FILESLINK_ALLOW_INSECURE"

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
#: How often an upload whose presigned URLs expired before any byte was
#: stored is presigned (or initiated) again: a clock skew or a stalled start.
_EXPIRED_RETRIES = 2
#: No wait longer than this (Retry-After, a spent rate-limit budget) is sat
#: out: the error is raised at once instead.
_MAX_WAIT = 900.0
#: A rate-limit wait this long is a warning, not an info line: it looks like a hang.
_LOUD_WAIT = 60.0
#: Statuses worth another try: the request may succeed unchanged.
_RETRY_STATUSES = frozenset((408, 429, 500, 502, 503, 504))
#: How long aborting a multipart upload may take after Ctrl-C.
_ABORT_TIMEOUT = 1.5
#: Idle connections kept per origin beyond max_workers.
_SPARE_CONNECTIONS = 2
#: How often a worker blocked in connect() looks whether the run was stopped.
_CONNECT_POLL = 0.1
#: File descriptors kept free for the application when capping the workers.
_SPARE_FDS = 32

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
#: Regular expressions are kept as text and compiled at first use (re caches
#: them): compiling them at import cost a cold start almost a millisecond.
#: Control characters (C0, DEL, C1: U+009B is CSI to many terminals) and the
#: bidirectional controls, which reorder what a terminal shows of a name.
_CONTROL = r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"

#: Where resumable uploads keep their journals (default: the user cache dir).
_ENV_STATE_DIR = "FILESLINK_STATE_DIR"
#: The journal format; a journal of another version is ignored, never misread.
_JOURNAL_VERSION = 1
#: A file is recognised on resume by a digest of this much of its start and end.
_IDENTITY_SPAN = 1024 * 1024
#: Resume only if the URLs of the parts left live at least this much longer:
#: storage checks a URL when a PUT starts, and the first PUTs start within
#: seconds. Longer would throw away uploads whose URLs live only minutes.
_RESUME_MARGIN = 60.0


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
    """429 after the retries ran out (or a wait too long to sit out)."""


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

    # Results are typed Any: UploadedFile is a value, defined below the errors.
    def __init__(self, failures: List[Tuple[int, str, BaseException]],
                 results: List[Any]) -> None:
        shown = "; ".join("%s: %s" % (name, exc) for _, name, exc in failures[:5])
        more = " (and %d more)" % (len(failures) - 5) if len(failures) > 5 else ""
        super().__init__("%d of %d files failed: %s%s"
                         % (len(failures), len(results), shown, more))
        self.failures = failures
        self.results = results
        self.uploaded = [r for r in results if not isinstance(r, BaseException)]


class _Stopped(TransferError):
    """A file cut short because the run stopped (Ctrl-C, SIGTERM, a fatal
    error); handed to on_file, never raised.  `aborted`: True when its
    multipart upload was aborted, False when the abort failed, None when
    there was nothing to abort or it was kept open to be resumed (`kept`)."""

    def __init__(self, text: str, aborted: Optional[bool], kept: bool = False) -> None:
        super().__init__(text)
        self.aborted, self.kept = aborted, kept


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


#: What ends a whole run rather than one file: a refused key fails every
#: file alike, and a cancellation is the caller's will.
_RUN_FATAL = (AuthError, _Cancelled)


# ---------------------------------------------------------------------------
# The protocol: routes [doc], the one table of what is [assumed], and the
# readers of answers whose shape is not published
# ---------------------------------------------------------------------------

def _clip(text: str, limit: int = 300) -> str:
    text = re.sub(_CONTROL, " ", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


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
    # Where a folder listing keeps its files [seen: a list under `data`].
    "listing": ("data",),
    # Files per presign / confirm call: the API takes lists, its limit is unpublished.
    "batch_size": 50,
    # Not an entry, for nothing reads it: completing a multipart upload marks
    # the file uploaded, so the engine makes no confirm call after complete.
}


def _pick(data: Json, field: str, default: Any = None) -> Any:
    """The value of the first alias of `field` present in `data`."""
    for name in _ASSUMED[field]:
        if data.get(name) is not None:
            return data[name]
    return default


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
        """What complete and abort name the upload by."""
        ids: Json = {"key": self.key, "uploadId": self.upload_id, "fileId": self.file_id}
        if self.bucket is not None:
            ids["bucket"] = self.bucket
        return ids


def _parse_plan(size: int, data: Any) -> _Plan:
    """Read an initiate response's `data` tolerantly and check its part plan.

    Raises ProtocolError naming the keys it saw when it cannot make sense of it.
    """
    if not isinstance(data, dict):
        raise ProtocolError("multipart initiate: `data` is not an object: %s" % _clip(repr(data)))
    file_id, upload_id = _pick(data, "file_id"), _pick(data, "upload_id")
    raw_parts = _pick(data, "parts")
    if not isinstance(file_id, str) or not isinstance(upload_id, str) or not isinstance(
            raw_parts, list) or not raw_parts:
        raise ProtocolError("multipart initiate: need a file id, an upload id and part URLs; "
                            "keys seen: %s" % (", ".join(sorted(map(str, data))) or "none"))
    numbered = sorted(_parse_part(position, item) for position, item in enumerate(raw_parts, 1))
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
    bucket = _pick(data, "bucket")
    return _Plan(file_id, upload_id, str(_pick(data, "key", "")),
                 None if bucket is None else str(bucket), size, part_size,
                 [url for _, url in numbered])


def _parse_part(position: int, item: Any) -> Tuple[int, str]:
    """(part number, URL) of one entry of an initiate response's part list."""
    if isinstance(item, str):
        return position, item
    if isinstance(item, dict) and isinstance(_pick(item, "part_url"), str):
        number = _pick(item, "part_number", position)
        if not isinstance(number, int) or isinstance(number, bool):
            raise ProtocolError("multipart initiate: part number %r is not an integer" % (number,))
        return number, _pick(item, "part_url")
    raise ProtocolError("multipart initiate: part %d has no URL; keys seen: %s" % (
        position, ", ".join(sorted(item)) if isinstance(item, dict) else type(item).__name__))


_AMZ_DATE = r"^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$"


def _url_lifetime(url: str) -> Optional[Tuple[float, float]]:
    """(signed at, seconds valid) of a presigned URL, from X-Amz-Date and
    X-Amz-Expires (or their X-Goog- twins); None if it carries no lifetime.
    Storage checks the lifetime when a PUT starts [PROTOCOL.md]."""
    query = {k.lower(): v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)}
    for vendor in ("x-amz-", "x-goog-"):
        date, expires = query.get(vendor + "date", ""), query.get(vendor + "expires", "")
        match = re.match(_AMZ_DATE, date)
        if match and re.match(r"^[0-9]{1,9}$", expires):
            import datetime  # already loaded by http.client (email.utils)

            year, month, day, hour, minute, second = (int(g) for g in match.groups())
            try:
                signed = datetime.datetime(year, month, day, hour, minute, second,
                                           tzinfo=datetime.timezone.utc)
            except ValueError:  # a 13th month: no lifetime we can trust
                return None
            return signed.timestamp(), float(expires)
    return None


def _url_expiry(url: str) -> Optional[float]:
    """The Unix time a presigned URL stops working, or None if it does not say."""
    lifetime = _url_lifetime(url)
    return None if lifetime is None else lifetime[0] + lifetime[1]


# ---------------------------------------------------------------------------
# Values: UploadedFile, Retry, PendingUpload
# ---------------------------------------------------------------------------


class _Value:
    """An immutable value: fields from __slots__, equality and repr by value."""

    __slots__: Tuple[str, ...] = ()

    def __init__(self, *values: Any) -> None:
        for field, value in zip(self.__slots__, values):
            object.__setattr__(self, field, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("%s is immutable" % type(self).__name__)

    def _fields(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (f, getattr(self, f)) for f in self.__slots__))


class UploadedFile(_Value):
    """An uploaded file (immutable).

    Attributes: id, name, size, mime_type, s3_key, multipart (bool), url
    (the permanent public link, or None), and skipped (True when
    skip_existing found it already there and nothing was sent).
    """

    __slots__ = ("id", "name", "size", "mime_type", "s3_key", "multipart", "url", "skipped")
    id: str
    name: str
    size: int
    mime_type: str
    s3_key: str
    multipart: bool
    url: Optional[str]
    skipped: bool

    def __init__(self, id: str, name: str, size: int, mime_type: str, s3_key: str,
                 multipart: bool = False, url: Optional[str] = None,
                 skipped: bool = False) -> None:
        super().__init__(id, name, size, mime_type, s3_key, multipart, url, skipped)

    def _replace(self, **changes: Any) -> UploadedFile:
        fields = dict(zip(self.__slots__, self._fields()))
        fields.update(changes)
        return UploadedFile(**fields)

    def to_dict(self) -> Json:
        """The JSON shape the CLI prints: id, name, size, s3Key, mimeType,
        multipart, url, and "skipped": true for a file skip_existing skipped."""
        record = {"id": self.id, "name": self.name, "size": self.size, "s3Key": self.s3_key,
                  "mimeType": self.mime_type, "multipart": self.multipart, "url": self.url}
        if self.skipped:
            record["skipped"] = True
        return record


class Retry(_Value):
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
        super().__init__(attempts, float(backoff), float(max_backoff))

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        bound = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return random.uniform(0.0, bound)


class PendingUpload(_Value):
    """A resumable multipart upload recorded in the journal (immutable).

    Attributes: id (the file id), name, size, parts_done, parts_total,
    expires (when the first URL of a part still to send expires, as a
    Unix time, or None), folder_id, and path (the local file).
    """

    __slots__ = ("id", "name", "size", "parts_done", "parts_total", "expires", "folder_id",
                 "path")
    id: str
    name: str
    size: int
    parts_done: int
    parts_total: int
    expires: Optional[float]
    folder_id: str
    path: str

    def to_dict(self) -> Json:
        """The JSON shape `fileslink pending --json` prints."""
        return {"id": self.id, "name": self.name, "size": self.size,
                "partsDone": self.parts_done, "partsTotal": self.parts_total,
                "expires": self.expires, "folderId": self.folder_id, "path": self.path}


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


def _unsigned_url(url: str) -> str:
    """A URL fit for a message: the query string (a signature) left out."""
    parts = urllib.parse.urlsplit(url)
    return "%s://%s%s%s" % (parts.scheme, parts.netloc, parts.path,
                            "?..." if parts.query else "")


def _unsigned_text(text: str, url: str) -> str:
    """Text from storage may echo the request line: leave its signature out."""
    query = urllib.parse.urlsplit(url).query
    if query:
        text = text.replace(query, "...")
        for _, value in urllib.parse.parse_qsl(query):
            if len(value) >= 8:
                text = text.replace(value, "...")
    return text


# ---------------------------------------------------------------------------
# Wire: the only code that touches sockets
# ---------------------------------------------------------------------------


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


class _Conn:
    """A pooled connection, its (scheme, host, port), and the proxy it goes
    through: (host, port, Proxy-Authorization) or None."""

    __slots__ = ("http", "origin", "proxy", "reused")

    def __init__(self, conn: http.client.HTTPConnection, origin: Tuple[str, str, int],
                 proxy: Optional[Tuple[str, int, Optional[str]]]) -> None:
        self.http, self.origin, self.proxy, self.reused = conn, origin, proxy, False

    def stop(self) -> None:
        """Shut the socket down, so that a thread blocked in it returns at once."""
        sock = self.http.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Cancel:
    """Stops a running upload: a flag the workers check between blocks, and
    what it stops along with it: the sockets they may be blocked in, and
    the _Cancel of each job of a run."""

    def __init__(self, parent: Optional[_Cancel] = None) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()  # guards _stops
        self._stops: Set[Union[_Conn, _Cancel]] = set()
        self._parent = parent
        if parent is not None:
            parent.track(self)
            if parent.is_set():
                self.set()

    def detach(self) -> None:
        """Leave the parent: a finished job must not be kept alive by its run."""
        if self._parent is not None:
            self._parent.untrack(self)

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
            stops = list(self._stops)
        for item in stops:
            item.stop()

    stop = set  # what a parent's set() calls on its children

    def track(self, item: Union[_Conn, _Cancel]) -> None:
        with self._lock:
            self._stops.add(item)

    def untrack(self, item: Union[_Conn, _Cancel]) -> None:
        with self._lock:
            self._stops.discard(item)


_NEVER = _Cancel()  # for calls made outside an upload: never set


def _ip_address(host: str) -> Any:
    """The IP address a URL's host is, or None for a name."""
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    address = _ip_address(host)
    return host.lower() == "localhost" or (address is not None and address.is_loopback)


def _proxy_for(scheme: str, host: str, netloc: str) -> Optional[Tuple[str, int, Optional[str]]]:
    """(host, port, Proxy-Authorization) of the proxy for a URL, or None.

    The rules are urllib's (getproxies, proxy_bypass with NO_PROXY) plus
    what urllib ignores: NO_PROXY networks (127.0.0.0/8, as curl and
    requests read them). urllib.request is imported only when some
    *_proxy variable is set.
    """
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None
    import ipaddress
    import urllib.request

    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(netloc):
        return None
    address = _ip_address(host)
    if address is not None:
        for entry in (os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or "").split(","):
            try:
                if "/" in entry and address in ipaddress.ip_network(entry.strip(), strict=False):
                    return None
            except ValueError:
                pass
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


class _ConnectFailed(OSError):
    """No connection was made, so the request was never sent: any call,
    even one that must not be repeated, may be tried again."""


def _network_error(what: str, exc: BaseException) -> Tuple[str, bool]:
    """A message for a failed exchange, and whether another try may help."""
    ssl = sys.modules.get("ssl")
    cert = exc.__cause__ if isinstance(exc, _ConnectFailed) else exc
    if ssl is not None and isinstance(cert, ssl.SSLCertVerificationError):
        return ("%s: %s (trust your CA with ssl_context= or SSL_CERT_FILE)"
                % (what, exc), False)
    return "%s: %s" % (what, _clip(str(exc) or type(exc).__name__)), True


def _is_stale_error(exc: BaseException) -> bool:
    """Errors a kept-alive connection that the server closed while idle gives."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                        http.client.RemoteDisconnected)):
        return True
    return type(exc).__name__ in ("SSLEOFError", "SSLZeroReturnError")


def _ready(sock: socket.socket, write: bool, timeout: float) -> bool:
    """Whether sock can be written (or read) within timeout seconds; poll,
    not select, where there is one: select fails on descriptors past 1024."""
    poll = getattr(select, "poll", None)
    if poll is None:
        r, w, x = select.select([] if write else [sock], [sock] if write else [], [sock], timeout)
        return bool(r or w or x)
    poller = poll()
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _open_socket(address: Tuple[str, int], timeout: float, cancel: _Cancel) -> socket.socket:
    """socket.create_connection, but a stopped run ends the wait: a host
    that drops SYNs would otherwise hold a worker, and so the exit, for
    the whole timeout."""
    import errno

    failure: Optional[OSError] = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(*address, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(sockaddr)
            deadline = time.monotonic() + timeout
            while code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR):
                cancel.check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("timed out")
                if _ready(sock, True, min(left, _CONNECT_POLL)):
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.settimeout(timeout)
            return sock
        except OSError as exc:
            sock.close()
            failure = exc
        except BaseException:
            sock.close()
            raise
    raise failure or OSError("no address for %s" % address[0])


class _Deadline(io.RawIOBase):
    """A socket reader that gives up once `limit` seconds have passed in all,
    however the bytes trickle in: each read waits at most what is left."""

    def __init__(self, sock: socket.socket, limit: float) -> None:
        super().__init__()
        # A file of its own on the socket, as http.client's reader is: it
        # keeps the socket open when the connection hands it to the response.
        self._sock, self._raw = sock, sock.makefile("rb", buffering=0)
        self._limit, self._deadline = limit, time.monotonic() + limit

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the answer did not arrive whole within %g s" % self._limit)
        self._sock.settimeout(left)
        return self._raw.readinto(buf) or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Response(http.client.HTTPResponse):
    """An answer read whole within the exchange's timeout, skipping every
    interim answer: http.client skips only 100 Continue and takes a 102
    Processing or a 103 Early Hints for the final status."""

    body = b""
    truncated = False  # the body was longer than the caller reads

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        limit = sock.gettimeout()  # the exchange's timeout: _Transport._connected set it
        assert limit is not None
        self.fp.close()  # http.client's own reader, not the socket
        self.fp = io.BufferedReader(_Deadline(sock, limit))

    def _read_status(self) -> Tuple[str, int, str]:
        version, status, reason = super()._read_status()  # type: ignore[misc]
        if 100 < status < 200 and status != 101:  # begin() skips a 100's headers and reads on
            return version, http.client.CONTINUE, reason
        return version, status, reason

    def text(self) -> str:
        """The body as text; a compressed body nobody asked for is described,
        not shown: its bytes would be garbage inside a message."""
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity" and self.body:
            return "(a %d-byte %s-encoded body)" % (len(self.body), _clip(encoding, 20))
        return self.body.decode("utf-8", "replace")


class _Transport:
    """HTTP/1.1 exchanges over pooled persistent connections.

    A connection is checked out for one exchange and returned when its
    response was read to the end, so each worker thread in effect keeps
    its own connection per host.  A forked child starts with an empty pool:
    the parent's sockets are shared with it, and answers would cross.
    """

    def __init__(self, timeout: float, ssl_context: Optional[ssl.SSLContext],
                 max_idle: int) -> None:
        self.timeout, self._ssl_context, self._max_idle = timeout, ssl_context, max_idle
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards _idle and _ssl_context
        self._idle: Dict[Tuple[str, str, int], List[_Conn]] = {}

    def _after_fork(self) -> None:
        """In a forked child, take a new lock (another thread may have held
        the parent's at the fork) and drop the parent's connections: closing
        them closes this process's descriptors, not the connections."""
        if os.getpid() != self._pid:
            self._pid, self._lock = os.getpid(), threading.Lock()
            self.close()

    def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        """A new connection, not yet connected (_connected sets its timeout)."""
        netloc = host if ":" not in host else "[%s]" % host
        if port not in (80, 443):
            netloc += ":%d" % port
        proxy = _proxy_for(scheme, host, netloc)
        peer = proxy[:2] if proxy else (host, port)
        conn: http.client.HTTPConnection
        if scheme == "https":
            with self._lock:
                if self._ssl_context is None:
                    import ssl

                    # Honours SSL_CERT_FILE / SSL_CERT_DIR, as OpenSSL reads them.
                    self._ssl_context = ssl.create_default_context()
            conn = http.client.HTTPSConnection(*peer, context=self._ssl_context)
            if proxy is not None:
                conn.set_tunnel(host, port, {"Proxy-Authorization": proxy[2]} if proxy[2] else None)
        else:
            conn = http.client.HTTPConnection(*peer)
        conn.response_class = _Response
        return _Conn(conn, (scheme, host, port), proxy)

    def _checkout(self, origin: Tuple[str, str, int], fresh: bool) -> _Conn:
        self._after_fork()
        while not fresh:
            with self._lock:
                pool = self._idle.get(origin)
                conn = pool.pop() if pool else None
            if conn is None:
                break
            try:  # an idle connection is usable if it has nothing to read, not even EOF
                usable = conn.http.sock is not None and not _ready(conn.http.sock, False, 0)
            except (OSError, ValueError):
                usable = False
            if usable:
                conn.reused = True
                return conn
            conn.http.close()  # the server closed it while idle
        return self._connect(*origin)

    def _checkin(self, conn: _Conn) -> None:
        self._after_fork()
        with self._lock:
            pool = self._idle.setdefault(conn.origin, [])
            if len(pool) < self._max_idle:
                pool.append(conn)
                return
        conn.http.close()

    def close(self) -> None:
        self._after_fork()
        with self._lock:
            pools, self._idle = list(self._idle.values()), {}
        for pool in pools:
            for conn in pool:
                conn.http.close()

    def exchange(self, method: str, url: str, headers: Dict[str, str], body: Any = None, *,
                 cancel: _Cancel = _NEVER, max_body: int = _MAX_ERROR_BODY,
                 timeout: Optional[float] = None, fresh: bool = False) -> _Response:
        """Send one request and read its response, up to max_body bytes of body.

        `body` is bytes, or anything with len() and send(http_connection).
        `timeout` bounds each socket operation and, once the request is
        sent, the whole answer.  A kept-alive connection found closed by the
        server is replaced once, unseen: that says nothing about the
        request.  `fresh`: a new connection, so that a lost answer is never
        taken for a stale connection and the request silently sent again.
        Raises _ConnectFailed when no connection could be made.
        """
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        origin = (scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        limit = self.timeout if timeout is None else timeout
        while True:
            cancel.check()
            conn = self._checkout(origin, fresh)
            cancel.track(conn)
            try:
                self._connected(conn, limit, cancel)
                return self._once(conn, method, url, target, headers, body, max_body)
            except BaseException as exc:
                conn.http.close()
                if conn.reused and not fresh and _is_stale_error(exc) and not cancel.is_set():
                    _log(_DEBUG, "%s %s: kept-alive connection was closed; reconnecting",
                         method, _unsigned_url(url))
                    fresh = True
                    continue
                raise
            finally:
                cancel.untrack(conn)

    def _connected(self, conn: _Conn, limit: float, cancel: _Cancel) -> None:
        """Connect if not yet connected, and give the socket this exchange's
        timeout, which also bounds its answer: a pooled one may come from a
        short-timeout abort, and reading a proxy's CONNECT answer shortens it."""
        h = conn.http
        h.timeout = limit
        if h.sock is None:
            # http.client's connect() would block in connect(2) for the whole
            # timeout; this hook (private to http.client, and so unknown to
            # typeshed, but the same from 3.8 to 3.13) lets a stopped run end the wait.
            setattr(h, "_create_connection",  # noqa: B010
                    lambda address, timeout=limit, source=None: _open_socket(address, timeout, cancel))
            try:
                h.connect()
            except (OSError, http.client.HTTPException) as exc:
                if cancel.is_set():
                    raise _Cancelled() from None
                # A refused proxy is named: it is not the API that is down.
                if conn.proxy:
                    where = "the proxy %s:%d for %s" % (conn.proxy[0], conn.proxy[1], conn.origin[1])
                else:
                    where = "%s:%d" % conn.origin[1:]
                raise _ConnectFailed("cannot connect to %s: %s" % (
                    where, _clip(str(exc) or type(exc).__name__))) from exc
            # A stop that came while h.sock was still None shut nothing down: it
            # must be seen now, or the request would wait its whole timeout.
            cancel.check()
        h.sock.settimeout(limit)

    def _once(self, conn: _Conn, method: str, url: str, target: str, headers: Dict[str, str],
              body: Any, max_body: int) -> _Response:
        h = conn.http
        # Plain http through a proxy: absolute-form targets, credentials per request.
        forward = conn.proxy if conn.origin[0] == "http" else None
        h.putrequest(method, url if forward else target, skip_accept_encoding=True)
        for name, value in headers.items():
            h.putheader(name, value)
        if forward and forward[2]:
            h.putheader("Proxy-Authorization", forward[2])
        if body is not None:
            h.putheader("Content-Length", str(len(body)))
        answered_early = False
        try:
            if body is None or isinstance(body, bytes):
                h.endheaders(body)  # headers and a small body in one segment
            else:
                h.endheaders()
                body.send(h)
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
        assert isinstance(response, _Response)
        try:
            data = _read_full(response, max_body + 1)
            finished = response.isclosed()
        finally:
            # An answer that will close owns the socket (h.close() does not
            # reach it): close it, read whole or not, or the socket waits for
            # the garbage collector.
            response.close()
        response.body, response.truncated = data[:max_body], len(data) > max_body
        if not response.truncated and response.length:
            h.close()  # http.client takes an early EOF for the end of the body
            raise http.client.IncompleteRead(data, response.length)
        if answered_early or response.truncated or response.will_close or not finished:
            h.close()
        else:
            self._checkin(conn)
        return response


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
    #: The local file, for sources read from a path (resume needs it).
    path: Optional[str] = None

    def read(self, buf: memoryview, offset: int) -> memoryview:
        """Up to len(buf) bytes from offset, read into buf, or a view of the
        source's own memory where the bytes already are (no copy)."""
        raise NotImplementedError

    def stamp(self) -> Tuple[int, int, int]:
        """(inode, size, mtime_ns) of a file opened from a path."""
        raise NotImplementedError

    def check_unchanged(self) -> None:
        """Raise SourceChangedError if the data changed since it was opened."""

    def close(self) -> None:
        pass


class _BytesSource(_Source):
    def __init__(self, data: Union[bytes, bytearray, memoryview], name: str) -> None:
        self._data = memoryview(data).cast("B")
        self.name, self.size = name, self._data.nbytes

    def read(self, buf: memoryview, offset: int) -> memoryview:
        return self._data[offset:offset + len(buf)]


class _StreamSource(_Source):
    """A seekable binary file object; the caller's unless `owned`."""

    def __init__(self, stream: BinaryIO, name: str, owned: bool = False) -> None:
        self._stream, self.name, self._owned = stream, name, owned
        self._start = stream.tell()
        self.size = stream.seek(0, os.SEEK_END) - self._start
        stream.seek(self._start)
        self._lock = threading.Lock()  # guards the stream's position

    def read(self, buf: memoryview, offset: int) -> memoryview:
        with self._lock:
            self._stream.seek(self._start + offset)
            readinto = getattr(self._stream, "readinto", None)
            if readinto is not None:
                return buf[:readinto(buf) or 0]
            chunk = self._stream.read(len(buf))
        buf[:len(chunk)] = chunk
        return buf[:len(chunk)]

    def close(self) -> None:
        if self._owned:
            self._stream.close()


class _PathSource(_StreamSource):
    """A regular file on disk, opened by us; every worker reads its own
    range, with preadv where there is one, else under the stream's lock."""

    def __init__(self, path: str, name: str) -> None:
        super().__init__(open(path, "rb", buffering=0), name, owned=True)  # OSError: before any I/O
        self.path = path
        st = os.fstat(self._stream.fileno())
        self._stamp = (st.st_ino, self.size, st.st_mtime_ns)
        self._pread = getattr(os, "preadv", None)

    def read(self, buf: memoryview, offset: int) -> memoryview:
        if self._pread is None:
            return super().read(buf, offset)
        return buf[:self._pread(self._stream.fileno(), [buf], offset)]

    def stamp(self) -> Tuple[int, int, int]:
        return self._stamp

    def check_unchanged(self) -> None:
        st = os.fstat(self._stream.fileno())
        if (st.st_ino, st.st_size, st.st_mtime_ns) != self._stamp:
            raise SourceChangedError(
                "%s changed while it was being uploaded (size %d -> %d); not confirmed"
                % (self.name, self.size, st.st_size))


def _spool(stream: BinaryIO, name: str) -> _Source:
    """A non-seekable stream read to its end, kept in memory if small, else
    in a temp file: its size is what it held, never what it claimed."""
    import shutil
    import tempfile

    spool = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)  # removed when closed
    try:
        shutil.copyfileobj(stream, spool, _BLOCK)
        spool.seek(0)
        # typeshed's SpooledTemporaryFile is an IO[bytes], not a BinaryIO.
        return _StreamSource(spool, name, owned=True)  # type: ignore[arg-type]
    except BaseException:
        spool.close()
        raise


def _clean_name(name: str) -> str:
    """A name fit for the API: undecodable bytes and control characters
    (a name from the file system may hold both) become U+FFFD and "_"."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return re.sub(_CONTROL, "_", name)


def _guess_mime(name: str) -> str:
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    return _MIME_TYPES.get(ext, _DEFAULT_MIME)


def _open_path(path: str, name: str) -> _Source:
    """A path as a source: a regular file is read in place; a pipe (a FIFO,
    /dev/stdin, <(command)) is read to its end like a stream; a device or
    a socket is refused, for its "size" would be a lie."""
    import stat

    st = os.stat(path)  # OSError here: before any I/O
    mode = st.st_mode
    # A regular file that says it is empty may be a /proc file, made as it is
    # read (and refusing to seek to its end): read it to its end too.
    if stat.S_ISFIFO(mode) or (stat.S_ISREG(mode) and st.st_size == 0):
        with open(path, "rb") as pipe:
            return _spool(pipe, name)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        kind = "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise ConfigError("cannot upload %s: it is %s, not a file (to send what a command "
                          "writes, pipe it in)" % (_clean_name(path), kind))
    return _PathSource(path, name)  # a directory: open() raises IsADirectoryError


def _open_stream(item: Any, name: Optional[str]) -> _Source:
    """A file object as a source, refused before any I/O if it yields text."""
    if name is None:
        given = getattr(item, "name", None)
        if not isinstance(given, str) or given.startswith("<"):
            raise ConfigError("name= is required for a file object without a file name")
        name = _clean_name(os.path.basename(given))
    mode = getattr(item, "mode", "b")  # a text-mode SpooledTemporaryFile is no TextIOBase
    if isinstance(item, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise ConfigError("%s is open in text mode: open it in binary mode ('rb')" % name)
    try:
        seekable = bool(item.seekable())
    except (AttributeError, OSError, ValueError):
        seekable = False
    return _StreamSource(item, name) if seekable else _spool(item, name)


def _open_source(item: Any, name: Optional[str], mime_type: Optional[str]) -> _Source:
    """Turn what the caller gave into a _Source; local errors raise here."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        name, item = item
    if name is not None:
        if not isinstance(name, str) or not name or re.search(_CONTROL, name):
            raise ConfigError("name must be a non-empty string without control characters, "
                              "not %r" % (name,))
        name = _clean_name(name)  # lone surrogates from a command line become U+FFFD
    source: _Source
    if isinstance(item, (str, os.PathLike)):
        path = os.fsdecode(item)
        source = _open_path(path, name or _clean_name(os.path.basename(path.rstrip("/\\"))))
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if name is None:
            raise ConfigError("name= is required to upload bytes")
        source = _BytesSource(item, name)
    elif hasattr(item, "read"):
        source = _open_stream(item, name)
    else:
        raise ConfigError("cannot upload a %s: give a path, bytes or a binary file object"
                          % type(item).__name__)
    if not source.name:
        source.close()
        raise ConfigError("cannot tell the file's name: pass name=")
    source.mime_type = mime_type or _guess_mime(source.name)
    return source


class _Throttle:
    """A bandwidth cap shared by every worker of a Client: each block gets
    the next free slot on one virtual clock, so the workers together keep
    to the rate however many there are."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        #: Blocks of about 1/8 s, so progress moves smoothly under a low cap.
        self.block = max(16 * 1024, min(_BLOCK, int(rate / 8)))
        self._lock = threading.Lock()  # guards _next
        self._next = 0.0

    def take(self, nbytes: int, cancel: _Cancel) -> None:
        """Wait until `nbytes` more may be sent: the end of their slot, so
        that N bytes take N / rate seconds, not one block less."""
        with self._lock:
            now = time.monotonic()
            self._next = max(now, self._next) + nbytes / self.rate
            wait = self._next - now
        cancel.wait(wait)


class _Payload:
    """The body of one PUT: a range of a source, sent in large blocks.

    Reads go through a buffer bounded to the range: http.client would send
    whatever a file object yields, even past Content-Length. The MD5 of what
    was actually sent is computed on the way, never by a second read.
    """

    def __init__(self, source: _Source, offset: int, length: int, checksum: bool,
                 progress: Callable[[int], None], cancel: _Cancel,
                 throttle: Optional[_Throttle]) -> None:
        self.source, self.offset, self.length = source, offset, length
        self.checksum, self.md5 = checksum, None
        self.progress, self.cancel, self.throttle = progress, cancel, throttle
        self.sent = 0

    def __len__(self) -> int:
        return self.length

    def rewind(self) -> None:
        """Take back the progress reported for bytes that did not arrive."""
        if self.sent:
            self.progress(-self.sent)
            self.sent = 0

    def send(self, conn: http.client.HTTPConnection) -> None:
        """Send the whole range from its start: a payload may be sent again
        on a fresh connection, and must then send the same bytes."""
        self.rewind()
        self.md5 = _md5() if self.checksum else None
        # Large blocks through sendall, not sendfile: measured on loopback,
        # 1 MiB writes beat socket.sendfile (3460 vs 2784 MiB/s per stream).
        block = self.throttle.block if self.throttle else _BLOCK
        buf = memoryview(bytearray(min(block, self.length)))
        sock = conn.sock  # connected by endheaders()
        while self.sent < self.length:
            self.cancel.check()
            chunk = self.source.read(buf[:self.length - self.sent], self.offset + self.sent)
            if not chunk:
                raise SourceChangedError("%s ended early: it was truncated while being uploaded"
                                         % self.source.name)
            if self.md5 is not None:
                self.md5.update(chunk)
            if self.throttle is not None:
                self.throttle.take(len(chunk), self.cancel)
            sock.sendall(chunk)
            self.sent += len(chunk)
            self.progress(len(chunk))

    def hexdigest(self) -> Optional[str]:
        return None if self.md5 is None else str(self.md5.hexdigest())


# ---------------------------------------------------------------------------
# API calls: the files.link calls, each retried; the only code that holds the key
# ---------------------------------------------------------------------------


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # already loaded by http.client

    parsed = email.utils.parsedate_tz(value.strip())
    if parsed is None:
        return None
    try:
        return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    except (ValueError, OverflowError):  # past year 9999: later than any wait we sit out
        return float("inf")


#: A reset above this many seconds is a Unix time, not a delay (the
#: X-RateLimit-Reset of some servers): about 31 years.
_EPOCH_RESET = 1e9


def _parse_ratelimit(headers: http.client.HTTPMessage) -> Optional[Tuple[int, float]]:
    """(calls left, seconds to reset) from the IETF RateLimit header fields
    or their X-RateLimit- forerunners."""
    combined = headers.get("ratelimit") or ""
    found_left = re.search(r"(?:^|[;,\s])r=(\d+)", combined)
    found_reset = re.search(r"(?:^|[;,\s])t=(\d+)", combined)
    fields: Tuple[Optional[str], Optional[str]]
    if found_left and found_reset:
        fields = found_left.group(1), found_reset.group(1)
    else:
        prefix = "ratelimit-" if "ratelimit-remaining" in headers else "x-ratelimit-"
        fields = headers.get(prefix + "remaining"), headers.get(prefix + "reset")
    left, reset = fields
    try:
        calls, seconds = int(left or ""), float(reset or "")
    except ValueError:
        return None
    if seconds > _EPOCH_RESET:
        seconds -= time.time()
    return max(0, calls), max(0.0, seconds)


class _RateGate:
    """The API's call budget, shared by every thread of a Client.

    Each response says how many calls are left in the window and when it
    resets; once none are left, callers wait for the reset instead of
    spending retries on 429s.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards _left and _reset_at
        self._left: Optional[int] = None
        self._reset_at = 0.0

    def reserve(self) -> float:
        """Take one call from the budget; the seconds to wait before making it."""
        if os.getpid() != self._pid:  # a forked child: the lock may be held for ever
            self._pid, self._lock = os.getpid(), threading.Lock()
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


_BAD_ID = r"[/?#%\\\s\x00-\x1f\x7f]"


def _check_id(value: Any, what: str) -> str:
    """An id that goes into a URL path: refused rather than escaped."""
    if not isinstance(value, str) or not value or re.search(_BAD_ID, value) \
            or not value.isascii():  # a request line is ASCII: http.client would crash
        raise ConfigError("%s must be a non-empty ASCII id without '/', '?', '#', '%%', "
                          "spaces or control characters, not %r" % (what, value))
    return value


def _need_str(data: Json, field: str, what: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise ProtocolError("%s: no `%s` in the response; keys seen: %s"
                            % (what, field, ", ".join(sorted(data))))
    return value


_PLAIN_MD5 = r'^"[0-9a-fA-F]{32}"$'
_S3_FIELD = r"<(Code|Message)>([^<]{0,300})</\1>"


def _storage_message(text: str) -> str:
    """Code and Message of an S3-style XML error, else the start of the body."""
    fields = dict(re.findall(_S3_FIELD, text))
    if fields:
        return ": ".join(v for v in (fields.get("Code"), fields.get("Message")) if v)
    return _clip(text, 200)



def _index_existing(records: List[Json]) -> Dict[Tuple[str, int], UploadedFile]:
    """(name, size) -> the file already in a folder listing; of two files
    with one name and size the first wins: a re-run needs only one."""
    index: Dict[Tuple[str, int], UploadedFile] = {}
    for record in records:
        if not isinstance(record, dict) or record.get("uploaded") is False:
            continue
        name, size, file_id = record.get("fileName"), record.get("fileSize"), record.get("id")
        if isinstance(name, str) and isinstance(size, int) and isinstance(file_id, str):
            index.setdefault((name, size), UploadedFile(
                file_id, name, size, str(record.get("mimeType") or _DEFAULT_MIME),
                str(record.get("s3Key") or ""), skipped=True))
    return index


class _API:
    """The calls an upload is made of, and the one retry loop they share."""

    def __init__(self, key: str, base_url: str, transport: _Transport, retry: Retry,
                 checksum: bool, plain_ok: bool, throttle: Optional[_Throttle]) -> None:
        self._key, self.base_url, self._transport = key, base_url, transport
        self.retry, self.checksum, self.plain_ok = retry, checksum, plain_ok
        self.throttle = throttle
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
            plan = _parse_plan(source.size, raw)
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

    def abort(self, ids: Json, timeout: Optional[float] = None) -> Optional[Exception]:
        """Best effort: an unaborted multipart upload keeps storage billed.
        A timeout means Ctrl-C: one short try, so the user is not kept
        waiting.  None when aborted, else the error that says why not."""
        try:
            self.call("POST", _ROUTES["abort"], ids, attempts=1 if timeout else None,
                      timeout=timeout)
        except (FilesLinkError, _Cancelled) as exc:
            _log(_WARNING, "could not abort multipart upload %s: %s", ids.get("uploadId"),
                 str(exc) or "cancelled")
            return exc
        _log(_INFO, "aborted multipart upload %s", ids.get("uploadId"))
        return None

    def list_files(self, folder: str) -> List[Json]:
        data = self.call("GET", _ROUTES["folder_files"].format(folder))
        files = _pick(data, "listing")
        if not isinstance(files, list):
            raise ProtocolError("GET folder files: no list of files in the response")
        return files

    def link(self, file_id: str) -> str:
        """Create a permanent public link; its full URL."""
        data = self.call("POST", _ROUTES["link"], {"fileId": _check_id(file_id, "file id")})
        link = _need_str(data, "link", "POST /v1/p")
        if link.startswith(("http://", "https://")):
            return link
        return self.base_url + _ROUTES["public"].format(urllib.parse.quote(link, safe=""))

    def check_presigned(self, url: str) -> None:
        """Refuse, before any I/O, a presigned URL we must not send a file to."""
        try:
            parts = urllib.parse.urlsplit(url)
            scheme, host = parts.scheme.lower(), parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ProtocolError("the presigned URL is malformed") from None
        if scheme not in ("http", "https") or not host or re.search(_CONTROL, url) or " " in url:
            raise ProtocolError("the presigned URL %s is not an http(s) URL with a host"
                                % _clip(_unsigned_url(url), 100))
        if scheme == "http" and not self.plain_ok:
            raise ProtocolError("refusing to send file bytes unencrypted to %s (the presigned "
                                "URL is plain http)" % host)

    # -- the two kinds of request, each retried

    def retrying(self, attempt: Callable[[int], T], what: str, cancel: _Cancel,
                 attempts: Optional[int] = None) -> T:
        """Call attempt(n) until it returns, a non-retryable error, or the
        tries run out. The one retry loop of the module."""
        total = attempts or self.retry.attempts
        n = 1
        while True:
            try:
                return attempt(n)
            except _Retryable as failure:
                error = failure.error
                too_long = failure.retry_after is not None and failure.retry_after > _MAX_WAIT
                if n >= total or too_long:
                    if n > 1:  # str() of our errors is args[0]
                        error.args = ("%s (gave up after %d tries)" % (error, n),)
                    raise error from failure.__cause__
                delay = self.retry.delay(n, failure.retry_after)
                _log(_INFO, "%s: %s; try %d of %d in %.2f s", what, error, n + 1, total, delay)
                cancel.wait(delay)
                n += 1

    def _send(self, what: str, n: int, error: Callable[[str], FilesLinkError], method: str,
              url: str, headers: Dict[str, str], body: Any, cancel: _Cancel, level: int = _INFO,
              repeatable: bool = True, **options: Any) -> _Response:
        """One try of an exchange, logged. A failed one is raised as what it
        means: the run was stopped, a failure another try may fix, or one it
        cannot (a refused certificate; a lost answer to a call that must not
        be sent twice)."""
        started = time.monotonic()
        try:
            resp = self._transport.exchange(method, url, headers, body, cancel=cancel, **options)
        except (OSError, http.client.HTTPException, _Cancelled) as exc:
            if cancel.is_set():
                raise _Cancelled() from exc
            text, transient = _network_error(what, exc)
            if transient and not (repeatable or isinstance(exc, _ConnectFailed)):
                text += "; it may have been created all the same: look before trying again"
                transient = False
            failure = error(self.redact(text))
            raise (_Retryable(failure) if transient else failure) from exc
        _log(level, "%s -> %d (try %d, %.3f s)", what, resp.status, n, time.monotonic() - started)
        return resp

    def call(self, method: str, path: str, payload: Optional[Json] = None, *,
             cancel: _Cancel = _NEVER, attempts: Optional[int] = None,
             timeout: Optional[float] = None, repeatable: bool = True) -> Json:
        """One API call, retried; its decoded JSON object.

        Whether a call may be sent again when its answer was lost after the
        request went out (`repeatable`): GETs and DELETEs may; so may
        presign (a row left unconfirmed stays invisible), initiate (an
        empty multipart upload, which storage expires), confirm, complete,
        abort and link (the same ids give the same state). Creating a
        folder or a project may not: a second one would show.
        """
        import json

        body = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Authorization": self._key, "Accept": "application/json",
                   "User-Agent": _USER_AGENT}
        if body is not None:
            headers["Content-Type"] = "application/json"
        what = "%s %s" % (method, path)

        def attempt(n: int) -> Json:
            wait = self._gate.reserve()
            # A stopping run's abort (`timeout` set) is sent without waiting for
            # the budget: the user is leaving; a 429 leaves it reported unaborted.
            while wait > 0 and timeout is None:
                if wait > _MAX_WAIT:
                    raise RateLimitError("%s: the API's rate limit resets in %.0f s, longer "
                                         "than the %.0f s fileslink waits" % (what, wait, _MAX_WAIT))
                _log(_WARNING if wait >= _LOUD_WAIT else _INFO,
                     "%s: rate limit budget spent; waiting %.2f s", what, wait)
                cancel.wait(wait)
                wait = self._gate.reserve()
            resp = self._send(what, n, APIError, method, self.base_url + path, headers, body,
                              cancel, repeatable=repeatable, max_body=_MAX_BODY, timeout=timeout,
                              fresh=not repeatable)
            limit = _parse_ratelimit(resp.headers)
            if limit is not None:
                self._gate.update(*limit)
            retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
            if resp.status == 429 and retry_after is not None:
                self._gate.update(0, retry_after)
            return self.interpret(what, resp, retry_after, repeatable)

        return self.retrying(attempt, what, cancel, attempts)

    def interpret(self, what: str, resp: _Response, retry_after: Optional[float],
                  repeatable: bool) -> Json:
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
        # A 429 was refused unread; any other error status may have been acted on.
        if status in _RETRY_STATUSES and (repeatable or status == 429):
            raise _Retryable(error, retry_after)
        raise error

    def redact(self, text: str) -> str:
        """A hostile or careless server may echo the key back: never pass it on."""
        return text.replace(self._key, "***") if self._key in text else text

    def put(self, url: str, source: _Source, offset: int, length: int, part: Optional[int],
            progress: Callable[[int], None], cancel: _Cancel) -> str:
        """PUT bytes [offset, offset + length) of source to a presigned URL,
        retried (each try re-reads from offset); the ETag, quotes included.
        Raises _Expired for an expired URL: only the caller can get a new one."""
        what = "PUT %s" % ("part %d of %s" % (part, source.name) if part else source.name)
        headers = {"Content-Type": source.mime_type, "User-Agent": _USER_AGENT}

        def attempt(n: int) -> str:
            payload = _Payload(source, offset, length, self.checksum, progress, cancel,
                               self.throttle)
            try:
                resp = self._send("%s to %s" % (what, _unsigned_url(url)), n,
                                  lambda text: TransferError(text, None, part), "PUT", url,
                                  headers, payload, cancel, level=_DEBUG)
                return self._etag(what, url, resp, payload.hexdigest(), part)
            except BaseException:
                payload.rewind()  # the one place a failed try takes its progress back
                raise

        return self.retrying(attempt, what, cancel)

    def _etag(self, what: str, url: str, resp: _Response, sent: Optional[str],
              part: Optional[int]) -> str:
        """The ETag of a good answer to a PUT, compared with the MD5 of the
        bytes sent where it is an MD5 at all (under SSE-KMS and SSE-C it is
        32 hex digits too, but not the MD5 [S3 docs]); otherwise the error
        the answer means. A mismatch is worth another try."""
        if not 200 <= resp.status < 300:
            text = resp.text()
            if resp.status == 403 and "expired" in text.lower():
                raise _Expired()
            error = TransferError("%s to %s: %d %s: %s" % (
                what, _unsigned_url(url), resp.status, resp.reason,
                _unsigned_text(_storage_message(text), url)), resp.status, part)
            if resp.status in _RETRY_STATUSES:
                raise _Retryable(error, _parse_retry_after(resp.headers.get("Retry-After")))
            raise error
        etag = resp.headers.get("ETag")
        if etag is not None and re.search(_CONTROL, etag):
            raise ProtocolError("%s: storage sent an ETag with control characters" % what)
        if part and not etag:
            raise ProtocolError("%s: storage answered without an ETag" % what)
        if not (sent and etag and re.match(_PLAIN_MD5, etag)):
            return etag or ""
        sse = (resp.headers.get("x-amz-server-side-encryption") or "").strip().lower()
        if sse.startswith("aws:kms") or \
                resp.headers.get("x-amz-server-side-encryption-customer-algorithm") is not None:
            _log(_DEBUG, "%s: ETag not compared: storage encrypts with SSE-KMS or SSE-C", what)
        elif etag[1:-1].lower() != sent:
            raise _Retryable(TransferError(
                "%s: storage reports MD5 %s, the bytes sent have MD5 %s; if this storage's "
                "ETags are not MD5s, upload with checksum=False"
                % (what, etag[1:-1].lower(), sent), resp.status, part))
        return etag


# ---------------------------------------------------------------------------
# Journal: resumable multipart uploads on disk
# ---------------------------------------------------------------------------
#
# A resumable upload is three files in the state directory, named by a hash
# of (base URL, folder, absolute path, name) so that running it again finds them:
#   NAME.json   the record (ids, plan, part URLs, source identity): written
#               once, when the upload is initiated;
#   NAME.parts  a header naming the upload, then one line per part stored,
#               appended and fsynced after that part's 2xx;
#   NAME.lock   held by the one process working on the upload.
# Rewriting the record for every part would write O(parts^2) bytes: for
# 10,000 parts of ~480-byte URLs, ~52 GB in ~12 minutes of fsynced rewrites
# (measured: 70 ms each). Appending writes ~60 bytes and one fsync a part.
# Part URLs are write credentials: the directory is 0700, the files 0600.

#: A journal's record file: NAME is 32 hex digits.
_JOURNAL_FILE = r"^([0-9a-f]{32})\.json$"
#: What a record holds, and the types a loaded one must have. create() refuses
#: any other field, so nothing else (the API key above all) can reach the disk.
_RECORD_FIELDS: Dict[str, Any] = {
    "version": int, "base_url": str, "folder_id": str, "file_id": str, "upload_id": str,
    "key": str, "bucket": (str, type(None)), "name": str, "mime_type": str, "size": int,
    "part_size": int, "parts": list, "source": dict, "created": (int, float),
}
#: Windows opens files in text mode unless told otherwise.
_O_BINARY = getattr(os, "O_BINARY", 0)


def _state_dir(environ: Any = os.environ) -> str:
    """Where journals live: $FILESLINK_STATE_DIR, else the user's cache directory."""
    chosen: str = environ.get(_ENV_STATE_DIR) or ""
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    if os.name == "nt":
        base = environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
    else:
        base = environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(base):  # the XDG spec: a relative path is to be ignored
            base = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fileslink")


def _source_identity(path: str) -> Json:
    """What tells, on resume, that a file is still the one the upload began with.

    Size, mtime_ns and inode catch nearly every change; a digest of the first
    and last MiB catches a rewrite that kept them (a tool that restores
    mtimes), while reading at most 2 MiB whatever the file's size.
    """
    import hashlib

    path = os.path.abspath(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest.update(f.read(_IDENTITY_SPAN))
        if st.st_size > 2 * _IDENTITY_SPAN:
            f.seek(st.st_size - _IDENTITY_SPAN)
        digest.update(f.read(_IDENTITY_SPAN))  # a small file: the rest of it
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "dev": st.st_dev, "digest": digest.hexdigest()}


def _journal_record(base_url: str, folder_id: str, identity: Json, *, file_id: str,
                    upload_id: str, key: str, bucket: Optional[str], name: str,
                    mime_type: str, size: int, part_size: int, urls: Sequence[str],
                    now: float) -> Json:
    """The record of an upload just initiated, for _Journal.create()."""
    return {"version": _JOURNAL_VERSION, "base_url": base_url, "folder_id": folder_id,
            "file_id": file_id, "upload_id": upload_id, "key": key, "bucket": bucket,
            "name": name, "mime_type": mime_type, "size": size, "part_size": part_size,
            "parts": [{"url": url, "expires": _url_expiry(url)} for url in urls],
            "source": identity, "created": now}


def _record_problem(record: Any) -> Optional[str]:
    """What is wrong with a record, or None: a hand-edited or foreign journal
    must read as absent, not fail the engine halfway through."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for field, kind in _RECORD_FIELDS.items():
        value = record.get(field)
        if isinstance(value, bool) or not isinstance(value, kind):
            return "`%s` missing or not %s" % (field, getattr(kind, "__name__", kind))
    if record["version"] != _JOURNAL_VERSION:
        return "format %r, not %d" % (record["version"], _JOURNAL_VERSION)
    count, size, part_size = len(record["parts"]), record["size"], record["part_size"]
    if part_size < 1 or -(-size // part_size) != count:  # as _parse_plan insists
        return "%d parts of %d bytes do not cover %d bytes" % (count, part_size, size)
    if not all(isinstance(p, dict) and isinstance(p.get("url"), str) for p in record["parts"]):
        return "a part without a URL"
    if not isinstance(record["source"].get("path"), str):
        return "no source path"
    return None


def _next_expiry(record: Json) -> Optional[float]:
    """When the first URL of a part still to send dies (None: none says)."""
    times = [part.get("expires") for number, part in enumerate(record["parts"], 1)
             if number not in record["etags"]]
    known = [t for t in times if isinstance(t, (int, float))]
    return min(known) if known else None


def _record_plan(record: Json) -> _Plan:
    return _Plan(record["file_id"], record["upload_id"], record["key"], record["bucket"],
                 record["size"], record["part_size"], [p["url"] for p in record["parts"]])


def _pending(record: Json) -> PendingUpload:
    return PendingUpload(record["file_id"], record["name"], record["size"],
                         len(record["etags"]), len(record["parts"]), _next_expiry(record),
                         record["folder_id"], record["source"]["path"])


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    return "%.1f h" % (seconds / 3600)


def _resume_check(record: Json, base_url: str, folder_id: str, identity: Json,
                  now: float) -> Optional[str]:
    """None if the journaled upload may be continued, else why not (one line)."""
    if record["base_url"] != base_url:
        return "it was started against %s, not %s" % (record["base_url"], base_url)
    if record["folder_id"] != folder_id:
        return "it was started in folder %s, not %s" % (record["folder_id"], folder_id)
    was = record["source"]
    # Not st_dev: device numbers may change across reboots (removable and
    # network disks), and inode + mtime + digest already name the file.
    changes = (("size", "size %s -> %s" % (was.get("size"), identity["size"])),
               ("inode", "replaced: another inode"), ("mtime_ns", "modified"),
               ("digest", "its start or end differs"))
    for field, what in changes:
        if was.get(field) != identity[field]:
            return "the file changed since the upload began (%s)" % what
    expires = _next_expiry(record)
    if expires is not None and expires - now < _RESUME_MARGIN:
        left = len(record["parts"]) - len(record["etags"])
        when = ("expired %s ago" % _duration(now - expires) if expires <= now
                else "expire in %s" % _duration(expires - now))
        return "the URLs of its %d part%s left %s" % (left, "" if left == 1 else "s", when)
    return None


def _write_atomic(path: str, data: bytes) -> None:
    """Replace `path` by `data`: a crash leaves the old file or the new, never half."""
    import tempfile

    directory = os.path.dirname(path)
    # mkstemp creates the file 0600, whatever the umask: it holds part URLs.
    fd, temp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                dir=directory)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        _unlink(temp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Make a rename or a removal durable: on POSIX it lives in the directory."""
    if os.name == "nt":  # a directory cannot be opened; NTFS journals its metadata
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _prepare_state_dir(directory: str) -> None:
    """Make the state directory (0700; one that exists keeps its mode: it may
    be /tmp) and prove it writable, so that --resume fails before any API call."""
    import tempfile

    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = "not a directory" if isinstance(exc, FileExistsError) else (
            exc.strerror or str(exc))
        raise ConfigError("cannot keep resumable-upload journals in %s (%s); set %s to a "
                          "writable directory (on AWS Lambda: one under /tmp)"
                          % (directory, reason, _ENV_STATE_DIR)) from exc


def _lock(fd: int, path: str, what: str) -> None:
    """Lock the open file `fd` exclusively and write our pid in it, or say who
    holds it (ConfigError)."""
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)  # one byte at 0, never written: the pid starts at 1
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if not (isinstance(exc, BlockingIOError) or sys.platform == "win32"):
            # ENOLCK: a network file system without locks
            raise ConfigError("cannot lock %s (%s); set %s to a local directory"
                              % (path, exc.strerror or exc, _ENV_STATE_DIR)) from exc
        os.lseek(fd, 1, os.SEEK_SET)
        pid = os.read(fd, 20).strip().decode("ascii", "replace") or "unknown"
        raise ConfigError("%s is being uploaded by another fileslink process (pid %s)"
                          % (what, pid)) from None
    os.lseek(fd, 1, os.SEEK_SET)
    try:
        os.write(fd, b"%-19d\n" % os.getpid())  # for the refusal message
    except OSError as exc:  # a full disk: say where, before any API call
        raise ConfigError("cannot write in %s (%s); set %s to a writable directory"
                          % (os.path.dirname(path), exc.strerror or exc, _ENV_STATE_DIR)) from exc


def _lock_journal(path: str, what: str) -> int:
    """The descriptor of the lock file `path`, locked. remove() unlinks it under
    the lock: a process that opened it just before holds a lock on a file no
    longer there, and tries again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_BINARY, 0o600)
        try:
            _lock(fd, path, what)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass  # unlinked since we opened it
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _log_header(upload_id: str) -> bytes:
    """The first line of a parts log: whose parts the lines after it are."""
    import json

    return json.dumps({"upload_id": upload_id}).encode() + b"\n"


def _read_journal(directory: str, name: str) -> Optional[Json]:
    """A journal's record with its `etags`, or None (absent, or unreadable)."""
    import json

    path = os.path.join(directory, name + ".json")
    try:
        with open(path, "rb") as f:
            record: Json = json.loads(f.read())
        problem = _record_problem(record)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problem = str(exc)
    if problem is not None:
        _log(_DEBUG, "ignoring the journal %s: %s", path, problem)
        return None
    etags: Dict[int, str] = {}
    record["etags"] = etags
    try:
        with open(os.path.join(directory, name + ".parts"), "rb") as f:
            log = f.read()
    except FileNotFoundError:
        return record
    header = _log_header(record["upload_id"])
    if not log.startswith(header):
        return record  # the log of an earlier upload: create() crashed halfway
    for line in log[len(header):].split(b"\n")[:-1]:  # the last, unterminated, is torn
        try:
            entry = json.loads(line)
        except ValueError:  # torn by a crash, or garbage: that part is sent again
            continue
        number = entry.get("n") if isinstance(entry, dict) else None
        if isinstance(number, int) and 1 <= number <= len(record["parts"]) and isinstance(
                entry.get("etag"), str):
            etags[number] = entry["etag"]
    return record


class _Journal:
    """The journal of one resumable upload, held under an exclusive lock.

    open() and claim() lock (or refuse); load() reads; create(), add_part()
    and remove() write, each durably before it returns; close() unlocks.
    """

    def __init__(self, directory: str, name: str, what: str) -> None:
        self.directory, self.name = directory, name
        self._lock_fd: Optional[int] = _lock_journal(self._path(".lock"), what)
        self._lock = threading.Lock()  # add_part() may be called from many threads
        self._removed = False
        self._sweep()

    @classmethod
    def open(cls, directory: str, base_url: str, folder_id: str, path: str,
             name: str = "") -> _Journal:
        """The journal of uploading `path` as `name` (one path under two names
        is two uploads) to `folder_id` at `base_url`, locked; ConfigError if the
        directory cannot hold journals, or another process is working on it."""
        import hashlib
        import json

        directory, path = os.path.abspath(directory), os.path.abspath(path)
        _prepare_state_dir(directory)
        key = json.dumps([base_url, folder_id, path, name]).encode("utf-8", "surrogatepass")
        return cls(directory, hashlib.sha256(key).hexdigest()[:32], path)

    @staticmethod
    def _scan(directory: str) -> List[Tuple[str, Json]]:
        try:
            filenames = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for filename in filenames:
            match = re.match(_JOURNAL_FILE, filename)
            if match is None:
                continue
            record = _read_journal(directory, match.group(1))
            if record is not None:
                found.append((match.group(1), record))
        return found

    @classmethod
    def entries(cls, directory: str) -> List[Json]:
        """Every journal in `directory`, loaded without locking (for `pending`)."""
        return [record for _, record in cls._scan(directory)]

    @classmethod
    def claim(cls, directory: str, file_id: str) -> Optional[_Journal]:
        """The journal of file `file_id`, locked (for abort), or None if none;
        ConfigError if a process is uploading it right now."""
        directory = os.path.abspath(directory)
        for name, record in cls._scan(directory):
            if record["file_id"] == file_id:
                journal = cls(directory, name, record["source"]["path"])
                again = journal.load()  # it may have completed before we locked it
                if again is not None and again["file_id"] == file_id:
                    return journal
                journal.close()
        return None

    def _path(self, suffix: str) -> str:
        return os.path.join(self.directory, self.name + suffix)

    def _sweep(self) -> None:
        """Remove the temp files a crash left between write and rename."""
        for filename in os.listdir(self.directory):
            if filename.startswith(self.name + ".") and filename.endswith(".tmp"):
                _unlink(os.path.join(self.directory, filename))

    def load(self) -> Optional[Json]:
        """The record, with `etags` ({part number: ETag} of the parts stored),
        or None if there is none (or it is corrupt: a DEBUG log says so)."""
        return _read_journal(self.directory, self.name)

    def create(self, record: Json) -> None:
        """Start the journal of an upload just initiated (see _journal_record)."""
        import json

        problem = _record_problem(record)
        extra = set(record) - set(_RECORD_FIELDS)
        if problem or extra:
            raise ValueError("not a journal record: %s" % (problem or "fields %s" % sorted(extra)))
        with self._lock:
            # The parts log first: a crash between the two writes leaves the old
            # record beside a log that names another upload, which load() ignores.
            try:
                _write_atomic(self._path(".parts"), _log_header(record["upload_id"]))
                _write_atomic(self._path(".json"), json.dumps(record).encode())
            except OSError as exc:  # say where: "No space left" alone reads as files.link's
                raise OSError(exc.errno, "%s (writing the resume journal in %s)"
                              % (exc.strerror, self.directory)) from exc
            self._removed = False

    def add_part(self, number: int, etag: str) -> None:
        """Record part `number` as stored: call it after the part's 2xx, and
        count the part done only once it returns. OSError if the disk refuses."""
        import json

        line = json.dumps({"n": number, "etag": etag}).encode() + b"\n"
        with self._lock:
            fd = os.open(self._path(".parts"), os.O_RDWR | os.O_APPEND | _O_BINARY)
            try:
                # A crash (or a full disk) mid-append left a torn line: end it, or
                # it would swallow this one. load() skips it as garbage.
                os.lseek(fd, max(0, os.fstat(fd).st_size - 1), os.SEEK_SET)
                if os.read(fd, 1) not in (b"", b"\n"):
                    line = b"\n" + line
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self) -> None:
        """Delete the journal (the upload completed or was aborted); the lock
        file goes at close(). Best effort: the upload is over at files.link,
        and a state directory gone read-only or removed must not turn a
        completed upload into a failed run."""
        with self._lock:
            try:
                _unlink(self._path(".json"))  # first: the rest means nothing without it
                _unlink(self._path(".parts"))
                self._sweep()
                _fsync_dir(self.directory)
            except FileNotFoundError:
                pass  # the state directory is gone, and the journal with it
            except OSError as exc:
                _log(_WARNING, "could not remove the resume journal %s: %s",
                     self._path(".json"), exc.strerror or exc)
            self._removed = True

    def close(self) -> None:
        """Release the lock; the journal stays on disk unless removed."""
        if self._lock_fd is None:
            return
        # The lock file goes last, still locked: a journal removed, then created
        # again (its URLs expired early), must refuse a second process meanwhile.
        if self._removed and os.name != "nt":  # Windows cannot remove an open file
            _unlink(self._path(".lock"))
        os.close(self._lock_fd)  # closing it releases the lock
        self._lock_fd = None

    def __enter__(self) -> _Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Engine: the jobs of one upload, and the coordinator that runs them
# ---------------------------------------------------------------------------


#: What _abort returns for an upload left open, journaled, to be resumed.
_KEPT = "kept to be resumed"


def _fd_room(workers: int, batch_size: int) -> Tuple[int, int]:
    """Workers, and files per presign batch, that the open-file limit leaves
    room for. Each worker may hold a socket, an idle one and a file or two
    admitted ahead of it; a batch of small files is open while it is
    presigned. Under a low limit (`ulimit -n 40`) both shrink: more calls,
    but files that open."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return workers, batch_size  # no such limit here (Windows)
    if soft == resource.RLIM_INFINITY:
        return workers, batch_size
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = _SPARE_FDS
    room = soft - used - min(_SPARE_FDS, soft // 4)  # the application's share stays free
    fit_workers = min(workers, max(1, room // 8))
    fit_batch = min(batch_size, max(1, room - 4 * fit_workers))
    if (fit_workers, fit_batch) != (workers, batch_size):
        _log(_INFO, "max_workers %d capped to %d and batches of %d files to %d: the "
             "open-file limit (RLIMIT_NOFILE) is %d", workers, fit_workers, batch_size,
             fit_batch, soft)
    return fit_workers, fit_batch


class _Job:
    """One file of a transfer: where it goes, how far it got, how it ended."""

    def __init__(self, index: int, source: _Source, cancel: _Cancel,
                 progress: Optional[Progress]) -> None:
        self.index, self.source = index, source
        self.cancel = _Cancel(cancel)
        self.file_id = self.url = self.s3_key = ""
        self.plan: Optional[_Plan] = None
        self.etags: Dict[int, str] = {}
        #: Parts (or, for a single PUT, [None]) not yet handed to a worker.
        self.todo: Deque[Optional[int]] = collections.deque([None])
        self.inflight = 0  # tasks handed to a worker and not yet reaped
        self.error: Optional[BaseException] = None
        self.batch: List[_Job] = []  # presigned (and so confirmed) together
        self.initiated = 0.0  # when the part URLs were handed out (monotonic)
        self.expired_tries = 0
        #: Parts handed out before this run stored any: if one of them meets an
        #: expired URL, the URLs were dead on arrival (a clock skew, a stall, a
        #: resumed journal's URLs that storage's clock calls dead).
        self.early: Set[Optional[int]] = set()
        self.stored_here = 0
        self.restart = False  # its part URLs expired early: initiate again once idle
        self.resumable = False  # its journal holds a record a rerun could resume
        self.lifetime: Optional[Tuple[float, float]] = None  # of its part URLs: (signed, s)
        self.journal: Optional[_Journal] = None  # with resume on, for a path
        self.warned = False
        self._progress = progress
        self._sent = 0
        self._lock = threading.Lock()  # guards _sent: parts report from many workers

    def add_progress(self, delta: int) -> None:
        with self._lock:
            self._sent += delta
            sent = self._sent
        if self._progress is not None:  # outside the lock: a slow callback must not serialize
            self._progress(self.source.name, sent, self.source.size)

    def sent(self) -> int:
        with self._lock:
            return self._sent


class _Transfer:
    """One upload_many() (or upload()).

    The caller's thread coordinates: it presigns a batch of small files
    when the workers would run dry, initiates big files one at a time (their
    part URLs start to age when they are handed out), hands PUTs (whole
    files and parts, by turns, so small files never wait behind a big one)
    to a thread pool, confirms each batch as soon as its files are in, and
    completes each multipart upload as its last part lands. Nothing is held
    for the sources not reached yet, so 10,000 files cost what 100 do.

    Each initiated multipart upload is completed or aborted exactly once:
    it is in `open_uploads` from _initiate until _complete or _abort takes
    it out, and _stop aborts whatever is still there.
    """

    def __init__(self, api: _API, workers: int, threshold: int, batch_size: int,
                 folder_id: str, progress: Optional[Progress], link: bool,
                 on_file: Optional[Callable[[int, Any], None]], skip_existing: bool,
                 resume: bool) -> None:
        self.api, self.threshold = api, threshold
        self.workers, self.batch_size = _fd_room(workers, batch_size)
        self.folder, self.progress, self.link, self.on_file = folder_id, progress, link, on_file
        self.skip_existing, self.resume = skip_existing, resume
        self.state_dir = _state_dir() if resume else ""
        self.existing: Dict[Tuple[str, int], UploadedFile] = {}
        self.kept: Set[Tuple[str, str]] = set()  # (path, name) of each journal of this folder
        self.cancel = _Cancel()
        #: Tasks handed to a worker: at most `workers`, and the only record of them.
        self.futures: Dict[Future[str], Tuple[_Job, Optional[int]]] = {}
        # Each task, once done, is put here by its worker.  Not
        # concurrent.futures.wait(): it takes the futures' locks one by one in
        # Python code, and a Ctrl-C or SIGTERM raised between two of them left
        # a lock held, so a worker's set_result, and so the exit, hung for good.
        # SimpleQueue.get is C code: a signal interrupts it cleanly.
        import queue

        self.done: SimpleQueue[Future[str]] = queue.SimpleQueue()
        self.singles: Deque[_Job] = collections.deque()  # presigned, not yet handed out
        self.parts: Deque[_Job] = collections.deque()  # initiated, parts not all handed out
        self.waiting: Deque[_Job] = collections.deque()  # big files opened, not yet initiated
        self.open_uploads: Set[_Job] = set()  # initiated, neither completed nor aborted
        self.live: Set[_Job] = set()  # jobs whose source is open
        self.results: List[Any] = []
        self.failures: List[Tuple[int, str, BaseException]] = []
        self.exhausted = False  # the caller's items are all read
        self._parts_turn = False  # whole files and parts take turns for a free worker
        self.on_file_failed = False

    # -- the loop -----------------------------------------------------------

    def execute(self, items: Iterable[Any]) -> List[Any]:
        import concurrent.futures

        # No thread starts until the first task is handed out.
        self.pool: ThreadPoolExecutor = concurrent.futures.ThreadPoolExecutor(
            self.workers, "fileslink")
        numbered = enumerate(items)
        try:
            if self.resume:  # a journal that cannot be written fails before any call
                _prepare_state_dir(self.state_dir)
                self.kept = {(r["source"]["path"], r["name"])
                             for r in _Journal.entries(self.state_dir)
                             if (r["base_url"], r["folder_id"]) == (self.api.base_url, self.folder)}
            if self.skip_existing:  # one listing, however many files
                self.existing = _index_existing(self.api.list_files(self.folder))
            while self._fill(numbered) or self.futures:
                self._reap()
        except BaseException as exc:
            # Set first: should a second Ctrl-C cut _stop short, the workers
            # still end, and the pool below is not waited for.
            self.cancel.set()
            self._stop(exc)
            raise
        finally:
            self.pool.shutdown(wait=not self.cancel.is_set())
        return self.results

    def _fill(self, numbered: Iterator[Tuple[int, Any]]) -> bool:
        """Hand tasks to free workers, admitting sources as needed; whether
        any work is left that no worker has yet."""
        while len(self.futures) < self.workers:
            if self.waiting and not self.parts:
                self._initiate(self.waiting.popleft())
            elif not self.exhausted and len(self.singles) < self.workers \
                    and len(self.waiting) < self.workers:
                self._admit(numbered)
            elif self.singles or self.parts:
                self._parts_turn = bool(self.parts) and (not self.singles or not self._parts_turn)
                self._submit(self.parts if self._parts_turn else self.singles)
            else:
                break
        return bool(self.singles or self.parts or self.waiting or not self.exhausted)

    def _submit(self, queue: Deque[_Job]) -> None:
        job = queue[0]
        number = job.todo.popleft()
        if not job.todo:
            queue.popleft()
        job.inflight += 1
        if not job.stored_here:
            job.early.add(number)
        future = self.pool.submit(self._put, job, number)
        self.futures[future] = (job, number)
        future.add_done_callback(self.done.put)

    def _put(self, job: _Job, number: Optional[int]) -> str:
        """Runs in a worker: one PUT, retried; the ETag."""
        job.cancel.check()
        try:
            if job.plan is None:
                return self._put_single(job)
            offset, length = job.plan.span(number or 0)
            return self.api.put(job.plan.urls[(number or 0) - 1], job.source, offset, length,
                                number, job.add_progress, job.cancel)
        except (OSError, FilesLinkError):
            job.cancel.set()  # siblings stop now, not when the coordinator wakes
            raise

    def _put_single(self, job: _Job) -> str:
        """PUT a whole file; presign it again if its URL expired. Its ETag."""
        presigned = 1
        while True:
            try:
                return self.api.put(job.url, job.source, 0, job.source.size, None,
                                    job.add_progress, job.cancel)
            except _Expired:
                if presigned > _EXPIRED_RETRIES:
                    raise TransferError("the presigned URL for %s kept expiring before the "
                                        "upload ended (presigned %d times); check the machine's "
                                        "clock" % (job.source.name, presigned), 403) from None
            _log(_INFO, "%s: presigned URL expired; presigning again", job.source.name)
            # A new id: the old row stays unconfirmed, and so invisible.
            job.file_id, job.url, job.s3_key = self.api.presign(
                self.folder, [job.source], job.cancel)[0]
            presigned += 1

    def _admit(self, numbered: Iterator[Tuple[int, Any]]) -> None:
        """Open the next sources: small ones are presigned as a batch, big
        ones wait for their turn to be initiated."""
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
            # Ended here: an UploadedFile (skipped, already there) or an error.
            outcome: Any = self.existing.get((source.name, source.size))
            big = 0 < source.size >= self.threshold
            if outcome is not None or not big:
                try:
                    self._drop_kept(source, "it is in the folder already" if outcome else
                                    "it is now sent in one PUT")
                except (OSError, FilesLinkError) as exc:
                    outcome = exc
            if outcome is not None:
                source.close()
                self._record(index, source.name, outcome)
                continue
            job = _Job(index, source, self.cancel, self.progress)
            self.live.add(job)
            if big:
                self.waiting.append(job)
                break
            batch.append(job)
        if batch and self._step(batch, lambda: self._presign(batch)):
            self.singles.extend(batch)

    def _drop_kept(self, source: _Source, why: str) -> None:
        """A kept upload of this file that no run will continue (the file is
        skipped, or small enough now for one PUT) is aborted, not left billed."""
        if source.path is None or (os.path.abspath(source.path), source.name) not in self.kept:
            return
        with _Journal.open(self.state_dir, self.api.base_url, self.folder, source.path,
                           source.name) as journal:
            record = journal.load()
            if record is not None:
                _log(_WARNING, "%s: not resumed, %s: its kept multipart upload is aborted",
                     source.name, why)
                self.api.abort(_record_plan(record).ids())
                journal.remove()

    def _step(self, jobs: List[_Job], step: Callable[[], None]) -> bool:
        """Run one API step for `jobs`; whether it worked. An error that
        ends the whole run propagates; any other fails these jobs only."""
        try:
            step()
        except _RUN_FATAL:
            raise
        except (FilesLinkError, OSError) as exc:  # OSError: a journal or a source
            for job in jobs:
                if job in self.open_uploads:
                    self._abort(job)
                self._finish(job, exc)
            return False
        return True

    def _presign(self, batch: List[_Job]) -> None:
        entries = self.api.presign(self.folder, [j.source for j in batch], self.cancel)
        for job, (file_id, url, s3_key) in zip(batch, entries):
            job.file_id, job.url, job.s3_key, job.batch = file_id, url, s3_key, batch

    def _initiate(self, job: _Job) -> None:
        if self._step([job], lambda: self._open_upload(job)):
            if job.todo:
                self.parts.append(job)
            else:  # resumed with every part stored: only complete is left
                self._settle(job)

    def _open_upload(self, job: _Job) -> None:
        path = job.source.path
        identity: Json = {}
        if self.resume and path is not None:
            identity = self._identity(job.source)
            if job.journal is None:
                job.journal = _Journal.open(self.state_dir, self.api.base_url, self.folder,
                                            path, job.source.name)
                job.plan = self._resumed_plan(job, identity)
                job.resumable = job.plan is not None
        if job.plan is None:
            job.plan = self.api.initiate(self.folder, job.source, self.cancel)
            job.initiated = time.monotonic()
        # Open from here on, and kept open only while a journal record of it
        # exists: one that cannot be written (a full disk) aborts it.
        self.open_uploads.add(job)
        if job.journal is not None and not job.resumable:
            job.journal.create(_journal_record(
                self.api.base_url, self.folder, identity,
                file_id=job.plan.file_id, upload_id=job.plan.upload_id, key=job.plan.key,
                bucket=job.plan.bucket, name=job.source.name, mime_type=job.source.mime_type,
                size=job.source.size, part_size=job.plan.part_size, urls=job.plan.urls,
                now=time.time()))
            job.resumable = True
        job.file_id, job.s3_key = job.plan.file_id, job.plan.key
        job.lifetime = _url_lifetime(job.plan.urls[-1])  # handed out together: one lifetime
        job.todo = collections.deque(n for n in range(1, len(job.plan.urls) + 1)
                                     if n not in job.etags)

    @staticmethod
    def _identity(source: _Source) -> Json:
        """The identity of the file a journal will name, which must be the
        file opened: a path removed or replaced since would record (or
        resume) another file's bytes."""
        assert source.path is not None
        try:
            identity = _source_identity(source.path)
        except OSError as exc:
            raise SourceChangedError("%s is gone since it was opened (%s)"
                                     % (source.name, exc.strerror or exc)) from None
        if source.stamp() != (identity["inode"], identity["size"], identity["mtime_ns"]):
            raise SourceChangedError("%s was replaced or modified since it was opened"
                                     % source.name)
        return identity

    def _resumed_plan(self, job: _Job, identity: Json) -> Optional[_Plan]:
        """The plan a journal holds for this upload, if it may be continued;
        a journal that may not is aborted (best effort) and dropped."""
        assert job.journal is not None
        record = job.journal.load()
        if record is None:
            return None
        reason = _resume_check(record, self.api.base_url, self.folder, identity, time.time())
        if reason is None and (record["name"], record["mime_type"]) != (
                job.source.name, job.source.mime_type):
            reason = "it was started under another name or type"
        plan = _record_plan(record)
        if reason is not None:
            _log(_WARNING, "%s: not resumed, uploading afresh: %s", job.source.name, reason)
            self.api.abort(plan.ids())
            job.journal.remove()
            return None
        job.etags = dict(record["etags"])
        job.add_progress(sum(plan.span(n)[1] for n in job.etags))  # progress ends at the size
        job.initiated = time.monotonic() - max(0.0, time.time() - record["created"])
        _log(_INFO, "%s: resuming: %d of %d parts already stored", job.source.name,
             len(job.etags), len(plan.urls))
        return plan

    # -- the coordinator's decisions ------------------------------------------

    def _reap(self) -> None:
        """Act on the next task to end; wake at least once a second to see
        whether a multipart upload runs late."""
        import queue
        from concurrent.futures import CancelledError

        try:
            future = self.done.get(timeout=1.0)
        except queue.Empty:
            future = None
        if future is not None:
            job, number = self.futures.pop(future)
            job.inflight -= 1
            try:
                etag = future.result()
            except (CancelledError, _Cancelled):
                pass  # the job failed already, or the run is stopping
            except _Expired:
                self._part_expired(job, number)
            except (OSError, FilesLinkError) as exc:
                self._fail(job, exc)
            else:
                if number is not None:
                    self._stored(job, number, etag)
                else:
                    self._sent_whole(job)
            self._settle(job)
        for job in list(self.open_uploads):
            self._warn_if_late(job)

    def _sent_whole(self, job: _Job) -> None:
        """A whole file is in: check it did not change, and close it now, not
        when its batch is confirmed: 50 finished files must not hold 50
        descriptors while the slowest of their batch is still sent."""
        try:
            job.source.check_unchanged()
        except SourceChangedError as exc:
            self._fail(job, exc)
        job.source.close()

    def _stored(self, job: _Job, number: int, etag: str) -> None:
        """Count a part as stored: with resume on, only once its journal
        record is on disk, so a crash now never loses what it claims."""
        if job.journal is not None:
            try:
                job.journal.add_part(number, etag)
            except OSError as exc:  # a full disk: the upload cannot be resumed, so it ends
                self._fail(job, TransferError("%s: part %d could not be recorded in the resume "
                                              "journal in %s: %s" % (
                                                  job.source.name, number, self.state_dir,
                                                  exc.strerror or exc), None, number))
                return
        job.etags[number] = etag
        job.stored_here += 1

    def _settle(self, job: _Job) -> None:
        """Whatever a job's last reaped task leaves it ready for."""
        if job.plan is None:
            self._batch_done(job.batch)
        elif job.inflight or job.todo:
            return
        elif job.error is not None:
            if job in self.open_uploads:
                self._abort(job)  # only once no part of it is still being sent
            self._finish(job, job.error)
        elif job.restart:
            self._reinitiate(job)
        elif len(job.etags) == len(job.plan.urls):
            self._complete(job)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        """A task of `job` failed for good: stop its other tasks now."""
        if job.error is not None:
            return
        job.error = exc
        self._withdraw(job)  # a task of it not yet started raises _Cancelled at once
        if job.plan is None:
            self._finish(job, exc)

    def _withdraw(self, job: _Job) -> None:
        job.cancel.set()  # the tasks running now; then those not handed out
        job.todo.clear()
        for queue in (self.singles, self.parts):
            if job in queue:
                queue.remove(job)

    def _part_expired(self, job: _Job, number: Optional[int]) -> None:
        """Storage refused a part URL as expired. Dead on arrival (a clock
        skew, a stalled start), the upload is initiated again, a bounded
        number of times; later, nothing can save it: files.link cannot
        re-sign one part."""
        if job.restart:
            return  # a sibling part told the news already
        if number in job.early and job.expired_tries < _EXPIRED_RETRIES:
            job.expired_tries += 1
            job.restart = True
            self._withdraw(job)  # the other parts' URLs are as old
            return
        job.resumable = False  # a journal of dead URLs could not be resumed
        self._fail(job, TransferError(
            "the presigned URL of part %d of %s expired after the upload had run %s (the "
            "URLs' lifetime is %s); the multipart upload was aborted" % (
                number or 0, job.source.name, _duration(time.monotonic() - job.initiated),
                _duration(job.lifetime[1]) if job.lifetime else "not stated"), 403, number))

    def _reinitiate(self, job: _Job) -> None:
        if len(job.etags) > job.stored_here:  # resumed: the user must hear why not
            _log(_WARNING, "%s: not resumed, uploading afresh: storage refused its part URLs "
                 "as expired", job.source.name)
        else:
            _log(_INFO, "%s: part URLs expired before any part was stored; initiating again",
                 job.source.name)
        self._abort(job, keep=False)
        if job.journal is not None:  # its lock file went with it: lock anew, or lose the lock
            job.journal.close()
            job.journal = None
        job.restart, job.plan, job.resumable = False, None, False
        job.etags, job.early, job.stored_here = {}, set(), 0
        job.add_progress(-job.sent())
        job.cancel.detach()
        job.cancel = _Cancel(self.cancel)
        self._initiate(job)

    def _warn_if_late(self, job: _Job) -> None:
        """Warn, once, when the rate so far says the last part cannot start
        before the part URLs expire: better now than after hours."""
        assert job.plan is not None
        lifetime = job.lifetime
        elapsed = time.monotonic() - job.initiated
        if job.warned or lifetime is None or elapsed < 1.0:
            return
        rate = job.sent() / elapsed
        left = job.source.size - job.plan.span(len(job.plan.urls))[1] - job.sent()
        if rate > 0 and elapsed + left / rate > lifetime[1]:
            job.warned = True
            _log(_WARNING, "%s: its part URLs expire %s after they were issued; at %.1f MiB/s "
                 "the last part would start after %s, so the upload will likely fail",
                 job.source.name, _duration(lifetime[1]), rate / 1048576,
                 _duration(elapsed + left / rate))

    def _batch_done(self, batch: List[_Job]) -> None:
        if any(j.error is None and (j.inflight or j.todo) for j in batch):
            return  # some file of the batch is still queued or being sent
        good = [j for j in batch if j.error is None and self.results[j.index] is None]
        if good and self._step(good, lambda: self.api.confirm([j.file_id for j in good],
                                                              self.cancel)):
            for job in good:
                self._succeed(job)

    def _complete(self, job: _Job) -> None:
        def complete() -> None:
            assert job.plan is not None
            job.source.check_unchanged()
            self.api.complete(job.plan, job.etags, self.cancel)

        if self._step([job], complete):
            self.open_uploads.discard(job)
            if job.journal is not None:
                job.journal.remove()
            self._succeed(job)

    def _abort(self, job: _Job, timeout: Optional[float] = None,
               keep: bool = True) -> Optional[str]:
        """End an open multipart upload that will not be completed (the only
        caller of api.abort for one); None if aborted, else why not. With
        resume on and `keep`, it is left open on purpose, journaled."""
        assert job.plan is not None
        self.open_uploads.discard(job)
        if keep and job.resumable:
            _log(_INFO, "%s: multipart upload kept, to be resumed", job.source.name)
            return _KEPT
        error = self.api.abort(job.plan.ids(), timeout)
        reason = None if error is None else str(error) or "cancelled"
        if job.journal is not None:
            job.journal.remove()
        return reason

    def _succeed(self, job: _Job) -> None:
        source = job.source
        result = UploadedFile(job.file_id, source.name, source.size, source.mime_type,
                              job.s3_key, job.plan is not None)
        if self.link:
            try:
                result = result._replace(url=self.api.link(job.file_id))
            except AuthError:
                raise
            except FilesLinkError as exc:  # the bytes are there: say so
                self._finish(job, APIError("%s was uploaded (id %s) but its link was not "
                                           "created: %s" % (source.name, job.file_id, exc),
                                           getattr(exc, "status", None)))
                return
        self._finish(job, result)

    def _finish(self, job: _Job, outcome: Any) -> None:
        if isinstance(outcome, BaseException) and job.error is None:
            job.error = outcome
        job.source.close()
        if job.journal is not None:
            job.journal.close()
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
            _log(_INFO, "%s %s as %s", "skipped" if outcome.skipped else "uploaded", name,
                 outcome.id)
        if self.on_file is not None and not self.on_file_failed:
            try:
                self.on_file(index, outcome)
            except BaseException:
                self.on_file_failed = True  # not called again while the run stops
                raise

    def _stop(self, exc: BaseException) -> None:
        """The run ends early (Ctrl-C, SIGTERM, a fatal error, a closed
        stdout): stop every worker now, abort every multipart upload left
        open, and tell on_file of each file cut short."""
        self.cancel.set()
        for future in self.futures:
            future.cancel()  # 3.8 has no shutdown(cancel_futures=True)
        timeout = None if isinstance(exc, Exception) else _ABORT_TIMEOUT
        failed: Dict[_Job, Optional[str]] = {}

        def abort(job: _Job) -> None:
            failed[job] = "the abort did not end"  # until it did
            failed[job] = self._abort(job, timeout)

        # All at once: after Ctrl-C the user waits for the slowest abort, not for the sum.
        threads = [threading.Thread(target=abort, args=(job,), daemon=True)
                   for job in sorted(self.open_uploads, key=lambda j: j.index)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for job in sorted(self.live, key=lambda j: j.index):
            text = "upload of %s stopped" % job.source.name
            aborted: Optional[bool] = None
            kept = failed.get(job) is _KEPT
            if kept:
                text += "; its multipart upload was kept, to be resumed"
            elif job in failed:
                aborted = failed[job] is None
                text += "; its multipart upload %s" % (
                    "was aborted" if aborted else "could not be aborted: %s" % failed[job])
            try:
                self._finish(job, _Stopped(text, aborted, kept))
            except Exception:  # noqa: S110 - on_file failing too must not hide `exc`
                pass


def _item_name(item: Any) -> str:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0]
    if isinstance(item, (str, os.PathLike)):
        return _clean_name(os.fsdecode(os.fspath(item)))
    return str(getattr(item, "name", "<%s>" % type(item).__name__))


# ---------------------------------------------------------------------------
# Client: the public facade
# ---------------------------------------------------------------------------


def _check_number(label: str, value: Any, whole: bool = True) -> None:
    """ConfigError unless `value` is a finite number above 0 (a whole one if `whole`)."""
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
            or not 0 < value < float("inf"):  # NaN fails both
        raise ConfigError("%s must be %s, not %r" % (
            label, "a whole number >= 1" if whole else "a finite number > 0", value))


def _payload(response: Json) -> Any:
    return response.get("data", response)


class Client:
    """A files.link client: configuration, connections and the rate-limit budget.

    Args:
        api_key: default $FILESLINK_KEY.
        base_url: default $FILESLINK_BASE_URL, else https://api.files.link.
        timeout: seconds per socket operation, and the most one answer may
            take to arrive whole (a server that trickles is given up on).
        retry: a Retry; None -> Retry().
        max_workers: parallel PUTs (parts, or files in upload_many); fewer
            when the open-file limit (RLIMIT_NOFILE) would not allow them.
        multipart_threshold: files of at least this many bytes go multipart.
        ssl_context: for the API and presigned URLs alike (a corporate CA).
        allow_insecure: permit plain http to a host other than loopback;
            default $FILESLINK_ALLOW_INSECURE=1.
        checksum: check the bytes sent against storage's ETag where it is
            their MD5 (about 1 s of CPU per GiB); False sends at wire speed.
        batch_size: files per presign and per confirm call in upload_many.
        max_bandwidth: bytes per second across all workers; None: no limit.

    The constructor only validates and stores: no network, no threads. A
    Client is safe to share between threads and survives os.fork() (the
    child opens its own connections).
    """

    def __init__(self, api_key: Optional[str] = None, base_url: Optional[str] = None,
                 timeout: float = 60.0, retry: Optional[Retry] = None, max_workers: int = 8,
                 multipart_threshold: int = 100 * 1024 * 1024,
                 ssl_context: Optional[ssl.SSLContext] = None, *,
                 allow_insecure: Optional[bool] = None, checksum: bool = True,
                 batch_size: Optional[int] = None,
                 max_bandwidth: Optional[float] = None) -> None:
        key = os.environ.get(_ENV_KEY, "") if api_key is None else api_key
        if not isinstance(key, str) or not key:
            raise ConfigError("no API key: set %s to your files.link API key" % _ENV_KEY)
        if re.search(_CONTROL, key) or key != key.strip() or not key.isascii():
            raise ConfigError("the API key contains a newline, a control character, "
                              "surrounding spaces or characters that are not ASCII (quotes "
                              "pasted from a page?); check how it was set")
        base = (base_url or os.environ.get(_ENV_BASE_URL) or _DEFAULT_BASE_URL).rstrip("/")
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment or re.search(_CONTROL, base):
            raise ConfigError("base_url must be an http(s) URL with a host, not %r" % base)
        if allow_insecure is None:
            allow_insecure = os.environ.get(_ENV_INSECURE, "") == "1"
        loopback = _is_loopback(parts.hostname)
        if parts.scheme == "http" and not (loopback or allow_insecure):
            raise ConfigError("refusing plain http to %s: the API key and your files would "
                              "cross the network unencrypted (set %s=1, or pass "
                              "allow_insecure=True, to permit it)" % (parts.hostname, _ENV_INSECURE))
        _check_number("max_workers", max_workers)
        _check_number("multipart_threshold", multipart_threshold)
        _check_number("timeout", timeout, whole=False)
        if batch_size is not None:
            _check_number("batch_size", batch_size)
        if max_bandwidth is not None:
            _check_number("max_bandwidth", max_bandwidth, whole=False)
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
        self.max_bandwidth = max_bandwidth
        self._batch_size = batch_size or int(_ASSUMED["batch_size"])
        self._transport = _Transport(self.timeout, ssl_context, max_workers + _SPARE_CONNECTIONS)
        self._api = _API(key, base, self._transport, self.retry, self.checksum,
                         bool(allow_insecure) or (parts.scheme == "http" and loopback),
                         _Throttle(max_bandwidth) if max_bandwidth else None)

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
               progress: Optional[Progress] = None, link: bool = False,
               resume: bool = False) -> UploadedFile:
        """Upload one file and return it.

        Args:
            source: a path, bytes, or a binary file object; one that cannot
                seek (a pipe, a FIFO) is read to its end first.
            folder_id: default $FILESLINK_FOLDER.
            name: default the file's own (required for bytes and nameless streams).
            mime_type: default guessed from the name.
            progress: progress(name, sent, total), called from worker threads.
            link: also create a permanent public link (UploadedFile.url).
            resume: a multipart upload of a path that stops before it
                completes is left open and journaled; run again, it sends
                only the parts not yet stored (README: "Resuming").

        Raises:
            OSError: the local file is missing, a directory or unreadable.
            ConfigError: a source that cannot be uploaded (a device, a
                text-mode stream), or a bad option.
            FilesLinkError: see the subclasses; a multipart upload that fails
                is aborted first.
        """
        folder = self._folder(folder_id)
        src = _open_source(source, name, mime_type)
        transfer = _Transfer(self._api, self.max_workers, self.multipart_threshold,
                             self._batch_size, folder, progress, link, None, False, resume)
        try:
            results = transfer.execute([src])
        finally:
            src.close()  # the engine closes what it admitted; not if it stopped before
        if transfer.failures:
            raise transfer.failures[0][2]
        return results[0]  # type: ignore[no-any-return]

    def upload_many(self, sources: Iterable[Item], folder_id: Optional[str] = None, *,
                    progress: Optional[Progress] = None, link: bool = False,
                    skip_existing: bool = False, resume: bool = False,
                    on_file: Optional[Callable[[int, Any], None]] = None) -> List[UploadedFile]:
        """Upload many files in parallel; their UploadedFiles in the order given.

        Args:
            sources: paths, bytes, file objects, or (name, source) pairs; any
                iterable, read as the upload goes (never held all at once).
            skip_existing: list the folder once, and skip every source whose
                name and size match a file there: it comes back as that file,
                with skipped=True.
            on_file: on_file(index, result) in this thread as each file ends
                (its UploadedFile or its exception), and for each file cut
                short when the run is stopped, before the error propagates.
            folder_id, progress, link, resume: as for upload().

        Raises:
            UploadManyError: some files failed; the others were uploaded and
                confirmed, and are in its .uploaded.
            AuthError: the key was refused; nothing more is attempted.
        """
        transfer = _Transfer(self._api, self.max_workers, self.multipart_threshold,
                             self._batch_size, self._folder(folder_id), progress, link,
                             on_file, skip_existing, resume)
        results = transfer.execute(sources)
        if transfer.failures:
            raise UploadManyError(sorted(transfer.failures, key=lambda f: f[0]), results)
        return results

    def pending(self) -> List[PendingUpload]:
        """The resumable uploads journaled for this client's base URL."""
        return [_pending(record) for record in _Journal.entries(_state_dir())
                if record["base_url"] == self.base_url]

    def abort_pending(self, ids: Optional[Iterable[str]] = None) -> List[str]:
        """Abort journaled uploads (`ids`: their file ids; None: all of this
        base URL's) and remove their journals; the ids aborted.

        Raises:
            APIError: some could not be aborted; their journals are kept,
                but for those files.link refused to abort as not open (a
                4xx: completed, aborted or expired meanwhile), which no run
                could abort or resume.
            ConfigError: one is being uploaded by a running process.
        """
        wanted = None if ids is None else set(ids)
        done, failed = [], []
        for upload in self.pending():
            if wanted is not None and upload.id not in wanted:
                continue
            journal = _Journal.claim(_state_dir(), upload.id)
            if journal is None:
                continue  # completed or aborted meanwhile
            with journal:
                record = journal.load()
                assert record is not None
                error = self._api.abort(_record_plan(record).ids())
                gone = isinstance(error, APIError) and error.status in (400, 404, 409, 410)
                if error is None or gone:
                    journal.remove()
                if error is None:
                    done.append(upload.id)
                else:
                    failed.append("%s (%s): %s%s" % (
                        upload.name, upload.id, error,
                        " (nothing is open under that id: its journal was removed)" if gone
                        else ""))
        if failed:
            raise APIError("could not abort %d pending upload%s: %s" % (
                len(failed), "" if len(failed) == 1 else "s", "; ".join(failed)))
        return done

    def _folder(self, folder_id: Optional[str]) -> str:
        folder = folder_id if folder_id is not None else os.environ.get(_ENV_FOLDER)
        if not folder:
            raise ConfigError("no folder id: pass folder_id= or set %s (list_projects() and "
                              "list_folders(project_id) list them)" % _ENV_FOLDER)
        return _check_id(folder, "folder id")

    # -- the rest of the published API --------------------------------------

    def _get(self, route: str, ident: str, what: str) -> Json:
        return self._api.call("GET", _ROUTES[route].format(_check_id(ident, what)))

    def _delete(self, route: str, ident: str, what: str) -> None:
        self._api.call("DELETE", _ROUTES[route].format(_check_id(ident, what)))

    def get_file(self, file_id: str) -> Json:
        """A file's record: id, fileName, fileSize, mimeType, uploaded, ..."""
        record = self._get("file", file_id, "file id").get("data")
        if isinstance(record, dict) and isinstance(record.get("file"), dict):
            return record["file"]  # type: ignore[no-any-return]
        raise ProtocolError("GET file: no `data.file` in the response")

    def list_files(self, folder_id: Optional[str] = None) -> List[Json]:
        """The files of a folder (default $FILESLINK_FOLDER)."""
        return self._api.list_files(self._folder(folder_id))

    def delete_file(self, file_id: str) -> None:
        self._delete("file", file_id, "file id")

    def signed_url(self, file_id: str) -> str:
        """A signed download URL for a private file."""
        return _need_str(self._get("signed", file_id, "file id"), "url", "GET signed URL")

    def create_link(self, file_id: str) -> str:
        """Create a permanent public link; its full URL."""
        return self._api.link(file_id)

    def get_link(self, file_id: str) -> Json:
        return self._get("file_link", file_id, "file id")

    def delete_link(self, file_id: str) -> None:
        self._delete("public", file_id, "file id")

    def list_projects(self, page: int = 1) -> Any:
        return _payload(self._api.call("GET", _ROUTES["projects_page"].format(int(page))))

    def create_project(self, title: str) -> str:
        """Create a project; its id. Not retried once the request may have
        arrived: a second project would show."""
        data = self._api.call("POST", _ROUTES["projects"], {"title": title}, repeatable=False)
        return _need_str(data, "projectId", "POST /v1/projects")

    def get_project(self, project_id: str) -> Any:
        return _payload(self._get("project", project_id, "project id"))

    def delete_project(self, project_id: str) -> None:
        self._delete("project_delete", project_id, "project id")

    def list_folders(self, project_id: str) -> Any:
        return _payload(self._get("project_folders", project_id, "project id"))

    def create_folder(self, title: str, project_id: str, private: bool = False) -> str:
        """Create a folder; its id. Not retried once the request may have
        arrived: a second folder would show."""
        data = self._api.call("POST", _ROUTES["folders"], {
            "title": title, "projectId": _check_id(project_id, "project id"),
            "isPrivate": bool(private)}, repeatable=False)
        return _need_str(data, "folderId", "POST /v1/folders")

    def get_folder(self, folder_id: str) -> Any:
        return _payload(self._get("folder", folder_id, "folder id"))

    def delete_folder(self, folder_id: str) -> None:
        self._delete("folder", folder_id, "folder id")


def upload(source: Source, folder_id: Optional[str] = None, *, name: Optional[str] = None,
           mime_type: Optional[str] = None, progress: Optional[Progress] = None,
           link: bool = False) -> UploadedFile:
    """Upload one file with a Client configured from the environment: a new
    Client per call, so no state leaks between callers. See Client.upload."""
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
    name with undecodable bytes): what it cannot encode is escaped. A
    stream that is None was closed before Python started (`>&-`, `2>&-`):
    what would go there is dropped, and the run goes on."""
    if stream is None:
        return
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
    stream.flush()


class _Screen:
    """Every write of the CLI. Results go to stdout, a line or (--json) a
    JSON object each; messages to stderr. On a terminal, the progress line
    is cleared before either, so no line ever holds both, and the next
    update draws it again; with TERM=dumb it is cleared with spaces instead
    of escape codes. Error lines are counted: one makes the exit status 1."""

    def __init__(self, out: Any, err: Any, as_json: bool, quiet: bool) -> None:
        self.out, self.err, self._json = out, err, as_json
        try:
            tty = bool(err.isatty())
        except (AttributeError, ValueError, OSError):  # no isatty, or closed
            tty = False
        self.live = tty and not quiet  # whether to draw progress and summaries
        self._ansi = os.environ.get("TERM", "") != "dumb"
        self._drawn = 0  # the width of the progress line on screen; 0: none
        self._lock = threading.RLock()  # one writer at a time: workers draw progress
        self.errors = 0
        self.stopped: List[_Stopped] = []  # the files a stop cut short

    def result(self, record: Json, line: str) -> None:
        """A closed stdout stops the run (_StdoutClosed); so does one that
        cannot be written (`> /dev/full`), as an error that names it. Lines,
        like messages, are cleaned of control characters (an id or a title
        from the server, an argument): none reaches the terminal. JSON
        escapes them itself."""
        import json

        with self._lock:
            self.clear()
            try:
                _write(self.out, (json.dumps(record) if self._json else _clean_name(line)) + "\n")
            except BrokenPipeError:
                raise _StdoutClosed() from None
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, "standard output") from None

    def message(self, text: str) -> None:
        with self._lock:
            self.clear()
            self._err(_clean_name(text) + "\n")

    def error(self, text: str) -> None:
        with self._lock:
            self.errors += 1
            self.message("fileslink: error: " + text)

    def status(self, text: str) -> None:
        """Draw the progress line, cut to the terminal's width: $COLUMNS if
        set (as shutil has it), else the width of the terminal, else 80. The
        last column is left free: some terminals wrap when it is written.
        The fields of the line are two spaces apart."""
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            try:
                columns = os.get_terminal_size(self.err.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 0  # as a terminal that does not say
        width = (columns if columns > 0 else 80) - 1
        while len(text) > width and "  " in text:  # whole fields go, the last first:
            text = text.rsplit("  ", 1)[0]         # never "ETA " or "1.4 Mi"
        with self._lock:
            text = text[:width]
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
        line = "%d/%d files  %s" % (sum(self.counts.values()), self._files, _human(self._bytes))
        if self._total is None:  # a stream: its size is known only at its end
            return line + "  %s/s" % _human(rate)
        line += " / %s  %s/s" % (_human(self._total), _human(rate))
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


def _hook(screen: _Screen, verbose: int) -> Callable[[], None]:
    """For one run: the "fileslink" logger's records go to the screen
    (warnings always: what a person must see survives --quiet and a pipe;
    -v adds info, -vv debug), and SIGTERM (containers, systemd, `timeout`)
    raises _Terminated, so it ends a run as Ctrl-C does. Returns what puts
    both back as they were found.

    The first SIGINT or SIGTERM stops the run; any that follow are let go
    until the run is over. A launcher that forwards Ctrl-C (npm, tini, a
    wrapper script) delivers it twice, microseconds apart, and a second
    KeyboardInterrupt raised inside the stop left the upload unaborted, or
    the exit waiting for the workers. A SIGINT someone set to be ignored
    (`nohup`, `cmd &`) stays ignored."""
    import logging
    import signal

    class ToScreen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                text = record.getMessage()
            except Exception:  # a malformed record is logging's to report
                self.handleError(record)
                return
            screen.message("fileslink: %s: %s" % (record.levelname.lower(), text))

    def stop(signum: int, frame: Any) -> None:
        for number in saved:
            signal.signal(number, later)
        raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def later(signum: int, frame: Any) -> None:
        pass  # not SIG_IGN: 3.8 and 3.9 may call the handler of a signal already pending

    logger = logging.getLogger("fileslink")
    handler = ToScreen()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logger.propagate = False  # an application's root handler must not print them twice
    saved: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # no other thread can
        saved[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            saved[signal.SIGINT] = signal.default_int_handler
        for number in saved:
            signal.signal(number, stop)

    def restore() -> None:
        for number, old in saved.items():
            signal.signal(number, signal.SIG_DFL if old is None else old)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate

    return restore


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
        if not isinstance(exc.filename, str):
            return exc.strerror
        return "%s: %s" % (exc.filename, exc.strerror)
    text = str(exc) or type(exc).__name__
    if isinstance(exc, APIError) and exc.status == 400 and "limit" in exc.message.lower():
        return "storage limit exceeded: %s" % text
    if isinstance(exc, AuthError) and exc.status == 401:
        return "%s; check %s" % (text, _ENV_KEY)
    if _certificate_refused(exc):
        return "%s (if a proxy re-signs TLS, --ca-bundle FILE adds its CA)" % text
    if "checksum=False" in text:
        return "%s (--no-checksum)" % text
    return text


# -- what a directory holds ---------------------------------------------------

if TYPE_CHECKING:
    #: (name, source, size): size None when only reading the source tells it.
    Entry = Tuple[str, Any, Optional[int]]


def _walk(paths: Sequence[str], name: Optional[str], screen: _Screen) -> List[Entry]:
    """The files to upload; a path that cannot be read is an error line. A
    directory gives every regular file under it, named by its path below
    it with '/'; see _tree."""
    import stat

    entries: List[Entry] = []
    for path in paths:
        if path == "-":
            if sys.stdin is None:  # `<&-`: closed before Python started
                screen.error("-: standard input is closed")
            else:
                entries.append((name or "", sys.stdin.buffer, None))
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            screen.error(_describe(exc))
            continue
        own = name or _clean_name(os.path.basename(path.rstrip("/\\")) or path)
        if stat.S_ISDIR(st.st_mode):
            _tree(path, st, entries, screen)
        elif stat.S_ISREG(st.st_mode):
            entries.append((own, path, st.st_size))
        elif not name and own.isdigit():  # <(cmd) is /dev/fd/63: it would be named "63"
            screen.error("%s: a pipe with a number for a name: give --name" % path)
        else:  # a FIFO, /dev/stdin: the library reads it to its end as a stream
            entries.append((own, path, None))
    return entries


def _tree(top: str, top_stat: os.stat_result, entries: List[Entry], screen: _Screen) -> None:
    """Add the regular files under top to entries, each directory's files
    in name order before its subdirectories.

    Special files (FIFO, socket, device) are skipped with a warning and
    never opened: opening a FIFO blocks. Symbolic links are followed, to
    directories too; a link back to a directory above it (a loop) is
    skipped with a warning. An unreadable directory or a dangling link is
    one error line each; the walk goes on.
    """
    import stat

    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
             stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
    stack = [("", top, frozenset([(top_stat.st_dev, top_stat.st_ino)]))]
    while stack:
        prefix, path, above = stack.pop()
        try:
            with os.scandir(path) as listing:
                found = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            screen.error("%s: %s" % (path, exc.strerror))
            continue
        subdirs = []
        for entry in found:
            shown = entry.path
            try:
                st = entry.stat()  # follows links; a dangling one raises
            except OSError as exc:
                screen.error("%s: %s" % (shown, exc.strerror))
                continue
            key = (st.st_dev, st.st_ino)
            if stat.S_ISREG(st.st_mode):
                entries.append((_clean_name(prefix + entry.name), entry.path, st.st_size))
            elif not stat.S_ISDIR(st.st_mode):
                screen.message("fileslink: warning: skipped %s: %s, not a regular file"
                               % (shown, kinds.get(stat.S_IFMT(st.st_mode), "a special file")))
            elif key in above:
                screen.message("fileslink: warning: skipped %s: a link to a directory "
                               "above it (a loop)" % shown)
            else:
                subdirs.append((prefix + entry.name + "/", entry.path, above | {key}))
        stack.extend(reversed(subdirs))


def _excluded(entry: Entry, rules: Sequence[Tuple[str, str]]) -> bool:
    """aws s3's rule: every file is in; each --exclude / --include that
    matches its name, in the order given, decides anew (the last match
    wins). Globs are fnmatch's, case-sensitive; '*' matches '/' too. A
    stream (-) has no name to match: it is always sent."""
    import fnmatch

    name, source, _ = entry
    excluded = False
    for verb, pattern in rules:
        if fnmatch.fnmatchcase(name, pattern):
            excluded = verb == "exclude"
    return excluded and isinstance(source, str)


# -- arguments ------------------------------------------------------------------

def _parser() -> Any:
    import argparse

    class Parser(argparse.ArgumentParser):
        """One error style for argparse's messages and ours: the usage of the
        command at fault, then `fileslink: error: ...`; exit status 2."""

        def error(self, message: str) -> Any:
            self.print_usage(sys.stderr)
            self.exit(2, "fileslink: error: %s\n" % message)

    def positive(parse: Callable[[str], int], flag: str) -> Callable[[str], int]:
        def convert(text: str) -> int:
            try:
                value = parse(text)
            except ValueError as exc:  # argparse would print "invalid convert value"
                raise argparse.ArgumentTypeError(str(exc)) from None
            if value < 1:
                raise argparse.ArgumentTypeError("%s must be at least 1, not %r" % (flag, text))
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

    def command(name: str, run: Callable[[Client, Any, _Screen], None], summary: str,
                examples: Sequence[str], description: str = "") -> Any:
        # allow_abbrev is not inherited by subcommands (3.8 to 3.13): say it again.
        epilog = "example%s:\n%s" % ("s" if len(examples) > 1 else "",
                                     "\n".join("  " + e for e in examples))
        cmd = sub.add_parser(name, help=summary, description=description or summary,
                             epilog=epilog, allow_abbrev=False,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        global_options(cmd, lambda value: argparse.SUPPRESS)
        cmd.set_defaults(usage=cmd, run=run)
        return cmd

    up = command("upload", _cmd_upload, "upload files and directories", [
        "fileslink upload report.pdf --folder FOLDER_ID",
        "fileslink upload ./photos --skip-existing --exclude '*.tmp'",
        "fileslink upload ./photos --dry-run",
        "pg_dump db | fileslink upload - --name db.sql"],
        "Upload files; a directory uploads every file under it, named by its path "
        "below the directory.")
    up.add_argument("paths", nargs="+", metavar="PATH", help="a file, a directory, or - for stdin")
    up.add_argument("--name", help="the name to give the file (required with -)")
    up.add_argument("--link", action="store_true", help="create permanent links and print them")
    up.add_argument("--workers", type=positive(_whole, "--workers"), default=8, metavar="N",
                    help="parallel PUTs, files or parts (8)")
    up.add_argument("--threshold", type=positive(_parse_size, "--threshold"), default=100 << 20,
                    metavar="SIZE", help="files of SIZE or more go multipart: in parts, sent "
                    "in parallel (100M; K, M, G suffixes)")
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
    up.add_argument("--bwlimit", type=positive(_parse_size, "--bwlimit"), metavar="RATE",
                    help="at most RATE bytes per second across all workers (K, M, G suffixes)")
    up.add_argument("--resume", action="store_true",
                    help="keep an interrupted multipart upload to continue it when the same "
                    "command runs again (see `fileslink pending`)")

    ls = command("ls", _cmd_ls, "list the files of a folder",
                 ["fileslink ls", "fileslink ls FOLDER_ID --json"])
    ls.add_argument("folder_id", nargs="?", metavar="FOLDER_ID",
                    help="the folder (default --folder, then $%s)" % _ENV_FOLDER)
    rm = command("rm", _cmd_rm, "delete files", ["fileslink rm FILE_ID [FILE_ID ...]"])
    rm.add_argument("ids", nargs="+", metavar="FILE_ID", help="a file to delete")
    link = command("link", _cmd_link, "create a permanent public link", ["fileslink link FILE_ID"])
    link.add_argument("id", metavar="FILE_ID", help="the file to link")
    projects = command("projects", _cmd_listing, "list your projects", ["fileslink projects"])
    projects.add_argument("--page", type=positive(_whole, "--page"), default=1, metavar="N",
                          help="the page of the listing (1)")
    folders = command("folders", _cmd_listing, "list the folders of a project",
                      ["fileslink folders PROJECT_ID"])
    folders.add_argument("project", metavar="PROJECT_ID", help="the project")
    command("pending", _cmd_pending, "list the multipart uploads kept by --resume",
            ["fileslink pending", "fileslink pending --json"])
    abort = command("abort", _cmd_abort, "abort multipart uploads kept by --resume",
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
    folder = args.folder or os.environ.get(_ENV_FOLDER)
    if not folder:
        raise ConfigError("no folder: pass --folder ID or set %s (`fileslink projects`, then "
                          "`fileslink folders PROJECT_ID`, list them)" % _ENV_FOLDER)
    return str(folder)


def _client(args: Any) -> Client:
    # allow_insecure None: the library reads FILESLINK_ALLOW_INSECURE
    options: Dict[str, Any] = {"allow_insecure": args.allow_insecure or None}
    if args.ca_bundle:
        import ssl

        context = ssl.create_default_context()  # keep the system CAs: add, not replace
        try:
            context.load_verify_locations(cafile=args.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("--ca-bundle %s: %s" % (args.ca_bundle, exc)) from None
        options["ssl_context"] = context
    if args.command == "upload":
        options.update(max_workers=args.workers, multipart_threshold=args.threshold,
                       checksum=not args.no_checksum, max_bandwidth=args.bwlimit)
    return Client(**options)


# -- the commands ---------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line. Returns the exit status: 0 all done (or stdout was
    closed), 1 something failed (each failure has had its error line), 2
    usage or configuration, 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM)."""
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    screen = _Screen(sys.stdout, sys.stderr, args.json, args.quiet)
    unhook = _hook(screen, args.verbose)
    try:
        with _client(args) as client:
            args.run(client, args, screen)
        return 1 if screen.errors else 0
    except _StdoutClosed:
        screen.clear()
        _silence(sys.stdout)
        return 0
    except KeyboardInterrupt as exc:
        screen.message(_stop_line(exc, screen.stopped, args))
        return 143 if isinstance(exc, _Terminated) else 130
    except (FilesLinkError, OSError) as exc:
        screen.error(_describe(exc))
        return 2 if isinstance(exc, ConfigError) else 1
    finally:
        unhook()


def _stop_line(exc: BaseException, stopped: List[_Stopped], args: Any) -> str:
    """The one line a stop ends with: what was aborted, what was kept."""
    line = "fileslink: %s" % ("terminated" if isinstance(exc, _Terminated) else "interrupted")
    outcomes = [s.aborted for s in stopped]  # None: nothing to abort, or kept to resume
    aborted, failed = outcomes.count(True), outcomes.count(False)
    if aborted:
        line += "; %d unfinished multipart upload%s aborted" % (aborted, "" if aborted == 1 else "s")
    if failed:
        line += "; %d could not be aborted (see above)" % failed
    if any(s.kept for s in stopped):  # journaled; a stop inside initiate kept nothing
        many = len(args.paths) > 1 or any(os.path.isdir(p) for p in args.paths)
        if many and not args.skip_existing:  # else the files finished would be sent again
            line += ("; the same command with --skip-existing continues what was kept "
                     "(`fileslink pending` lists it)")
        else:
            line += "; the same command continues what was kept (`fileslink pending` lists it)"
    return line


def _cmd_upload(client: Client, args: Any, screen: _Screen) -> None:
    folder = _folder(args)
    found = _walk(args.paths, args.name, screen)
    if args.dry_run:
        _dry_run(client, folder, args, screen, found)
        return
    entries = [entry for entry in found if not _excluded(entry, args.rules)]
    if not entries:
        if not screen.errors:
            screen.message("fileslink: nothing to upload: %s" % (
                "%d excluded by --exclude/--include" % len(found) if found
                else "no files in %s" % ", ".join(args.paths)))
        return
    sizes = [size for _, _, size in entries]
    total = None if None in sizes else sum(s or 0 for s in sizes)
    bar = _Bar(screen, len(entries), total) if screen.live else None

    def on_file(index: int, result: Any) -> None:
        name, _, size = entries[index]
        if isinstance(result, _Stopped):  # cut short by a stop: main() sums them up
            screen.stopped.append(result)  # (a failed abort has had its warning)
            return
        if isinstance(result, UploadedFile):
            line = "%s %s" % (result.name, "skipped (%s)" % result.id if result.skipped
                              else "-> %s" % (result.url or result.id))
            screen.result(result.to_dict(), line)
            outcome = "skipped" if result.skipped else "done"
        else:  # the name is on the line already: of an OSError, only its reason
            reason = result.strerror if isinstance(result, OSError) else None
            screen.error("%s: %s" % (name, reason or _describe(result)))
            outcome = "failed"
        if bar is not None:
            bar.file_done(name, outcome, size)

    try:
        client.upload_many([(name, source) for name, source, _ in entries], folder,
                           progress=bar.update if bar else None, link=args.link,
                           skip_existing=args.skip_existing, resume=args.resume, on_file=on_file)
    except UploadManyError:
        pass  # each failure has had its error line
    if bar is not None:
        screen.message(bar.summary())


def _dry_run(client: Client, folder: str, args: Any, screen: _Screen,
             found: List[Entry]) -> None:
    """What upload would do, with no presign, initiate or confirm call:
    only the folder's listing, for --skip-existing (the index the library
    skips by)."""
    existing = _index_existing(client.list_files(folder)) if args.skip_existing else {}
    counts = {"upload": 0, "skip": 0, "exclude": 0}
    for entry in found:
        name, _, size = entry
        there = existing.get((name, size)) if size is not None else None
        record: Json = {"name": name, "size": size, "dryRun": True}
        if _excluded(entry, args.rules):
            verb, line = "exclude", "%s excluded" % name
            record["excluded"] = True
        elif there is not None:
            verb, line = "skip", "%s would be skipped (%s)" % (name, there.id)
            record = dict(there.to_dict(), skipped=True, dryRun=True)
        else:
            shown = "size unknown" if size is None else _human(size)
            verb, line = "upload", "%s would be uploaded (%s)" % (name, shown)
            record["mimeType"] = _guess_mime(name)
        counts[verb] += 1
        screen.result(record, line)
    if screen.live:
        screen.message("dry run: %(upload)d to upload, %(skip)d to skip, %(exclude)d excluded"
                       % counts)


def _cmd_ls(client: Client, args: Any, screen: _Screen) -> None:
    for record in client.list_files(args.folder_id or _folder(args)):
        # Under upload --json's names (name, size), with every other field it carries.
        entry: Json = {"id": record.get("id"), "name": record.get("fileName"),
                       "size": record.get("fileSize")}
        entry.update((k, v) for k, v in record.items() if k not in ("fileName", "fileSize"))
        size = "" if entry["size"] is None else entry["size"]
        screen.result(entry, "%s  %10s  %s" % (entry["id"], size,
                                               entry["name"] or ""))


def _cmd_rm(client: Client, args: Any, screen: _Screen) -> None:
    for file_id in args.ids:
        try:
            client.delete_file(file_id)
        except FilesLinkError as exc:
            screen.error("%s: %s" % (file_id, _describe(exc)))
        else:
            screen.result({"id": file_id, "deleted": True}, "deleted %s" % file_id)


def _cmd_link(client: Client, args: Any, screen: _Screen) -> None:
    url = client.create_link(args.id)
    screen.result({"id": args.id, "url": url}, url)


def _cmd_listing(client: Client, args: Any, screen: _Screen) -> None:
    """folders and projects: one line (or JSON object) per item listed."""
    if args.command == "folders":
        value, id_field = client.list_folders(args.project), "folderId"
    else:
        value, id_field = client.list_projects(args.page), "projectId"
    if isinstance(value, dict):  # the listing's shape is not published: look for the list
        lists = [value[k] for k in ("folders", "projects", "items", "data")
                 if isinstance(value.get(k), list)]
        value = lists[0] if lists else [value]
    for record in value if isinstance(value, list) else []:
        if isinstance(record, dict):
            line = "%s  %s" % (record.get("id") or record.get(id_field), record.get("title", ""))
        else:
            line = str(record)
        screen.result(record, line)


def _cmd_pending(client: Client, args: Any, screen: _Screen) -> None:
    for up in client.pending():
        expires = "unknown" if up.expires is None else time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(up.expires))
        screen.result(up.to_dict(), "%s  %d/%d parts  %s  expires %s  %s" % (
            up.id, up.parts_done, up.parts_total, _human(up.size), expires, up.name))


def _cmd_abort(client: Client, args: Any, screen: _Screen) -> None:
    aborted = client.abort_pending(None if args.all else list(args.ids))
    for upload_id in aborted:
        screen.result({"id": upload_id, "aborted": True}, "aborted %s" % upload_id)
    for upload_id in args.ids:
        if upload_id not in aborted:
            screen.error("%s: no such pending upload (`fileslink pending` lists them)"
                         % upload_id)


if __name__ == "__main__":
    sys.exit(main())
