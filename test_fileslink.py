"""Tests for fileslink, and the local fake of files.link that they run against.

Two commands cover most needs (run them from the repository root):

    python -m unittest                  # the whole suite; no network, no dependency
    python test_fileslink.py demo       # upload through the fake and show every call

and one more for trying the CLI or a script by hand, without an account:

    python test_fileslink.py serve [--port N]   # prints `export ...` lines to paste

The fake, `FakeFilesLink`, speaks every call of PROTOCOL.md on two loopback
servers: the API, and a separate "object storage" origin that takes the
presigned PUTs (a separate origin, as in production, so a client that leaks
its API key to storage or mixes the two up is caught). It is strict where the
real services are strict, because a lenient fake hides exactly the bugs that
only show up in production: signed URLs that expire, `Content-Type` signed into
the URL, chunked bodies refused, `Authorization` refused on presigned PUTs,
part sizes checked, ETags that are real MD5s, a rate limit with its headers.
Tests script faults into it (`inject`, `chaos`) instead of mocking fileslink's
internals, so every failure travels through real sockets.
"""

from __future__ import annotations

import argparse
import calendar
import copy
import hashlib
import hmac
import html
import http.client
import http.server
import json
import math
import os
import random
import re
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
import unittest
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import fileslink

MiB = 1024 * 1024

#: Object storage limits (S3's): at most 10,000 parts, each at most 5 GiB;
#: a single PUT at most 5 GiB. The fake enforces them like the real thing.
_MAX_PARTS = 10000
_MAX_PART_SIZE = 5 * 1024 * MiB
_MAX_SINGLE_PUT = 5 * 1024 * MiB
#: API bodies above this are refused with 413 (the service's JSON parser has a
#: cap too); 1 MiB leaves room for completing 10,000 parts.
_API_BODY_CAP = 1 * MiB
#: The object storage bucket the fake pretends to write to.
_BUCKET = "fileslink-fake"
#: The budget reported when no rate limit is configured: large enough that a
#: client reading the `ratelimit` headers never waits, but headers are still sent.
_UNLIMITED = (1000000, 60)
_S3_ALGORITHM = "AWS4-HMAC-SHA256"
_S3_CREDENTIAL = "FAKEACCESSKEY/20240101/us-east-1/s3/aws4_request"


# ---------------------------------------------------------------------------
# Records: what the fake logs and stores (read them in tests)
# ---------------------------------------------------------------------------

@dataclass
class Req:
    """One request as the fake saw it, logged when it arrives."""
    plane: str                    # "api" or "storage"
    method: str
    path: str                     # without the query string
    query: Dict[str, str]
    headers: Dict[str, str]       # lower-case names
    json: Any = None              # the parsed API body, or None
    body_size: int = 0            # body bytes actually read
    status: int = 0               # status answered; 0 = reset or dropped unanswered


@dataclass
class FakeFile:
    """A file row of the service, plus what object storage holds for it."""
    id: str
    name: str
    size: int                     # declared at presign / initiate
    mime_type: str
    folder_id: str
    project_id: str
    s3_key: str
    multipart: bool = False
    uploaded: bool = False        # confirmed (single) or completed (multipart)
    stored: Optional[int] = None  # bytes storage holds; None = never PUT
    data: Optional[bytes] = None  # the bytes, when keep_bytes and not discard
    md5: Optional[str] = None     # hex MD5 of the whole object, when known
    link: Optional[str] = None    # permanent public link id (POST /v1/p)
    created: float = 0.0


@dataclass
class FakeMultipart:
    """A multipart upload; parts maps number -> (size, md5 hex | None, data | None)."""
    upload_id: str
    file_id: str
    key: str
    bucket: str
    size: int
    part_size: int
    parts: Dict[int, Tuple[int, Optional[str], Optional[bytes]]] = field(default_factory=dict)
    etags: Dict[int, str] = field(default_factory=dict)   # number -> ETag returned
    state: str = "open"           # "open" | "completed" | "aborted"

    @property
    def part_count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def expected_size(self, number: int) -> int:
        n = self.part_count
        return self.part_size if number < n else self.size - (n - 1) * self.part_size


@dataclass
class _Fault:
    plane: str
    status: Optional[int] = None
    body: Any = None
    headers: Optional[Dict[str, str]] = None
    reset_after: Optional[int] = None
    delay: Optional[float] = None
    wrong_etag: bool = False
    expire: bool = False
    non_json: bool = False
    times: int = 1
    path_contains: Optional[str] = None


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Dropped(Exception):
    """The client went away before the fake could finish reading or answering."""


def pseudo_random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes, fast at any size: one random 64 KiB block repeated,
    each copy stamped with (seed, block index) so that a part sent to the wrong
    offset, or twice, does not compare equal."""
    block_size = 64 * 1024
    block = random.Random(seed).getrandbits(block_size * 8).to_bytes(block_size, "little")
    out = bytearray(size)
    for i, offset in enumerate(range(0, size, block_size)):
        stamped = struct.pack(">QQ", seed & (2**64 - 1), i) + block[16:]
        out[offset:offset + block_size] = stamped[:size - offset]
    return bytes(out)


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _s3_error(code: str, message: str, **extra: str) -> bytes:
    """An S3-style XML error body, as object storage sends it."""
    fields = "".join("<%s>%s</%s>" % (k, html.escape(v, quote=False), k)
                     for k, v in [("Code", code), ("Message", message)] + list(extra.items()))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>%s<RequestId>%s</RequestId>'
            '<HostId>fake</HostId></Error>' % (fields, secrets.token_hex(8).upper())).encode()


_S3_CODES = {400: "BadRequest", 403: "AccessDenied", 404: "NoSuchKey", 408: "RequestTimeout",
             409: "OperationAborted", 411: "MissingContentLength", 429: "SlowDown",
             500: "InternalError", 501: "NotImplemented", 503: "SlowDown", 504: "GatewayTimeout"}


def _html_page(status: int) -> bytes:
    """The page a proxy or load balancer sends in place of the API's JSON."""
    title = "%d %s" % (status, http.client.responses.get(status, "Error"))
    return ("<!DOCTYPE html>\n<html><head><title>%s</title></head><body><center><h1>%s</h1>"
            "</center><hr><center>nginx</center></body></html>\n" % (title, title)).encode()


# ---------------------------------------------------------------------------
# The fake service
# ---------------------------------------------------------------------------

class FakeFilesLink:
    """A local, in-process files.link: API server + object storage server.

    Use as a context manager, or start() / stop(). All state is guarded by
    one lock; the servers answer each connection in its own thread.
    """

    #: Files one presign call may carry; more is a 400 (the real cap is not
    #: published; a cap at all keeps clients from sending unbounded batches).
    max_batch = 100

    def __init__(self, *, api_key: str = "fl_test_0123456789abcdef", min_part_size: int = 5 * MiB,
                 part_size: Optional[int] = None, url_ttl: float = 900.0,
                 rate_limit: Optional[Tuple[int, float]] = None, latency: float = 0.0,
                 discard: bool = False, keep_bytes: bool = True, port: int = 0) -> None:
        if part_size is not None and part_size < min_part_size:
            raise ValueError("part_size below min_part_size: every non-last part would be refused")
        self.api_key = api_key
        self.min_part_size = min_part_size
        self.part_size = part_size
        self.url_ttl = url_ttl
        self.rate_limit = rate_limit
        self.latency = latency
        self.discard = discard
        self.keep_bytes = keep_bytes and not discard
        self._port = port
        self.initiate_transform: Optional[Callable[[dict], dict]] = None
        #: Called with each Req once it is answered (the `serve` command prints them).
        self.on_request: Optional[Callable[[Req], None]] = None

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._secret = secrets.token_bytes(32)      # signs presigned URLs
        self._clock_offset = 0.0
        self.log: List[Req] = []
        self.files: Dict[str, FakeFile] = {}
        self.multipart: Dict[str, FakeMultipart] = {}
        self.projects: Dict[str, dict] = {}
        self.folders: Dict[str, dict] = {}
        self.faults_fired: List[Tuple[str, str, str, str]] = []   # (plane, method, path, what)
        self._keys: Dict[str, str] = {}              # object key -> file id
        self._links: Dict[str, str] = {}             # link id -> file id
        self._expired: set = set()                   # signatures the `expire` fault killed
        self._faults: List[_Fault] = []
        self._chaos: Optional[Tuple[random.Random, Dict[str, float], Optional[float]]] = None
        self._window = (0.0, 0)                      # rate limit: (window start, calls in it)
        self._discard_count = 0
        self._conns: set = set()                     # live handlers, so stop() can end them
        self._servers: List[_Server] = []
        self._threads: List[threading.Thread] = []

        self.project_id = self._new_project("Fake project")["id"]
        self.folder_id = self._new_folder("Fake folder", self.project_id, False)["id"]
        self.base_url = self.storage_url = ""

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "FakeFilesLink":
        if self._servers:
            return self
        for plane, port in (("api", self._port), ("storage", 0)):
            server = _Server(("127.0.0.1", port), self, plane)
            # A short poll interval: stop() waits for serve_forever to notice.
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                      name="fake-" + plane, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.base_url = "http://127.0.0.1:%d" % self._servers[0].server_address[1]
        self.storage_url = "http://127.0.0.1:%d" % self._servers[1].server_address[1]
        return self

    def stop(self) -> None:
        self._stopping.set()             # ends latency waits and injected stalls at once
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            handlers = list(self._conns)
        for handler in handlers:         # wake threads blocked reading a kept-alive socket
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join()
        self._servers, self._threads = [], []

    def __enter__(self) -> "FakeFilesLink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def close_idle_connections(self) -> int:
        """Close every kept-alive connection that is waiting for its next request,
        as servers do after an idle timeout. Returns how many were closed."""
        with self._lock:
            handlers = list(self._conns)
        closed = 0
        for handler in handlers:
            with handler.answering:    # never cut an answer short
                if handler.idle:
                    try:
                        handler.connection.shutdown(socket.SHUT_RDWR)
                        closed += 1
                    except OSError:
                        pass
        return closed

    # -- clock, log ---------------------------------------------------------

    def _now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's time on: presigned URLs issued earlier may expire,
        and the rate-limit window may reset. Real time is not touched."""
        with self._lock:
            self._clock_offset += seconds

    def api_calls(self, path_contains: Optional[str] = None) -> List[Req]:
        with self._lock:
            return [r for r in self.log
                    if r.plane == "api" and (path_contains is None or path_contains in r.path)]

    # -- faults -------------------------------------------------------------

    def inject(self, plane: str, *, status: Optional[int] = None, body: Any = None,
               headers: Optional[Dict[str, str]] = None, reset_after: Optional[int] = None,
               delay: Optional[float] = None, wrong_etag: bool = False, expire: bool = False,
               non_json: bool = False, times: int = 1, path_contains: Optional[str] = None) -> None:
        """Make the next `times` requests on `plane` whose path contains
        `path_contains` misbehave. Faults queue up in order; each request
        consumes at most one (the first that matches).

        status: answer it, with a realistic body (S3 XML on storage, JSON on the
            API; `body` overrides: bytes, str, or a dict sent as JSON).
        headers: added to the answer (Retry-After, Location, ...).
        reset_after: read that many body bytes, then reset the connection (RST).
        delay: stall that long first (stop() cuts it short), then go on as if
            nothing happened: a client that timed out meanwhile may find its
            request done after all (a late presign or initiate leaves a row or an
            empty multipart upload it never learns about, as on the real service).
        wrong_etag (storage): the body is corrupted in transit: storage keeps the
            damaged bytes and returns their (honest) MD5, which is not the MD5 of
            what the client sent.
        expire (storage): the URL has expired, from now on.
        non_json (api): an HTML page instead of JSON (200 unless `status`).
        """
        if plane not in ("api", "storage"):
            raise ValueError("plane must be 'api' or 'storage'")
        if plane == "api" and (wrong_etag or expire):
            raise ValueError("wrong_etag and expire are storage faults")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.append(_Fault(plane, status, body, headers, reset_after, delay,
                                       wrong_etag, expire, non_json, times, path_contains))

    def clear_faults(self) -> None:
        """Drop queued faults and turn chaos off."""
        with self._lock:
            self._faults.clear()
            self._chaos = None

    def chaos(self, seed: int, *, storage_rate: float = 0.2, api_rate: float = 0.1,
              delay: Optional[float] = None) -> None:
        """From now on, fail a random share of requests in a random way (seeded).

        Storage: 408/500/502/503/504, resets mid-body, expired URLs, corrupted
        bodies (wrong ETag). API: 429 (Retry-After: 0)/500/502/503/504, an HTML
        502 page, an HTML 200, resets. `delay` (seconds, e.g. just past the
        client's timeout) adds stalls to the mix; None leaves them out.
        Queued inject() faults still go first."""
        with self._lock:
            self._chaos = (random.Random(seed), {"storage": storage_rate, "api": api_rate}, delay)

    def _take_fault(self, plane: str, method: str, path: str) -> Optional[_Fault]:
        with self._lock:
            fault = None
            for queued in self._faults:
                if queued.plane == plane and (queued.path_contains is None
                                              or queued.path_contains in path):
                    queued.times -= 1
                    if queued.times == 0:
                        self._faults.remove(queued)
                    fault = copy.copy(queued)
                    break
            if fault is None and self._chaos is not None:
                rng, rates, delay = self._chaos
                if rng.random() < rates[plane]:
                    fault = self._random_fault(rng, plane, delay)
            if fault is not None:
                self.faults_fired.append((plane, method, path, _describe(fault)))
            return fault

    @staticmethod
    def _random_fault(rng: random.Random, plane: str, delay: Optional[float]) -> _Fault:
        kinds = (["status", "reset", "expire", "wrong_etag"] if plane == "storage"
                 else ["status", "reset", "html_error", "html_ok"])
        if delay:
            kinds.append("delay")
        kind = rng.choice(kinds)
        if kind == "status":
            status = rng.choice([408, 500, 502, 503, 504] if plane == "storage"
                                else [429, 500, 502, 503, 504])
            headers = {"Retry-After": "0"} if status in (429, 503) else None
            return _Fault(plane, status=status, headers=headers)
        if kind == "reset":      # half before any body byte, half mid-body
            return _Fault(plane, reset_after=rng.choice([0, rng.randrange(1, 256 * 1024)]))
        if kind == "html_error":
            return _Fault(plane, status=502, non_json=True)
        if kind == "html_ok":
            return _Fault(plane, non_json=True)
        if kind == "delay":
            return _Fault(plane, delay=delay)
        return _Fault(plane, expire=(kind == "expire"), wrong_etag=(kind == "wrong_etag"))

    # -- rate limit ---------------------------------------------------------

    def _count_call(self) -> Tuple[bool, Dict[str, str]]:
        """Count one API call in a fixed window; return (allowed, headers)."""
        quota, window = self.rate_limit or _UNLIMITED
        with self._lock:
            now = self._now()
            start, used = self._window
            if used == 0 or now >= start + window:
                start, used = now, 0
            used += 1
            self._window = (start, used)
        w = int(math.ceil(window))
        name = "%d-in-%dmin" % (quota, w // 60) if w % 60 == 0 else "%d-in-%dsec" % (quota, w)
        reset = max(1, int(math.ceil(start + window - now)))
        return used <= quota, {
            "RateLimit-Policy": '"%s"; q=%d; w=%d' % (name, quota, w),
            "RateLimit": '"%s"; r=%d; t=%d' % (name, max(0, quota - used), reset)}

    # -- presigned URLs -----------------------------------------------------

    def _signature(self, method: str, path: str, date: str, expires: str, signed: str,
                   upload_id: Optional[str], part: Optional[str], content_type: Optional[str]) -> str:
        message = "\n".join([method, path, date, expires, signed, upload_id or "", part or "",
                             content_type if content_type is not None else ""])
        return hmac.new(self._secret, message.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    def _presign(self, method: str, key: str, mime: Optional[str] = None,
                 upload_id: Optional[str] = None, part: Optional[int] = None) -> str:
        """A URL on storage_url, signed like S3's query-string auth: the
        signature covers method, path, date, lifetime, upload id and part number,
        and the Content-Type when one was declared (so any other is refused)."""
        path = "/%s/%s" % (_BUCKET, quote(key, safe="/"))
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(self._now())))
        expires = str(max(1, int(self.url_ttl)))
        signed = "content-type;host" if mime else "host"
        query = [("X-Amz-Algorithm", _S3_ALGORITHM), ("X-Amz-Credential", _S3_CREDENTIAL),
                 ("X-Amz-Date", date), ("X-Amz-Expires", expires), ("X-Amz-SignedHeaders", signed)]
        if upload_id is not None:
            query = [("partNumber", str(part)), ("uploadId", upload_id)] + query
        sig = self._signature(method, path, date, expires, signed, upload_id,
                              None if part is None else str(part), mime)
        return "%s%s?%s" % (self.storage_url, path, urlencode(query + [("X-Amz-Signature", sig)]))

    def _check_url(self, method: str, path: str, q: Dict[str, str],
                   content_type: Optional[str]) -> Optional[Tuple[str, str]]:
        """None if the presigned URL is good, else (S3 error code, message)."""
        try:
            date, expires = q["X-Amz-Date"], q["X-Amz-Expires"]
            signed, sig = q["X-Amz-SignedHeaders"], q["X-Amz-Signature"]
        except KeyError:
            return ("AccessDenied", "Query-string authentication requires the X-Amz-Date, "
                    "X-Amz-Expires, X-Amz-SignedHeaders and X-Amz-Signature parameters")
        ctype = (content_type or "") if "content-type" in signed.split(";") else None
        want = self._signature(method, path, date, expires, signed, q.get("uploadId"),
                               q.get("partNumber"), ctype)
        if not hmac.compare_digest(want, sig):
            return ("SignatureDoesNotMatch", "The request signature we calculated does not "
                    "match the signature you provided. Check your key and signing method.")
        try:
            issued = calendar.timegm((int(date[0:4]), int(date[4:6]), int(date[6:8]),
                                      int(date[9:11]), int(date[11:13]), int(date[13:15]), 0, 0, 0))
            lifetime = int(expires)
        except ValueError:
            return ("AuthorizationQueryParametersError", "X-Amz-Date or X-Amz-Expires is malformed")
        with self._lock:
            killed = sig in self._expired
        if killed or self._now() > issued + lifetime:
            return ("AccessDenied", "Request has expired")
        return None

    # -- state helpers (callers hold no lock unless stated) ------------------

    def _new_project(self, title: str) -> dict:
        project = {"id": str(uuid.uuid4()), "title": title, "ownerId": "user_fake",
                   "createdAt": self._iso()}
        self.projects[project["id"]] = project
        return project

    def _new_folder(self, title: str, project_id: str, private: bool) -> dict:
        folder = {"id": str(uuid.uuid4()), "title": title, "projectId": project_id,
                  "isPrivate": private, "createdAt": self._iso()}
        self.folders[folder["id"]] = folder
        return folder

    def _iso(self, when: Optional[float] = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                             time.gmtime(self._now() if when is None else when))

    def _new_file(self, folder: dict, name: str, size: int, mime: Optional[str],
                  multipart: bool) -> FakeFile:
        """Create a file row (caller holds the lock)."""
        file_id = str(uuid.uuid4())
        # Keys keep the name readable but never let it add path segments or controls.
        safe = re.sub(r"[\x00-\x1f\x7f/\\]", "_", name.encode("utf-8", "replace").decode("utf-8"))
        key = "%s/%s/%s" % (folder["id"], file_id, safe)
        f = FakeFile(file_id, name, size, mime or "application/octet-stream", folder["id"],
                     folder["projectId"], key, multipart=multipart, created=self._now())
        self.files[file_id] = f
        self._keys[key] = file_id
        return f

    def _part_size_for(self, size: int) -> int:
        """The plan object storage would accept: part_size if set, else the
        smallest whole number of MiB >= min_part_size giving <= 10,000 parts."""
        if self.part_size is not None:
            return self.part_size
        floor = max(self.min_part_size, -(-size // _MAX_PARTS))
        return -(-floor // MiB) * MiB

    def _file_json(self, f: FakeFile) -> dict:
        private = self.folders.get(f.folder_id, {}).get("isPrivate", False)
        return {"id": f.id, "projectId": f.project_id, "folderId": f.folder_id,
                "fileName": f.name, "s3Key": f.s3_key, "mimeType": f.mime_type,
                "fileSize": f.size, "private": private, "uploaded": f.uploaded,
                "storageType": "s3", "ownerId": "user_fake", "createdAt": self._iso(f.created)}


def _describe(f: _Fault) -> str:
    parts = ["%s=%r" % (k, v) for k, v in vars(f).items()
             if k not in ("plane", "times", "path_contains") and v not in (None, False)]
    return " ".join(parts) or "headers only"


# ---------------------------------------------------------------------------
# HTTP plumbing: one server class, one handler class for both planes
# ---------------------------------------------------------------------------

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], fake: FakeFilesLink, plane: str) -> None:
        self.fake, self.plane = fake, plane
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is routine here; other errors are bugs.
        if not isinstance(sys.exc_info()[1], (OSError, _Dropped)):
            super().handle_error(request, client_address)


_API_ROUTES = [   # (method, path pattern, handler name); first match wins
    ("POST", r"/v1/files/confirm-upload", "confirm"),
    ("POST", r"/v1/files/multipart/complete", "complete"),
    ("POST", r"/v1/files/multipart/abort", "abort"),
    ("POST", r"/v1/files/multipart/([^/]+)/initiate", "initiate"),
    ("GET", r"/v1/files/folder/([^/]+)", "list_files"),
    ("GET", r"/v1/files/signed/([^/]+)", "signed_url"),
    ("POST", r"/v1/files/([^/]+)", "presign"),
    ("GET", r"/v1/files/([^/]+)", "get_file"),
    ("DELETE", r"/v1/files/([^/]+)", "delete_file"),
    ("POST", r"/v1/p", "create_link"),
    ("GET", r"/v1/p/file/([^/]+)", "get_link"),
    ("DELETE", r"/v1/p/([^/]+)", "delete_link"),
    ("GET", r"/v1/p/([^/]+)", "public_download"),        # the one call without a key
    ("POST", r"/v1/projects", "create_project"),
    ("GET", r"/v1/projects/project/([^/]+)", "get_project"),
    ("GET", r"/v1/projects/([0-9]+)", "list_projects"),
    ("DELETE", r"/v1/projects/([^/]+)", "delete_project"),
    ("POST", r"/v1/folders", "create_folder"),
    ("GET", r"/v1/folders/project/([^/]+)", "list_folders"),
    ("GET", r"/v1/folders/([^/]+)", "get_folder"),
    ("DELETE", r"/v1/folders/([^/]+)", "delete_folder"),
]
_PUBLIC = {"public_download"}


def _check_meta(meta: Any) -> Tuple[str, int, Optional[str]]:
    """Validate one file's metadata as the API does: (name, size, mimeType)."""
    if not isinstance(meta, dict):
        raise _ApiError(400, "file metadata must be an object")
    name, size, mime = meta.get("name"), meta.get("size"), meta.get("mimeType")
    if not isinstance(name, str) or not name.strip():
        raise _ApiError(400, "name is required")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _ApiError(400, "size must be a non-negative integer")
    if mime is not None and (not isinstance(mime, str) or not mime or "\r" in mime or "\n" in mime):
        raise _ApiError(400, "mimeType must be a non-empty string")
    return name, size, mime


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, so connection reuse is exercised
    server_version = "FakeFilesLink/1.0"
    timeout = 60                       # an abandoned keep-alive socket frees its thread
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes; without NODELAY, Nagle
        # plus the client's delayed ACK would add ~40 ms to answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake, self.plane = self.server.fake, self.server.plane
        self.fresh, self.idle = True, True
        self.answering = threading.Lock()   # see close_idle_connections
        self.buf: Optional[bytearray] = None
        with self.fake._lock:
            self.fake._conns.add(self)

    def finish(self) -> None:
        with self.fake._lock:
            self.fake._conns.discard(self)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass                           # the request log is fake.log

    def _dispatch(self) -> None:
        self.idle = False
        fake = self.fake
        path, _, qs = self.path.partition("?")
        self.req = Req(self.plane, self.command, path, dict(parse_qsl(qs, keep_blank_values=True)),
                       {k.lower(): v for k, v in self.headers.items()})
        self.extra: Dict[str, str] = {}
        with fake._lock:
            fake.log.append(self.req)
        try:
            # Latency per request, and once more per new connection (the TCP
            # handshake's round trip), so connection reuse pays off as it does
            # on a real network.
            wait = fake.latency * (2 if self.fresh else 1)
            self.fresh = False
            if wait and fake._stopping.wait(wait):
                raise _Dropped()
            fault = fake._take_fault(self.plane, self.command, path)
            if fault is not None and self._apply_fault(fault):
                return
            if self.plane == "api":
                self._api()
            else:
                self._storage(fault)
        except (_Dropped, OSError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()      # a bug in the fake: say so, and answer 500
            if not self.req.status:
                try:
                    self._json(500, {"success": False, "message": "fake server error"}, close=True)
                except OSError:
                    pass
            self.close_connection = True
        finally:
            self.idle = True
            if fake.on_request is not None:
                fake.on_request(self.req)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _dispatch

    # -- reading and answering ----------------------------------------------

    def _length(self) -> Optional[int]:
        value = self.headers.get("Content-Length")
        try:
            n = int(value) if value is not None else None
        except ValueError:
            return None
        return n if n is None or n >= 0 else None

    def _read(self, n: int, *, keep: bool = False, digest: bool = False,
              corrupt: bool = False) -> Tuple[Optional[bytes], Optional[str]]:
        """Read exactly n body bytes in 1 MiB blocks; return (bytes if keep, hex
        MD5 if digest). Without keep, one buffer per connection is reused, so a
        huge body costs no memory and (without digest) next to no CPU."""
        md5 = hashlib.md5() if digest else None
        data = bytearray(n) if keep else None
        if data is None and self.buf is None:
            self.buf = bytearray(MiB)
        view = memoryview(data if data is not None else self.buf)
        got = 0
        while got < n:
            want = min(MiB, n - got)
            dest = view[got:got + want] if keep else view[:want]
            k = self.rfile.readinto(dest)
            if not k:
                raise _Dropped()       # EOF before Content-Length: nothing is stored
            if corrupt and got == 0:
                dest[0] ^= 0xFF        # damaged in transit
            if md5 is not None:
                md5.update(dest[:k])
            got += k
            self.req.body_size = got
        return (bytes(data) if data is not None else None,
                md5.hexdigest() if md5 is not None else None)

    def _drain(self) -> None:
        n = self._length()
        if n:
            self._read(n)

    def _reset(self) -> None:
        """Hard-reset the connection (RST, not FIN), as a failing network does."""
        self.req.status = 0
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()             # drops the last file reference, so close() is real
        self.connection.close()

    def _send(self, status: int, body: bytes = b"", ctype: Optional[str] = None,
              headers: Optional[Dict[str, str]] = None, close: bool = False) -> None:
        self.req.status = status
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in list((headers or {}).items()) + list(self.extra.items()):
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")   # also sets close_connection
        with self.answering:
            self.end_headers()
            if body:
                self.wfile.write(body)
            # Idle from here: the client may already hold the whole answer.
            self.idle = not self.close_connection

    def _json(self, status: int, obj: Any, headers: Optional[Dict[str, str]] = None,
              close: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8",
                   headers, close)

    def _xml_error(self, status: int, code: str, message: str, early: bool = False,
                   **extra: str) -> None:
        """An S3 error. early=True: answered before reading the body, then the
        connection is closed, so a client still sending gets a reset mid-body
        (what object storage does to an expired or refused PUT)."""
        self._send(status, _s3_error(code, message, **extra), "application/xml", close=early)

    def _apply_fault(self, f: _Fault) -> bool:
        """Carry out a fault; True if it answered the request (nothing more to do)."""
        if f.delay and self.fake._stopping.wait(f.delay):
            raise _Dropped()
        if f.reset_after is not None:
            self._read(min(f.reset_after, self._length() or 0))
            self._reset()
            return True
        self.extra.update(f.headers or {})
        if f.status is None and not f.non_json and f.body is None:
            return False               # headers, expire, wrong_etag: the handler goes on
        self._drain()
        status = f.status or 200
        if isinstance(f.body, dict):
            body, ctype = json.dumps(f.body).encode(), "application/json"
        elif f.body is not None:       # e.g. truncated JSON: labelled as the plane labels it
            body = f.body.encode() if isinstance(f.body, str) else f.body
            ctype = ("text/html" if f.non_json else
                     "application/json" if self.plane == "api" else "application/xml")
        elif f.non_json:
            body, ctype = _html_page(status), "text/html"
        elif self.plane == "storage":
            body, ctype = _s3_error(_S3_CODES.get(status, "InternalError"),
                                    http.client.responses.get(status, "Error")), "application/xml"
        else:
            message = http.client.responses.get(status, "Error")
            body = json.dumps({"success": False, "message": message}).encode()
            ctype = "application/json"
        # A chunked body was not drained: the connection cannot carry another request.
        self._send(status, body, ctype, close="transfer-encoding" in self.req.headers)
        return True

    # -- the API plane --------------------------------------------------------

    def _api(self) -> None:
        allowed, limit_headers = self.fake._count_call()   # every API answer carries these
        self.extra.update(limit_headers)
        n = self._length()
        if n is None and self.headers.get("Transfer-Encoding"):
            return self._json(411, {"success": False, "message": "Content-Length required"}, close=True)
        if (n or 0) > _API_BODY_CAP:
            return self._json(413, {"success": False, "message": "request entity too large"},
                              close=True)
        raw, _ = self._read(n or 0, keep=True)
        body: Any = None
        # Like the service's JSON parser: bodies not declared as JSON are ignored.
        if raw and self.headers.get("Content-Type", "").startswith("application/json"):
            try:
                body = self.req.json = json.loads(raw.decode("utf-8"))
            except ValueError:
                return self._json(400, {"success": False, "message": "Invalid JSON body"})
        if not allowed:
            retry_after = limit_headers["RateLimit"].rsplit("t=", 1)[1]
            return self._json(429, {"success": False, "message": "Too many requests, please try "
                                    "again later."}, {"Retry-After": retry_after})
        for method, pattern, name in _API_ROUTES:
            m = re.fullmatch(pattern, self.req.path)
            if m and method == self.command:
                break
        else:
            return self._json(404, {"success": False, "message": "Route not found: %s %s"
                                    % (self.command, self.req.path)})
        if name not in _PUBLIC:
            key = self.headers.get("Authorization")
            if key is None or not hmac.compare_digest(key.encode(), self.fake.api_key.encode()):
                message = "API key missing" if key is None else "Invalid API key"
                return self._json(401, {"success": False, "message": message})
        try:
            result = getattr(self, "_api_" + name)(body if isinstance(body, dict) else {},
                                                   *[unquote(g) for g in m.groups()])
        except _ApiError as e:
            result = (e.status, {"success": False, "message": e.message})
        if result is not None:         # public_download answers by itself
            self._json(*result)

    def _folder(self, folder_id: str) -> dict:
        folder = self.fake.folders.get(folder_id)
        if folder is None:
            raise _ApiError(404, "Folder not found")
        return folder

    def _file(self, file_id: str) -> FakeFile:
        f = self.fake.files.get(file_id)
        if f is None:
            raise _ApiError(404, "File not found")
        return f

    def _api_presign(self, body: dict, folder_id: str) -> Tuple[int, dict]:
        metas = body.get("filesMetadata")
        if not isinstance(metas, list) or not metas:
            raise _ApiError(400, "filesMetadata must be a non-empty list")
        if len(metas) > self.fake.max_batch:
            raise _ApiError(400, "at most %d files per request" % self.fake.max_batch)
        checked = [_check_meta(meta) for meta in metas]
        for name, size, _ in checked:
            if size > _MAX_SINGLE_PUT:
                raise _ApiError(400, "%s is over 5 GiB: use a multipart upload" % name)
        fake = self.fake
        with fake._lock:
            folder = self._folder(folder_id)
            rows = [fake._new_file(folder, name, size, mime, False) for name, size, mime in checked]
        urls = [{"id": f.id, "url": fake._presign("PUT", f.s3_key, mime), "s3Key": f.s3_key}
                for f, (_, _, mime) in zip(rows, checked)]
        return 200, {"success": True, "urls": urls}

    def _api_confirm(self, body: dict) -> Tuple[int, dict]:
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise _ApiError(400, "ids must be a non-empty list of file ids")
        with self.fake._lock:         # all or nothing: check every id first
            rows = [self._file(i) for i in ids]
            for f in rows:
                if f.stored is None:
                    raise _ApiError(400, "File %s was never uploaded to storage" % f.id)
            for f in rows:
                f.uploaded = True
        return 200, {"success": True, "message": "Upload confirmed", "ids": ids}

    def _api_initiate(self, body: dict, folder_id: str) -> Tuple[int, dict]:
        name, size, mime = _check_meta(body.get("fileMetadata"))
        fake = self.fake
        part_size = fake._part_size_for(size)
        if part_size > _MAX_PART_SIZE:
            raise _ApiError(400, "file too large for a multipart upload")
        with fake._lock:
            folder = self._folder(folder_id)
            f = fake._new_file(folder, name, size, mime, True)
            up = FakeMultipart(secrets.token_urlsafe(48), f.id, f.s3_key, _BUCKET, size, part_size)
            fake.multipart[up.upload_id] = up
        data = {"fileId": f.id, "uploadId": up.upload_id, "key": up.key, "bucket": up.bucket,
                "partSize": part_size,
                "parts": [{"partNumber": n, "url": fake._presign("PUT", up.key, mime, up.upload_id, n)}
                          for n in range(1, up.part_count + 1)]}
        if fake.initiate_transform is not None:
            data = fake.initiate_transform(data)
        return 200, {"success": True, "data": data}

    def _upload_for(self, body: dict) -> FakeMultipart:
        """The multipart upload a complete/abort body names (caller holds the lock)."""
        for k in ("bucket", "key", "uploadId", "fileId"):
            if not isinstance(body.get(k), str) or not body[k]:
                raise _ApiError(400, "%s is required" % k)
        up = self.fake.multipart.get(body["uploadId"])
        if up is None:
            raise _ApiError(404, "NoSuchUpload: the upload does not exist")
        if (body["bucket"], body["key"], body["fileId"]) != (up.bucket, up.key, up.file_id):
            raise _ApiError(400, "bucket, key and fileId do not match the upload")
        return up

    def _api_complete(self, body: dict) -> Tuple[int, dict]:
        parts = body.get("parts")
        fake = self.fake
        with fake._lock:
            up = self._upload_for(body)
            if not isinstance(parts, list) or not parts or not all(
                    isinstance(p, dict) and isinstance(p.get("PartNumber"), int)
                    and isinstance(p.get("ETag"), str) for p in parts):
                raise _ApiError(400, "parts must be a list of {PartNumber, ETag}")
            numbers = [p["PartNumber"] for p in parts]
            if numbers != sorted(set(numbers)):
                raise _ApiError(400, "InvalidPartOrder: parts must be in ascending PartNumber order")
            if up.state == "aborted":
                raise _ApiError(404, "NoSuchUpload: the upload was aborted")
            if numbers != list(range(1, up.part_count + 1)):
                raise _ApiError(400, "InvalidPart: expected parts 1..%d" % up.part_count)
            for p in parts:           # S3 accepts ETags with or without their quotes
                if up.etags.get(p["PartNumber"], "").strip('"') != p["ETag"].strip('"'):
                    raise _ApiError(400, "InvalidPart: part %d was not uploaded with ETag %s"
                                    % (p["PartNumber"], p["ETag"]))
            if up.state == "open":    # completing twice (a retried call) is fine, as on S3
                f = fake.files[up.file_id]
                digests = [up.parts[n][1] for n in numbers]
                if fake.keep_bytes:
                    f.data = b"".join(up.parts[n][2] or b"" for n in numbers)
                    f.md5 = _md5_hex(f.data)
                elif len(numbers) == 1 and digests[0] is not None:
                    f.md5 = digests[0]
                f.stored = sum(up.parts[n][0] for n in numbers)
                f.uploaded = True
                up.state = "completed"
        return 200, {"success": True, "message": "Upload completed",
                     "data": {"fileId": up.file_id, "key": up.key, "bucket": up.bucket,
                              "location": "%s/%s/%s" % (fake.storage_url, up.bucket, up.key)}}

    def _api_abort(self, body: dict) -> Tuple[int, dict]:
        with self.fake._lock:
            up = self._upload_for(body)
            if up.state == "completed":
                raise _ApiError(400, "the upload is already completed")
            up.state = "aborted"      # storage frees the parts; keep their sizes for tests
            up.parts = {n: (size, md5, None) for n, (size, md5, _) in up.parts.items()}
        return 200, {"success": True, "message": "Upload aborted"}

    def _api_list_files(self, body: dict, folder_id: str) -> Tuple[int, dict]:
        with self.fake._lock:
            self._folder(folder_id)
            rows = [self.fake._file_json(f) for f in self.fake.files.values()
                    if f.folder_id == folder_id and f.uploaded]
        return 200, {"success": True, "data": rows}

    def _api_get_file(self, body: dict, file_id: str) -> Tuple[int, dict]:
        with self.fake._lock:
            return 200, {"success": True, "data": {"file": self.fake._file_json(self._file(file_id))}}

    def _api_delete_file(self, body: dict, file_id: str) -> Tuple[int, dict]:
        with self.fake._lock:
            f = self._file(file_id)
            del self.fake.files[file_id]
            self.fake._keys.pop(f.s3_key, None)
            self.fake._links.pop(f.link or "", None)
        return 200, {"success": True, "message": "File deleted"}

    def _api_signed_url(self, body: dict, file_id: str) -> Tuple[int, dict]:
        with self.fake._lock:
            f = self._file(file_id)
            if not f.uploaded:
                raise _ApiError(400, "File is not uploaded")
        return 200, {"success": True, "url": self.fake._presign("GET", f.s3_key)}

    def _api_create_link(self, body: dict) -> Tuple[int, dict]:
        file_id = body.get("fileId")
        if not isinstance(file_id, str) or not file_id:
            raise _ApiError(400, "fileId is required")
        with self.fake._lock:
            f = self._file(file_id)
            if not f.uploaded:
                raise _ApiError(400, "File is not uploaded")
            if f.link is None:
                f.link = secrets.token_urlsafe(12)
                self.fake._links[f.link] = f.id
        return 200, {"success": True, "link": f.link, "message": "Permanent link created"}

    def _api_get_link(self, body: dict, file_id: str) -> Tuple[int, dict]:
        with self.fake._lock:
            f = self._file(file_id)
            if f.link is None:
                raise _ApiError(404, "No permanent link for this file")
        return 200, {"success": True, "data": {"link": f.link, "fileId": f.id}}

    def _api_delete_link(self, body: dict, file_id: str) -> Tuple[int, dict]:
        with self.fake._lock:
            f = self._file(file_id)
            if f.link is None:
                raise _ApiError(404, "No permanent link for this file")
            self.fake._links.pop(f.link, None)
            f.link = None
        return 200, {"success": True, "message": "Permanent link deleted"}

    def _api_public_download(self, body: dict, link: str) -> None:
        with self.fake._lock:
            f = self.fake.files.get(self.fake._links.get(link, ""))
        if f is None or not f.uploaded:
            raise _ApiError(404, "Link not found")
        if f.data is None:
            raise _ApiError(404, "this fake did not keep the bytes (keep_bytes=False)")
        self._send(200, f.data, f.mime_type)

    def _api_create_project(self, body: dict) -> Tuple[int, dict]:
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            raise _ApiError(400, "title is required")
        with self.fake._lock:
            project = self.fake._new_project(title)
        return 200, {"success": True, "projectId": project["id"], "message": "Project created"}

    def _api_list_projects(self, body: dict, page: str) -> Tuple[int, dict]:
        n = int(page)
        if n < 1:
            raise _ApiError(400, "page starts at 1")
        with self.fake._lock:
            rows = list(self.fake.projects.values())[(n - 1) * 20:n * 20]
        return 200, {"success": True, "data": rows}

    def _row(self, what: str, table: Dict[str, dict], row_id: str,
             delete: bool = False) -> Tuple[int, dict]:
        """GET or DELETE one project or folder."""
        with self.fake._lock:
            row = table.pop(row_id, None) if delete else table.get(row_id)
        if row is None:
            raise _ApiError(404, "%s not found" % what.capitalize())
        if delete:
            return 200, {"success": True, "message": "%s deleted" % what.capitalize()}
        return 200, {"success": True, "data": {what: row}}

    def _api_get_project(self, body: dict, project_id: str) -> Tuple[int, dict]:
        return self._row("project", self.fake.projects, project_id)

    def _api_delete_project(self, body: dict, project_id: str) -> Tuple[int, dict]:
        return self._row("project", self.fake.projects, project_id, delete=True)

    def _api_create_folder(self, body: dict) -> Tuple[int, dict]:
        title, project_id = body.get("title"), body.get("projectId")
        private = body.get("isPrivate", False)
        if not isinstance(title, str) or not title.strip():
            raise _ApiError(400, "title is required")
        if not isinstance(private, bool):
            raise _ApiError(400, "isPrivate must be a boolean")
        with self.fake._lock:
            if project_id not in self.fake.projects:
                raise _ApiError(404, "Project not found")
            folder = self.fake._new_folder(title, project_id, private)
        return 200, {"success": True, "folderId": folder["id"], "message": "Folder created"}

    def _api_list_folders(self, body: dict, project_id: str) -> Tuple[int, dict]:
        with self.fake._lock:
            if project_id not in self.fake.projects:
                raise _ApiError(404, "Project not found")
            rows = [f for f in self.fake.folders.values() if f["projectId"] == project_id]
        return 200, {"success": True, "data": rows}

    def _api_get_folder(self, body: dict, folder_id: str) -> Tuple[int, dict]:
        return self._row("folder", self.fake.folders, folder_id)

    def _api_delete_folder(self, body: dict, folder_id: str) -> Tuple[int, dict]:
        return self._row("folder", self.fake.folders, folder_id, delete=True)

    # -- the storage plane ------------------------------------------------------

    def _storage(self, fault: Optional[_Fault]) -> None:
        fake, req = self.fake, self.req
        if self.command not in ("PUT", "GET"):
            return self._xml_error(405, "MethodNotAllowed", "The specified method is not "
                                   "allowed against this resource.", early=True)
        # Refusals decided on the headers alone are answered before the body is
        # read, as object storage does, and the connection is then closed.
        if "authorization" in req.headers:
            return self._xml_error(400, "InvalidArgument", "Only one auth mechanism allowed; only "
                                   "the X-Amz-Algorithm query parameter, Signature query string "
                                   "parameter or the Authorization header should be specified",
                                   early=True, ArgumentName="Authorization")
        n = self._length()
        if self.command == "PUT" and (n is None or "transfer-encoding" in req.headers):
            return self._xml_error(411, "MissingContentLength", "You must provide the "
                                   "Content-Length HTTP header.", early=True)
        if fault is not None and fault.expire:
            with fake._lock:
                fake._expired.add(req.query.get("X-Amz-Signature", ""))
        problem = fake._check_url(self.command, req.path, req.query, req.headers.get("content-type"))
        if problem is not None:
            return self._xml_error(403, problem[0], problem[1], early=True)
        key = unquote(req.path.split("/", 2)[2]) if req.path.count("/") >= 2 else ""
        if self.command == "GET":
            return self._storage_get(key)
        upload_id = req.query.get("uploadId")
        if upload_id is None:
            return self._put_object(key, n or 0, fault)
        return self._put_part(key, upload_id, req.query.get("partNumber", ""), n or 0, fault)

    def _storage_get(self, key: str) -> None:
        with self.fake._lock:
            f = self.fake.files.get(self.fake._keys.get(key, ""))
        if f is None or f.stored is None:
            return self._xml_error(404, "NoSuchKey", "The specified key does not exist.")
        if f.data is None:
            return self._xml_error(501, "NotImplemented", "the fake did not keep these bytes")
        self._send(200, f.data, f.mime_type, {"ETag": '"%s"' % f.md5})

    def _body(self, n: int, fault: Optional[_Fault]) -> Tuple[Optional[bytes], Optional[str], str]:
        """Read a PUT body as the fake's mode says; return (data, md5, ETag)."""
        fake = self.fake
        if fake.discard:               # never the bottleneck: no hashing, no copy
            self._read(n)
            with fake._lock:
                fake._discard_count += 1
                return None, None, '"discard-%d"' % fake._discard_count
        corrupt = fault is not None and fault.wrong_etag
        data, md5 = self._read(n, keep=fake.keep_bytes, digest=True, corrupt=corrupt)
        if corrupt and n == 0:        # nothing to damage: a stray byte arrives instead
            data, md5 = (b"\xff" if fake.keep_bytes else None), _md5_hex(b"\xff")
        return data, md5, '"%s"' % md5

    def _put_object(self, key: str, n: int, fault: Optional[_Fault]) -> None:
        fake = self.fake
        with fake._lock:
            f = fake.files.get(fake._keys.get(key, ""))
        if f is None or f.multipart:
            return self._xml_error(404, "NoSuchKey", "No presigned upload for this key.", early=True)
        if n != f.size:
            return self._xml_error(400, "BadRequest", "Content-Length %d does not match the size "
                                   "declared at presign (%d)" % (n, f.size), early=True)
        data, md5, etag = self._body(n, fault)
        with fake._lock:              # a PUT replaces the object, as on S3
            f.data, f.md5 = data, md5
            f.stored = n if data is None else len(data)
        self._send(200, b"", None, {"ETag": etag})

    def _put_part(self, key: str, upload_id: str, number_text: str, n: int,
                  fault: Optional[_Fault]) -> None:
        fake = self.fake
        with fake._lock:
            up = fake.multipart.get(upload_id)
        if up is None or up.key != key or up.state != "open":
            return self._xml_error(404, "NoSuchUpload", "The specified upload does not exist. The "
                                   "upload ID may be invalid, or the upload may have been aborted "
                                   "or completed.", early=True)
        number = int(number_text) if number_text.isdigit() else 0
        if not 1 <= number <= up.part_count:
            return self._xml_error(400, "InvalidArgument", "Part number must be an integer between "
                                   "1 and %d, inclusive" % up.part_count, early=True)
        expected = up.expected_size(number)
        if n != expected or (number < up.part_count and n < fake.min_part_size):
            code = "EntityTooSmall" if n < expected else "EntityTooLarge"
            return self._xml_error(400, code, "Part %d is %d bytes; this upload's plan needs %d"
                                   % (number, n, expected), early=True)
        data, md5, etag = self._body(n, fault)
        with fake._lock:
            if up.state != "open":    # completed or aborted while the body streamed
                return self._xml_error(404, "NoSuchUpload", "The upload was %s." % up.state)
            up.parts[number] = (n, md5, data)
            up.etags[number] = etag
        self._send(200, b"", None, {"ETag": etag})


# ---------------------------------------------------------------------------
# The base test case: a fresh fake and an isolated environment per test
# ---------------------------------------------------------------------------

class FakeTestCase(unittest.TestCase):
    """Each test gets a running fake (self.fake), a temp dir (self.tmp), no
    FILESLINK_* or proxy variables in the environment, and helpers."""

    fake_options: Dict[str, Any] = {}     # a subclass may set FakeFilesLink options

    def setUp(self) -> None:
        saved = dict(os.environ)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(saved)))
        for name in list(os.environ):
            if name.startswith("FILESLINK_") or name.lower().endswith("_proxy"):
                del os.environ[name]
        self.fake = FakeFilesLink(**self.fake_options).start()
        self.addCleanup(self.fake.stop)
        self.tmp = tempfile.mkdtemp(prefix="fileslink-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def make_file(self, name: str, size: int, seed: int = 0) -> Tuple[str, bytes]:
        """Write `size` deterministic pseudo-random bytes to tmp/name."""
        data = pseudo_random_bytes(size, seed)
        path = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path, data

    def client(self, **kw: Any) -> "fileslink.Client":
        """A Client on the fake with a short timeout and a fast Retry (kw overrides)."""
        options: Dict[str, Any] = {
            "api_key": self.fake.api_key, "base_url": self.fake.base_url, "timeout": 5,
            "retry": fileslink.Retry(attempts=3, backoff=0.01, max_backoff=0.05)}
        options.update(kw)
        client = fileslink.Client(**options)
        self.addCleanup(client.close)
        return client


# ---------------------------------------------------------------------------
# Tests of the fake itself (it must be right before it can judge the client)
# ---------------------------------------------------------------------------

def _http(url: str, method: str = "GET", body: Optional[bytes] = None,
          headers: Optional[Dict[str, str]] = None) -> Tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection, straight through http.client."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        target = parts.path + ("?" + parts.query if parts.query else "")
        try:
            conn.request(method, target, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass                       # an early answer (a refused PUT) may still be there
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


class TestFake(FakeTestCase):

    def api(self, method: str, path: str, obj: Any = None, key: Optional[str] = "default",
            fake: Optional[FakeFilesLink] = None) -> Tuple[int, http.client.HTTPMessage, Any]:
        fake = fake or self.fake
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = fake.api_key if key == "default" else key
        body = None if obj is None else json.dumps(obj).encode()
        status, h, raw = _http(fake.base_url + path, method, body, headers)
        return status, h, json.loads(raw.decode()) if raw.startswith(b"{") else raw

    def presign(self, *sizes: int, mime: Optional[str] = "application/octet-stream") -> List[dict]:
        metas = [{"name": "f%d.bin" % i, "size": s} for i, s in enumerate(sizes)]
        for m in metas:
            if mime:
                m["mimeType"] = mime
        status, _, obj = self.api("POST", "/v1/files/" + self.fake.folder_id, {"filesMetadata": metas})
        self.assertEqual(status, 200, obj)
        return obj["urls"]

    def put(self, url: str, data: bytes, ctype: Optional[str] = "application/octet-stream",
            **headers: str) -> Tuple[int, http.client.HTTPMessage, bytes]:
        h = dict(headers)
        if ctype:
            h["Content-Type"] = ctype
        return _http(url, "PUT", data, h)

    def test_presign_put_confirm_round_trip(self) -> None:
        a, b = self.presign(3, 0)
        self.assertTrue(a["url"].startswith(self.fake.storage_url + "/"))
        self.assertEqual(self.api("POST", "/v1/files/confirm-upload", {"ids": [a["id"]]})[0], 400)
        for entry, data in ((a, b"abc"), (b, b"")):
            status, headers, _ = self.put(entry["url"], data)
            self.assertEqual(status, 200)
            self.assertEqual(headers["ETag"], '"%s"' % _md5_hex(data))
        status, _, obj = self.api("POST", "/v1/files/confirm-upload", {"ids": [a["id"], b["id"]]})
        self.assertEqual((status, obj["success"]), (200, True))
        self.assertEqual(self.fake.files[a["id"]].data, b"abc")
        self.assertTrue(self.fake.files[b["id"]].uploaded)
        _, _, listing = self.api("GET", "/v1/files/folder/" + self.fake.folder_id)
        self.assertEqual(sorted(r["id"] for r in listing["data"]), sorted([a["id"], b["id"]]))
        _, _, got = self.api("GET", "/v1/files/" + a["id"])
        row = got["data"]["file"]
        self.assertEqual((row["fileSize"], row["s3Key"], row["uploaded"]), (3, a["s3Key"], True))

    def test_api_refuses_missing_or_wrong_key_and_bad_input(self) -> None:
        folder = "/v1/files/" + self.fake.folder_id
        cases = [
            ("no key", "GET", folder.replace("files/", "files/folder/"), None, None, 401),
            ("wrong key", "GET", folder.replace("files/", "files/folder/"), None, "nope", 401),
            ("unknown route", "GET", "/v1/nothing", None, "default", 404),
            ("unknown file", "GET", "/v1/files/no-such-id", None, "default", 404),
            ("unknown folder", "POST", "/v1/files/no-such-folder",
             {"filesMetadata": [{"name": "a", "size": 1}]}, "default", 404),
            ("no metadata", "POST", folder, {}, "default", 400),
            ("negative size", "POST", folder,
             {"filesMetadata": [{"name": "a", "size": -1}]}, "default", 400),
            ("too many files", "POST", folder,
             {"filesMetadata": [{"name": "a", "size": 1}] * 101}, "default", 400),
        ]
        for label, method, path, obj, key, want in cases:
            with self.subTest(label):
                status, _, body = self.api(method, path, obj, key=key)
                self.assertEqual(status, want)
                self.assertEqual(body["success"], False)
                self.assertTrue(body["message"])

    def test_tampered_url_or_other_content_type_is_refused(self) -> None:
        url = self.presign(4, mime="text/plain")[0]["url"]
        sig = re.search(r"X-Amz-Signature=([0-9a-f]+)", url).group(1)
        cases = [
            ("signature", url.replace(sig, sig[::-1]), "text/plain"),
            ("lifetime", url.replace("X-Amz-Expires=900", "X-Amz-Expires=9000"), "text/plain"),
            ("path", url.replace("/f0.bin", "/f1.bin"), "text/plain"),
            ("content type", url, "application/octet-stream"),
            ("no content type", url, None),
        ]
        for label, bad, ctype in cases:
            with self.subTest(label):
                status, _, body = self.put(bad, b"data", ctype)
                self.assertEqual(status, 403)
                self.assertIn(b"<Code>SignatureDoesNotMatch</Code>", body)
        self.assertEqual(self.put(url, b"data", "text/plain")[0], 200)

    def test_expired_url_is_refused_before_the_body_is_read(self) -> None:
        url = self.presign(8 * MiB)[0]["url"]
        self.fake.advance_clock(self.fake.url_ttl + 1)
        # Like object storage, the fake answers from the headers and hangs up:
        # the sender may see a reset mid-body, yet the 403 is there to read.
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.addCleanup(conn.close)
        try:
            conn.request("PUT", parts.path + "?" + parts.query, body=bytes(8 * MiB),
                         headers={"Content-Type": "application/octet-stream"})
        except (ConnectionResetError, BrokenPipeError):
            pass
        resp = conn.getresponse()
        body = resp.read()
        self.assertEqual(resp.status, 403)
        self.assertIn(b"<Code>AccessDenied</Code><Message>Request has expired</Message>", body)
        self.assertLess(self.fake.log[-1].body_size, MiB)

    def test_put_without_length_or_with_authorization_is_refused(self) -> None:
        entry = self.presign(4)[0]
        url = entry["url"]
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.addCleanup(conn.close)
        try:
            conn.request("PUT", parts.path + "?" + parts.query, body=iter([b"da", b"ta"]),
                         headers={"Content-Type": "application/octet-stream"}, encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            pass                       # refused from the headers; the 411 is there to read
        resp = conn.getresponse()
        self.assertEqual(resp.status, 411)
        self.assertIn(b"MissingContentLength", resp.read())
        status, _, body = self.put(url, b"data", Authorization=self.fake.api_key)
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>InvalidArgument</Code>", body)
        self.assertEqual(self.put(url, b"dat")[0], 400)      # not the size declared
        self.assertIsNone(self.fake.files[entry["id"]].stored)   # nothing refused was stored

    def test_rate_limit_headers_count_down_then_429(self) -> None:
        with FakeFilesLink(rate_limit=(3, 60)) as fake:
            path = "/v1/folders/project/" + fake.project_id
            for left in (2, 1, 0):
                status, headers, _ = self.api("GET", path, fake=fake)
                self.assertEqual(status, 200)
                self.assertEqual(headers["ratelimit-policy"], '"3-in-1min"; q=3; w=60')
                self.assertRegex(headers["ratelimit"], r'^"3-in-1min"; r=%d; t=(60|59)$' % left)
            status, headers, body = self.api("GET", path, fake=fake)
            self.assertEqual(status, 429)
            self.assertIn(headers["Retry-After"], ("59", "60"))
            fake.advance_clock(61)                          # the window resets
            self.assertEqual(self.api("GET", path, fake=fake)[0], 200)

    def test_multipart_plan_for_one_tebibyte_then_abort(self) -> None:
        size = 1024 ** 4
        status, _, obj = self.api("POST", "/v1/files/multipart/%s/initiate" % self.fake.folder_id,
                                  {"fileMetadata": {"name": "huge.bin", "size": size,
                                                    "mimeType": "application/octet-stream"}})
        self.assertEqual(status, 200)
        data = obj["data"]
        part_size, parts = data["partSize"], data["parts"]
        self.assertLessEqual(len(parts), 10000)
        self.assertGreaterEqual(part_size, 5 * MiB)
        self.assertEqual(part_size % MiB, 0)
        self.assertEqual([p["partNumber"] for p in parts], list(range(1, len(parts) + 1)))
        self.assertTrue((len(parts) - 1) * part_size < size <= len(parts) * part_size)
        ids = {k: data[k] for k in ("bucket", "key", "uploadId", "fileId")}
        self.assertEqual(self.api("POST", "/v1/files/multipart/abort", ids)[0], 200)
        self.assertEqual(self.fake.multipart[data["uploadId"]].state, "aborted")

    def test_multipart_round_trip_checks_sizes_order_and_etags(self) -> None:
        data = pseudo_random_bytes(11 * MiB, seed=3)
        _, _, obj = self.api("POST", "/v1/files/multipart/%s/initiate" % self.fake.folder_id,
                             {"fileMetadata": {"name": "v.bin", "size": len(data),
                                               "mimeType": "video/mp4"}})
        plan = obj["data"]
        self.assertEqual((plan["partSize"], len(plan["parts"])), (5 * MiB, 3))
        urls = [p["url"] for p in plan["parts"]]
        status, _, body = self.put(urls[0], data[:MiB], "video/mp4")
        self.assertEqual((status, b"EntityTooSmall" in body), (400, True))
        etags = []
        for i, url in enumerate(urls):
            status, headers, _ = self.put(url, data[i * 5 * MiB:(i + 1) * 5 * MiB], "video/mp4")
            self.assertEqual(status, 200)
            etags.append(headers["ETag"])
        ids = {k: plan[k] for k in ("bucket", "key", "uploadId", "fileId")}
        parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]
        for label, bad in (("order", parts[::-1]), ("missing", parts[:2]),
                           ("etag", parts[:2] + [{"PartNumber": 3, "ETag": '"%s"' % ("0" * 32)}])):
            with self.subTest(label):
                self.assertEqual(self.api("POST", "/v1/files/multipart/complete",
                                          dict(ids, parts=bad))[0], 400)
        status = self.api("POST", "/v1/files/multipart/complete", dict(ids, parts=parts))[0]
        self.assertEqual(status, 200)
        f = self.fake.files[plan["fileId"]]
        self.assertEqual((f.uploaded, f.data == data, f.md5), (True, True, _md5_hex(data)))
        self.assertEqual(self.put(urls[0], data[:5 * MiB], "video/mp4")[0], 404)   # upload is closed

    def test_initiate_transform_rewrites_the_answer(self) -> None:
        self.fake.initiate_transform = lambda d: {"id": d["fileId"], "UploadId": d["uploadId"],
                                                   "urls": [p["url"] for p in d["parts"]]}
        _, _, obj = self.api("POST", "/v1/files/multipart/%s/initiate" % self.fake.folder_id,
                             {"fileMetadata": {"name": "a", "size": 1}})
        self.assertEqual(sorted(obj["data"]), ["UploadId", "id", "urls"])

    def test_injected_faults_are_consumed_in_order(self) -> None:
        entry = self.presign(5)[0]
        url, stored = entry["url"], self.fake.files[entry["id"]]
        self.fake.inject("storage", status=503, headers={"Retry-After": "1"}, times=2)
        self.fake.inject("storage", wrong_etag=True)
        for _ in range(2):
            status, headers, body = self.put(url, b"hello")
            self.assertEqual((status, headers["Retry-After"]), (503, "1"))
            self.assertIn(b"<Code>SlowDown</Code>", body)
        status, headers, _ = self.put(url, b"hello")
        self.assertEqual(status, 200)
        # Damaged in transit: storage holds other bytes, and its ETag is honest about them.
        self.assertNotEqual(headers["ETag"], '"%s"' % _md5_hex(b"hello"))
        self.assertEqual((headers["ETag"], len(stored.data)), ('"%s"' % stored.md5, 5))
        self.assertNotEqual(stored.data, b"hello")
        self.assertEqual(self.put(url, b"hello")[1]["ETag"], '"%s"' % _md5_hex(b"hello"))
        self.fake.inject("storage", reset_after=2)
        with self.assertRaises((ConnectionError, http.client.HTTPException)):
            self.put(url, b"hello")
        self.assertEqual((self.fake.log[-1].status, self.fake.log[-1].body_size), (0, 2))
        self.fake.inject("api", non_json=True, path_contains="/folders/")
        self.assertEqual(self.api("GET", "/v1/files/folder/" + self.fake.folder_id)[0], 200)
        status, headers, body = self.api("GET", "/v1/folders/" + self.fake.folder_id)
        self.assertEqual((status, headers["Content-Type"], body[:15]),
                         (200, "text/html", b"<!DOCTYPE html>"))
        self.assertEqual(len(self.fake.faults_fired), 5)

    def test_expire_fault_kills_the_url_for_good(self) -> None:
        url = self.presign(5)[0]["url"]
        self.fake.inject("storage", expire=True)
        for _ in range(2):
            status, _, body = self.put(url, b"hello")
            self.assertEqual(status, 403)
            self.assertIn(b"Request has expired", body)

    def test_discard_mode_counts_bytes_without_hashing(self) -> None:
        with FakeFilesLink(discard=True) as fake:
            self.fake = fake
            entry = self.presign(3 * MiB + 1)[0]
            status, headers, _ = self.put(entry["url"], bytes(3 * MiB + 1))
            self.assertEqual(status, 200)
            self.assertNotRegex(headers["ETag"], r'^"[0-9a-f]{32}"$')
            f = fake.files[entry["id"]]
            self.assertEqual((f.stored, f.data, f.md5), (3 * MiB + 1, None, None))

    def test_stop_cuts_an_injected_stall_short(self) -> None:
        fake = FakeFilesLink().start()
        fake.inject("api", delay=30)
        outcome: List[object] = []
        t = threading.Thread(target=lambda: outcome.append(
            self._try(lambda: _http(fake.base_url + "/v1/projects/1"))))
        started = time.monotonic()
        t.start()
        while not fake.log:            # wait until the request is in the stall
            time.sleep(0.005)
        fake.stop()
        t.join(5)
        self.assertFalse(t.is_alive())
        self.assertLess(time.monotonic() - started, 5)

    @staticmethod
    def _try(fn: Callable[[], object]) -> object:
        try:
            return fn()
        except Exception as e:
            return e

    def test_chaos_is_reproducible_from_its_seed(self) -> None:
        runs = []
        for _ in range(2):
            with FakeFilesLink() as fake:
                fake.chaos(7, api_rate=0.5)
                for _ in range(20):
                    self._try(lambda: _http(fake.base_url + "/v1/projects/1",
                                            headers={"Authorization": fake.api_key}))
                runs.append([what for _, _, _, what in fake.faults_fired])
        self.assertEqual(runs[0], runs[1])
        self.assertTrue(3 <= len(runs[0]) <= 17)

    def test_public_link_and_signed_url_serve_the_bytes(self) -> None:
        entry = self.presign(5, mime="text/plain")[0]
        self.put(entry["url"], b"hello", "text/plain")
        self.api("POST", "/v1/files/confirm-upload", {"ids": [entry["id"]]})
        _, _, obj = self.api("POST", "/v1/p", {"fileId": entry["id"]})
        status, headers, body = _http(self.fake.base_url + "/v1/p/" + obj["link"])   # no key
        self.assertEqual((status, headers["Content-Type"], body), (200, "text/plain", b"hello"))
        _, _, signed = self.api("GET", "/v1/files/signed/" + entry["id"])
        self.assertEqual(_http(signed["url"])[2], b"hello")

    def test_projects_and_folders(self) -> None:
        _, _, p = self.api("POST", "/v1/projects", {"title": "P"})
        _, _, f = self.api("POST", "/v1/folders", {"title": "F", "projectId": p["projectId"],
                                                    "isPrivate": True})
        _, _, listing = self.api("GET", "/v1/folders/project/" + p["projectId"])
        self.assertEqual([x["id"] for x in listing["data"]], [f["folderId"]])
        _, _, projects = self.api("GET", "/v1/projects/1")
        self.assertEqual(len(projects["data"]), 2)

    def test_latency_is_paid_again_by_each_new_connection(self) -> None:
        with FakeFilesLink(latency=0.05) as fake:
            parts = urlsplit(fake.base_url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            self.addCleanup(conn.close)
            took = []
            for _ in range(2):
                started = time.monotonic()
                conn.request("GET", "/v1/projects/1", headers={"Authorization": fake.api_key})
                conn.getresponse().read()
                took.append(time.monotonic() - started)
            self.assertGreaterEqual(took[0], 0.1)       # handshake + request
            self.assertGreaterEqual(took[1], 0.05)      # request only: the connection was kept

    def test_close_idle_connections_closes_kept_alive_sockets(self) -> None:
        parts = urlsplit(self.fake.base_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        self.addCleanup(conn.close)
        conn.request("GET", "/v1/projects/1", headers={"Authorization": self.fake.api_key})
        conn.getresponse().read()
        self.assertEqual(self.fake.close_idle_connections(), 1)
        with self.assertRaises((ConnectionError, http.client.HTTPException)):
            conn.request("GET", "/v1/projects/1", headers={"Authorization": self.fake.api_key})
            conn.getresponse()


# ---- tests of fileslink (merged by the lead) ----


# ---------------------------------------------------------------------------
# Shell entry points: `serve` and `demo`
# ---------------------------------------------------------------------------

def _serve(port: int, quiet: bool) -> int:
    def echo(r: Req) -> None:
        print("%-7s %-6s %s -> %s" % (r.plane, r.method, r.path, r.status or "reset"),
              file=sys.stderr, flush=True)

    fake = FakeFilesLink(port=port)
    fake.on_request = None if quiet else echo
    fake.start()
    print("# A local fake of files.link is running (Ctrl-C stops it). Paste into your shell:")
    print("export FILESLINK_BASE_URL=%s" % fake.base_url)
    print("export FILESLINK_KEY=%s" % fake.api_key)
    print("export FILESLINK_FOLDER=%s" % fake.folder_id)
    if any(name.lower().endswith("_proxy") for name in os.environ):
        print("export NO_PROXY=127.0.0.1,localhost   # a proxy is configured: keep loopback off it")
    print("# project id: %s   object storage: %s" % (fake.project_id, fake.storage_url), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


def _demo() -> int:
    tmp = tempfile.mkdtemp(prefix="fileslink-demo-")
    saved = dict(os.environ)
    try:
        with FakeFilesLink() as fake:
            small, big = os.path.join(tmp, "hello.txt"), os.path.join(tmp, "video.bin")
            local = {"hello.txt": b"Hello from the fileslink demo!\n",
                     "video.bin": pseudo_random_bytes(13 * MiB, seed=1)}
            for path, name in ((small, "hello.txt"), (big, "video.bin")):
                with open(path, "wb") as f:
                    f.write(local[name])
            os.environ.update(FILESLINK_KEY=fake.api_key, FILESLINK_BASE_URL=fake.base_url)
            for name in ("NO_PROXY", "no_proxy"):     # a configured proxy must not see loopback
                os.environ[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1"]))
            argv = ["upload", small, big, "--folder", fake.folder_id, "--threshold", "6M", "--json"]
            print("fileslink demo: a local fake of files.link, API at %s, object storage at %s\n"
                  % (fake.base_url, fake.storage_url))
            print("$ fileslink " + " ".join(argv).replace(tmp + os.sep, ""), flush=True)
            code = fileslink.main(argv)
            sys.stdout.flush()
            print("(exit status %d)\n" % code)
            return _demo_account(fake, local) if code == 0 else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


def _demo_account(fake: FakeFilesLink, local: Dict[str, bytes]) -> int:
    print("Every request the fake received, in order (<folder> = %s):" % fake.folder_id)
    for r in fake.log:
        what = r.path.replace(fake.folder_id, "<folder>")
        if r.plane == "storage":   # the query string is the signature: not worth printing
            what = "<presigned URL> " + ("part %s" % r.query["partNumber"] if "partNumber" in r.query
                                         else "single object") + ", %s bytes" % format(r.body_size, ",")
        print("  %-7s %-6s %-44s %s" % (r.plane, r.method, what, r.status or "reset"))
    ok = True
    print("\nWhat the service now holds:")
    for f in fake.files.values():
        kind = "multipart" if f.multipart else "single-part"
        print("  %s  id=%s  %s bytes  %s  uploaded=%s"
              % (f.name, f.id, format(f.size, ","), kind, f.uploaded))
        for up in fake.multipart.values():
            if up.file_id == f.id:
                for n in sorted(up.parts):
                    size = format(up.parts[n][0], ",")
                    print("      part %d  %s bytes  ETag %s" % (n, size, up.etags[n]))
        good = f.uploaded and f.data == local.get(f.name)
        ok = ok and good
        print("      stored bytes equal the local file: %s" % ("OK" if good else "MISMATCH"))
    if sorted(f.name for f in fake.files.values() if f.uploaded) != sorted(local):
        print("  expected exactly these files uploaded: %s" % ", ".join(sorted(local)))
        ok = False
    print("\n%s" % ("OK: every byte arrived." if ok else "FAILED: see above."))
    return 0 if ok else 1


def _main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="test_fileslink.py", description="The fake files.link "
                                     "server: serve it, or watch a demo upload through it.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the fake until Ctrl-C; prints the env lines to paste")
    serve.add_argument("--port", type=int, default=0, help="API port (default: any free port)")
    serve.add_argument("--quiet", action="store_true", help="do not print each request")
    sub.add_parser("demo", help="upload a small and a multipart file through the CLI code path")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.port, args.quiet)
    return _demo()


if __name__ == "__main__":
    if sys.argv[1:2] in (["serve"], ["demo"]):
        sys.exit(_main(sys.argv[1:]))
    unittest.main()
