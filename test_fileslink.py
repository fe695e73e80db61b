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
import atexit
import asyncio
import base64
import calendar
import contextlib
import copy
import email.utils
import gc
import gzip
import hashlib
import hmac
import html
import http.client
import http.server
import io
import json
import logging
import math
import os
import pathlib
import random
import re
import secrets
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
import unittest
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple
from unittest import mock
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit
import fileslink

MiB = 1024 * 1024

# Child Pythons (the CLI, README commands, resume) share one bytecode cache
# outside the checkout: without it each compiles fileslink.py afresh (with
# PYTHONDONTWRITEBYTECODE=1, as CI shells may set), and the suite's child
# processes cost it half a minute.
if not os.environ.get("PYTHONPYCACHEPREFIX"):
    os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="fileslink-pycache-")
    atexit.register(shutil.rmtree, os.environ["PYTHONPYCACHEPREFIX"], True)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

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
    headers: Optional[Dict[str, Optional[str]]] = None
    reset_after: Optional[int] = None
    delay: Optional[float] = None
    wrong_etag: bool = False
    expire: bool = False
    non_json: bool = False
    times: int = 1
    path_contains: Optional[str] = None
    # How the answer travels (see FakeFilesLink.inject), whoever wrote it:
    interim: Optional[Tuple[int, ...]] = None
    trickle: Optional[float] = None
    trickle_body: bool = False
    gzip: bool = False
    lost: bool = False


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


#: Interim (1xx) answers the fake can send before the final one, with what
#: each carries. http.server in 3.8 has no phrase for 103, hence the table.
_INTERIM = {102: ("Processing", []),
            103: ("Early Hints", [("Link", "</assets/app.css>; rel=preload; as=style")])}

#: The SSE modes of object storage, as `x-amz-server-side-encryption` says
#: them ("SSE-C" answers with the customer-key headers instead). Under every
#: mode but AES256 (SSE-S3) the ETag is not the MD5 of the body.
_SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse", "SSE-C")
_KMS_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/0f0e0d0c-fake-4b1a-9c3e-000000000000"


class _BlackHole:
    """A loopback port where connect() hangs: it listens, never accepts, and
    its accept queue is full, so the kernel drops every new SYN and the client
    retransmits for a minute or more (as with a host behind a firewall that
    drops packets). Linux behaves so; elsewhere open() raises RuntimeError."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._held: List[socket.socket] = []

    def open(self) -> str:
        """Fill the queue; return the origin ("http://127.0.0.1:PORT")."""
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        address = self._listener.getsockname()
        for _ in range(16):            # listen(0) queues one; a few more for other kernels
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.setblocking(False)
            probe.connect_ex(address)
            # On loopback a queued handshake completes in microseconds; one
            # still pending after 0.2 s had its SYN dropped: the queue is full.
            _, ready, _ = select.select([], [probe], [], 0.2)
            if not ready:
                probe.close()
                return "http://127.0.0.1:%d" % address[1]
            self._held.append(probe)
        self.close()
        raise RuntimeError("could not fill the accept queue of a listening socket here")

    def close(self) -> None:
        """Close everything: clients still in connect() are refused at their next SYN."""
        for s in self._held + [self._listener]:
            s.close()
        self._held = []


# ---------------------------------------------------------------------------
# The fake service
# ---------------------------------------------------------------------------

class FakeFilesLink:
    """A local, in-process files.link: API server + object storage server.

    Use as a context manager, or start() / stop(). All state is guarded by
    one lock; the servers answer each connection in its own thread.

    Options (all keywords):
      api_key: the one key the API accepts.
      min_part_size, part_size: storage's minimum part size, and the part size
          initiate hands out (None: the smallest whole MiB giving <= 10,000 parts).
      url_ttl: lifetime of presigned URLs, in seconds of the fake's clock.
      rate_limit: (calls, window seconds) for the API; None: unlimited, but the
          RateLimit headers are still sent.
      latency: seconds added to each request, twice on a new connection.
      discard: storage reads PUT bodies and forgets them (no hashing at all).
      keep_bytes: storage keeps every byte (tests compare them); False keeps
          sizes and MD5s only, in bounded memory (what `serve` runs).
      sse: storage encrypts as S3 does under that mode, one of "AES256"
          (SSE-S3: the ETag stays the MD5), "aws:kms", "aws:kms:dsse" (each PUT,
          part or not, answers `x-amz-server-side-encryption: <mode>` and an
          ETag of 32 hex digits that is NOT the body's MD5: a keyed digest of
          it, deterministic) or "SSE-C" (`x-amz-server-side-encryption-customer-
          algorithm: AES256` and such an ETag; the fake does not ask for the
          customer key). Completing a multipart upload takes those ETags.
      log_limit: keep only the last that many requests in `log` (None: all).
      port: the API's port (0: any free one).
    Faults are scripted with inject() and chaos(); black_hole() sends
    storage traffic to a host that never answers; wait_for() waits on the log.
    """

    #: Files one presign call may carry; more is a 400 (the real cap is not
    #: published; a cap at all keeps clients from sending unbounded batches).
    max_batch = 100

    def __init__(self, *, api_key: str = "fl_test_0123456789abcdef", min_part_size: int = 5 * MiB,
                 part_size: Optional[int] = None, url_ttl: float = 900.0,
                 rate_limit: Optional[Tuple[int, float]] = None, latency: float = 0.0,
                 discard: bool = False, keep_bytes: bool = True, sse: Optional[str] = None,
                 log_limit: Optional[int] = None, port: int = 0) -> None:
        if part_size is not None and part_size < min_part_size:
            raise ValueError("part_size below min_part_size: every non-last part would be refused")
        if sse is not None and sse not in _SSE_MODES:
            raise ValueError("sse must be one of %s" % ", ".join(_SSE_MODES))
        if log_limit is not None and log_limit < 1:
            raise ValueError("log_limit must be >= 1")
        self.api_key = api_key
        self.min_part_size = min_part_size
        self.part_size = part_size
        self.url_ttl = url_ttl
        self.rate_limit = rate_limit
        self.latency = latency
        self.discard = discard
        self.keep_bytes = keep_bytes and not discard
        self.sse = sse
        self.log_limit = log_limit
        self._port = port
        self.initiate_transform: Optional[Callable[[dict], dict]] = None
        #: Called with each Req once it is answered (the `serve` command prints them).
        self.on_request: Optional[Callable[[Req], None]] = None

        self._lock = threading.Lock()
        self._changed = threading.Condition()       # notified on each request logged or answered
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
        self._hole: Optional[_BlackHole] = None
        self._hole_url: Optional[str] = None

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
        if self._hole is not None:
            self._hole.close()
            self._hole, self._hole_url = None, None

    @classmethod
    def for_serve(cls, port: int = 0) -> "FakeFilesLink":
        """The fake as `serve` runs it, for hours of real uploads in bounded
        memory: storage keeps sizes and digests, not bytes (public links and
        signed GETs answer that the bytes were not kept), and the log keeps
        the last 10,000 requests."""
        return cls(port=port, keep_bytes=False, log_limit=10000)

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
        return self._calls("api", path_contains)

    def storage_calls(self, path_contains: Optional[str] = None) -> List[Req]:
        return self._calls("storage", path_contains)

    def _calls(self, plane: str, path_contains: Optional[str]) -> List[Req]:
        with self._lock:
            return [r for r in self.log
                    if r.plane == plane and (path_contains is None or path_contains in r.path)]

    def _logged(self, req: Req) -> None:
        """Log a request as it arrives."""
        with self._lock:
            self.log.append(req)
            if self.log_limit is not None and len(self.log) > self.log_limit:
                del self.log[:-self.log_limit]
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait until predicate() is true, checking it again each time a request
        arrives or is answered; False if `timeout` seconds passed first.
        predicate may read the log (api_calls, log) but not call wait_for."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # -- a storage host that never answers ------------------------------------

    def black_hole(self) -> str:
        """From now on, presign and initiate hand out URLs on a loopback port
        where connect() hangs (see _BlackHole; Linux only, RuntimeError
        elsewhere); returns its origin. The storage server itself keeps
        running; stop() closes the hole."""
        with self._lock:
            if self._hole_url is None:
                hole = _BlackHole()
                self._hole_url = hole.open()
                self._hole = hole
            return self._hole_url

    # -- faults -------------------------------------------------------------

    def inject(self, plane: str, *, status: Optional[int] = None, body: Any = None,
               headers: Optional[Dict[str, Optional[str]]] = None,
               reset_after: Optional[int] = None, delay: Optional[float] = None,
               wrong_etag: bool = False, expire: bool = False, non_json: bool = False,
               interim: Optional[Tuple[int, ...]] = None, trickle: Optional[float] = None,
               trickle_body: bool = False, gzip: bool = False, lost: bool = False,
               times: int = 1, path_contains: Optional[str] = None) -> None:
        """Make the next `times` requests on `plane` whose path contains
        `path_contains` misbehave. Faults queue up in order; each request
        consumes at most one (the first that matches).

        What is answered:
        status: answer it, with a realistic body (S3 XML on storage, JSON on the
            API; `body` overrides: bytes, str, or a dict sent as JSON).
        headers: set on the answer, over the fake's own (Retry-After, Location,
            a hostile `RateLimit`...); names match case-insensitively, and None
            removes that header (e.g. the fake's RateLimit, to send X-RateLimit-*).
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

        How the answer travels (with `status` or without: then the answer the
        fake would give anyway):
        interim: send these 1xx answers first, in order: 102 Processing and/or
            103 Early Hints (with a Link header), each a complete HTTP/1.1 answer.
        trickle: send the answer one byte every `trickle` seconds, from its
            status line on (interim answers included); with trickle_body the
            headers go at once and only the body trickles. Each byte is a TCP
            segment of its own, so a per-socket-operation timeout longer than
            `trickle` never fires; stop() ends a trickle at once.
        gzip: compress the body and label it `Content-Encoding: gzip`, though
            the client never sent Accept-Encoding (a misconfigured proxy).
        lost: read the whole request and carry it out (the folder IS created,
            the upload IS completed), then close the connection without a byte
            of answer, as when a load balancer's idle timeout or a crash cuts
            the answer off. Logged with status 0.
        """
        if plane not in ("api", "storage"):
            raise ValueError("plane must be 'api' or 'storage'")
        if plane == "api" and (wrong_etag or expire):
            raise ValueError("wrong_etag and expire are storage faults")
        if times < 1:
            raise ValueError("times must be >= 1")
        if interim is not None and not all(code in _INTERIM for code in interim):
            raise ValueError("interim answers are 102 and/or 103")
        if trickle is not None and trickle <= 0:
            raise ValueError("trickle must be > 0 seconds per byte")
        if trickle_body and trickle is None:
            raise ValueError("trickle_body needs trickle")
        if lost and (status is not None or body is not None or non_json or reset_after is not None):
            raise ValueError("lost carries out the request itself: no status, body or reset")
        with self._lock:
            self._faults.append(_Fault(
                plane, status=status, body=body, headers=headers, reset_after=reset_after,
                delay=delay, wrong_etag=wrong_etag, expire=expire, non_json=non_json,
                times=times, path_contains=path_contains, interim=tuple(interim or ()) or None,
                trickle=trickle, trickle_body=trickle_body, gzip=gzip, lost=lost))

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
        origin = self._hole_url or self.storage_url
        return "%s%s?%s" % (origin, path, urlencode(query + [("X-Amz-Signature", sig)]))

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

    # -- server-side encryption -------------------------------------------------

    def _etag(self, md5: str) -> str:
        """The ETag storage gives an object or part whose body has this MD5:
        the MD5 itself, except under KMS or SSE-C where S3's ETag is an opaque
        digest (here a keyed one, fixed for a given body, never the MD5)."""
        if self.sse in (None, "AES256"):
            return '"%s"' % md5
        return '"%s"' % hmac.new(b"fake-kms-data-key", md5.encode(), hashlib.md5).hexdigest()

    def _sse_headers(self) -> Dict[str, str]:
        """What storage says about encryption on each PUT and GET answer."""
        if self.sse is None:
            return {}
        if self.sse == "SSE-C":
            key_md5 = base64.b64encode(hashlib.md5(b"fake customer key").digest()).decode()
            return {"x-amz-server-side-encryption-customer-algorithm": "AES256",
                    "x-amz-server-side-encryption-customer-key-MD5": key_md5}
        headers = {"x-amz-server-side-encryption": self.sse}
        if self.sse != "AES256":
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = _KMS_KEY_ARN
        return headers


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
        self.extra: Dict[str, Optional[str]] = {}   # a fault's headers: they win
        self.limit: Dict[str, str] = {}              # the API's RateLimit headers
        self.shape: Optional[_Fault] = None          # how the answer travels
        fake._logged(self.req)
        try:
            # Latency per request, and once more per new connection (the TCP
            # handshake's round trip), so connection reuse pays off as it does
            # on a real network.
            wait = fake.latency * (2 if self.fresh else 1)
            self.fresh = False
            if wait and fake._stopping.wait(wait):
                raise _Dropped()
            fault = self.shape = fake._take_fault(self.plane, self.command, path)
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
                except (_Dropped, OSError):
                    pass
            self.close_connection = True
        finally:
            self.idle = True
            fake._notify()
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
        shape = self.shape or _Fault(self.plane)
        if shape.lost:                 # carried out, but the answer never leaves
            self.req.status = 0
            raise _Dropped()
        if shape.gzip:
            body = gzip.compress(body, mtime=0)
        self.req.status = status
        for code in shape.interim or ():
            phrase, lines = _INTERIM[code]
            self.send_response_only(code, phrase)
            for name, value in lines:
                self.send_header(name, value)
            self._headers_buffer.append(b"\r\n")
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        if shape.gzip:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        for name, value in self._answer_headers(headers):
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")   # also sets close_connection
        self._headers_buffer.append(b"\r\n")
        head, self._headers_buffer = b"".join(self._headers_buffer), []
        if shape.trickle is None:
            with self.answering:
                self.wfile.write(head)
                if body:
                    self.wfile.write(body)
                # Idle from here: the client may already hold the whole answer.
                self.idle = not self.close_connection
            return
        # Not under `answering`: this connection is not idle while it trickles.
        if shape.trickle_body:
            self.wfile.write(head)
        else:
            self._trickle(head, shape.trickle)
        self._trickle(body, shape.trickle)
        with self.answering:
            self.idle = not self.close_connection

    def _answer_headers(self, headers: Optional[Dict[str, str]]) -> List[Tuple[str, str]]:
        """The answer's own headers, then the rate limit's, then a fault's, each
        over the one before (names compared case-insensitively; None drops it)."""
        merged: Dict[str, Tuple[str, Optional[str]]] = {}
        for layer in (headers or {}, self.limit, self.extra):
            for name, value in layer.items():
                merged[name.lower()] = (name, value)
        return [(name, value) for name, value in merged.values() if value is not None]

    def _trickle(self, data: bytes, interval: float) -> None:
        for i in range(len(data)):
            if self.fake._stopping.wait(interval):
                raise _Dropped()
            self.wfile.write(data[i:i + 1])

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
            return False               # headers, expire, wrong_etag, ...: the handler goes on
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
        self.limit = limit_headers
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
        for method, pattern, name in _API_ROUTES:  # noqa: B007 - used after the break
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
                # The object holds the bytes now; the parts keep sizes and digests.
                up.parts = {n: (size, md5, None) for n, (size, md5, _) in up.parts.items()}
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
        headers = dict(self.fake._sse_headers(), ETag=self.fake._etag(f.md5 or ""))
        self._send(200, f.data, f.mime_type, headers)

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
        return data, md5, fake._etag(md5 or "")

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
        self._send(200, b"", None, dict(fake._sse_headers(), ETag=etag))

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
        self._send(200, b"", None, dict(fake._sse_headers(), ETag=etag))


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

    # -- the vocabulary of the tests of fileslink ------------------------------

    def mark(self) -> int:
        """Where the fake's log stands now; pass it to since(), puts(), ..."""
        return len(self.fake.log)

    def since(self, mark: int, plane: Optional[str] = None,
              path: Optional[str] = None) -> List[Any]:
        """Requests logged since `mark`, on `plane`, whose path is (or ends with) `path`."""
        return [r for r in list(self.fake.log)[mark:]
                if (plane is None or r.plane == plane)
                and (path is None or r.path == path or r.path.endswith(path))]

    def puts(self, mark: int = 0) -> List[Any]:
        return [r for r in self.since(mark, "storage") if r.method == "PUT"]

    def presign_path(self) -> str:
        return "/v1/files/" + self.fake.folder_id

    def presigns(self, mark: int = 0) -> List[Any]:
        return self.since(mark, "api", self.presign_path())

    def confirms(self, mark: int = 0) -> List[Any]:
        return self.since(mark, "api", "/v1/files/confirm-upload")

    def assert_stored(self, result: "fileslink.UploadedFile", data: bytes) -> None:
        """The service holds exactly `data` under result.id, confirmed."""
        f = self.fake.files[result.id]
        self.assertTrue(f.uploaded, "the file was not confirmed / completed")
        self.assertEqual(f.size, len(data))
        self.assertEqual(len(f.data), len(data))
        self.assertTrue(f.data == data, "stored bytes differ from the source")
        self.assertEqual(result.size, len(data))

    def upload_id(self, file_id: str) -> str:
        """The id of the one multipart upload of file `file_id`."""
        ids = [u for u, up in self.fake.multipart.items() if up.file_id == file_id]
        self.assertEqual(len(ids), 1)
        return ids[0]

    def uploaded(self) -> Dict[str, bytes]:
        """name -> bytes of every file the fake holds as uploaded."""
        return {f.name: f.data for f in self.fake.files.values()
                if f.uploaded and f.data is not None}

    def bounded(self, fn: Callable[[], Any], seconds: float = 10.0) -> Any:
        """fn() run in a thread: its result, or its exception re-raised here. A call
        still running after `seconds` has hung: the test fails instead of the
        suite hanging, and the thread is stopped (an asynchronous SystemExit
        raised in it, so that a spinning loop does not burn a core for the rest
        of the suite)."""
        box: Dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = fn()
            except BaseException as e:     # handed to the test's thread below
                box["error"] = e

        thread = threading.Thread(target=target, name="test-bounded", daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            try:
                import ctypes
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                           ctypes.py_object(SystemExit))
            except (ImportError, AttributeError):
                pass
            thread.join(5)
            self.fail("the call did not return within %.0f s: it hung" % seconds)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def join_workers(self) -> None:
        """Wait for fileslink's worker threads to end (after a cancelled upload
        the pool is shut down without waiting): a test must not leak threads."""
        for t in threading.enumerate():
            if t.name.startswith("fileslink") and t is not threading.current_thread():
                # A Ctrl-C landing inside pool.submit() can leave a worker that is
                # still starting ("limbo"); join() refuses those until they run.
                started = getattr(t, "_started", None)
                if started is not None:
                    started.wait(5)
                t.join(5)
                self.assertFalse(t.is_alive(), "worker thread %s still running" % t.name)

    def set_env(self, *, key: bool = False, folder: bool = False) -> None:
        """Point $FILESLINK_KEY and $FILESLINK_BASE_URL (key=True) and
        $FILESLINK_FOLDER (folder=True) at the fake; setUp restores the
        environment after the test."""
        if key:
            os.environ.update(FILESLINK_KEY=self.fake.api_key,
                              FILESLINK_BASE_URL=self.fake.base_url)
        if folder:
            os.environ["FILESLINK_FOLDER"] = self.fake.folder_id

    def cli(self, *argv: str, stdin: Optional[Any] = None) -> Tuple[int, str, str]:
        """fileslink.main(argv) with stdout and stderr captured: (code, out, err)."""
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdin
        if stdin is not None:
            sys.stdin = stdin
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = fileslink.main(list(argv))
        finally:
            sys.stdin = saved
        return code, out.getvalue(), err.getvalue()

    def json_lines(self, out: str) -> List[Dict[str, Any]]:
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    @property
    def repo(self) -> str:
        """The directory fileslink.py was imported from."""
        return os.path.dirname(os.path.abspath(fileslink.__file__))

    def child_env(self, **extra: str) -> Dict[str, str]:
        """The environment for a child Python: the fake's key, base URL and folder."""
        env = dict(os.environ)
        env.update(FILESLINK_KEY=self.fake.api_key, FILESLINK_BASE_URL=self.fake.base_url,
                   FILESLINK_FOLDER=self.fake.folder_id)
        env.pop("PYTHONPATH", None)   # the child imports fileslink.py from the repo (its cwd)
        env.update(extra)
        return env

    def run_child(self, *args: str, input: Optional[bytes] = None,
                  env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                  timeout: float = 20) -> "subprocess.CompletedProcess[bytes]":
        """This Python run with `args`, in the repo, on child_env() unless told."""
        return subprocess.run([sys.executable] + list(args), input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env or self.child_env(), cwd=cwd or self.repo, timeout=timeout)

    def recorder(self) -> Tuple[str, List[Tuple[str, str, Dict[str, str]]]]:
        """A second, tiny HTTP server on another port that records every request
        (method, path, headers) and answers a JSON success: (its URL, what it saw).
        Stopped at cleanup."""
        seen: List[Tuple[str, str, Dict[str, str]]] = []

        class Recorder(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen.append((self.command, self.path, headers))
                body = b'{"success": true, "urls": [], "data": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                  name="test-recorder", daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        self.addCleanup(stop)
        return "http://127.0.0.1:%d" % server.server_address[1], seen

    def listener(self) -> Tuple[int, Callable[[], bool]]:
        """A listening socket nobody answers on: (port, was_connected()), which
        tells whether anything tried to connect to that port. Closed at cleanup."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        sock.setblocking(False)
        self.addCleanup(sock.close)

        def was_connected() -> bool:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, socket.timeout):
                return False
            conn.close()
            return True

        return sock.getsockname()[1], was_connected


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


    # -- the modes for issue 9: encryption, 1xx, trickles, hostile headers ----

    def sse_fake(self, mode: str) -> FakeFilesLink:
        """A fake under that SSE mode, with 64 KiB parts; it becomes self.fake."""
        self.fake = FakeFilesLink(sse=mode, min_part_size=64 * 1024, part_size=64 * 1024).start()
        self.addCleanup(self.fake.stop)
        return self.fake

    def initiate(self, size: int, mime: str = "application/octet-stream") -> dict:
        _, _, obj = self.api("POST", "/v1/files/multipart/%s/initiate" % self.fake.folder_id,
                             {"fileMetadata": {"name": "m.bin", "size": size, "mimeType": mime}})
        return obj["data"]

    def complete(self, plan: dict, etags: List[str]) -> int:
        ids = {k: plan[k] for k in ("bucket", "key", "uploadId", "fileId")}
        parts = [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]
        return self.api("POST", "/v1/files/multipart/complete", dict(ids, parts=parts))[0]

    def test_kms_and_sse_c_storage_answer_etags_that_are_not_md5s(self) -> None:
        data = pseudo_random_bytes(3 * 64 * 1024 + 5, seed=4)
        cases = [("aws:kms", "x-amz-server-side-encryption", "aws:kms"),
                 ("aws:kms:dsse", "x-amz-server-side-encryption", "aws:kms:dsse"),
                 ("SSE-C", "x-amz-server-side-encryption-customer-algorithm", "AES256")]
        for mode, header, value in cases:
            with self.subTest(mode):
                fake = self.sse_fake(mode)
                url = self.presign(len(data))[0]["url"]
                etags = set()
                for _ in range(2):
                    status, headers, _ = self.put(url, data)
                    self.assertEqual((status, headers[header]), (200, value))
                    etags.add(headers["ETag"])
                self.assertEqual(len(etags), 1)           # the same body, the same ETag
                etag = etags.pop()
                self.assertRegex(etag, r'^"[0-9a-f]{32}"$')
                self.assertNotEqual(etag, '"%s"' % _md5_hex(data))
                plan = self.initiate(len(data))
                part_etags = []
                for i, part in enumerate(plan["parts"]):
                    chunk = data[i * 64 * 1024:(i + 1) * 64 * 1024]
                    status, headers, _ = self.put(part["url"], chunk)
                    self.assertEqual((status, headers[header]), (200, value))
                    self.assertRegex(headers["ETag"], r'^"[0-9a-f]{32}"$')
                    self.assertNotEqual(headers["ETag"], '"%s"' % _md5_hex(chunk))
                    part_etags.append(headers["ETag"])
                self.assertEqual(self.complete(plan, part_etags), 200)
                f = fake.files[plan["fileId"]]
                self.assertEqual((f.uploaded, f.data == data, f.md5), (True, True, _md5_hex(data)))

    def test_sse_s3_storage_says_so_and_its_etags_stay_md5s(self) -> None:
        self.sse_fake("AES256")
        status, headers, _ = self.put(self.presign(5)[0]["url"], b"hello")
        self.assertEqual((status, headers["x-amz-server-side-encryption"], headers["ETag"]),
                         (200, "AES256", '"%s"' % _md5_hex(b"hello")))
        with self.assertRaises(ValueError):
            FakeFilesLink(sse="aws:kms:nope")

    def raw(self, origin: str, method: str, target: str, body: bytes = b"",
            headers: Optional[Dict[str, str]] = None) -> bytes:
        """One request with Connection: close, and every byte of the answer, as
        sent (http.client cannot show what comes before the final answer)."""
        parts = urlsplit(origin)
        lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s" % parts.netloc,
                 "Connection: close", "Content-Length: %d" % len(body)]
        lines += ["%s: %s" % item for item in (headers or {}).items()]
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

    def test_interim_answers_come_before_the_final_one(self) -> None:
        self.fake.inject("api", interim=(102, 103), path_contains="/v1/projects")
        answer = self.raw(self.fake.base_url, "GET", "/v1/projects/1",
                          headers={"Authorization": self.fake.api_key})
        processing, hints, final, body = answer.split(b"\r\n\r\n")
        self.assertEqual(processing, b"HTTP/1.1 102 Processing")
        self.assertEqual(hints, b"HTTP/1.1 103 Early Hints\r\n"
                                b"Link: </assets/app.css>; rel=preload; as=style")
        self.assertTrue(final.startswith(b"HTTP/1.1 200 OK\r\n"), final)
        self.assertEqual(json.loads(body.decode())["success"], True)
        url = urlsplit(self.presign(5)[0]["url"])
        self.fake.inject("storage", interim=(103,))
        answer = self.raw(self.fake.storage_url, "PUT", url.path + "?" + url.query, b"hello",
                          {"Content-Type": "application/octet-stream"})
        hints, final, body = answer.split(b"\r\n\r\n")
        self.assertTrue(hints.startswith(b"HTTP/1.1 103 Early Hints\r\n"))
        self.assertTrue(final.startswith(b"HTTP/1.1 200 OK\r\n"), final)
        self.assertIn(('ETag: "%s"' % _md5_hex(b"hello")).encode(), final)
        with self.assertRaises(ValueError):
            self.fake.inject("api", interim=(101,))

    def test_a_trickled_answer_comes_a_byte_at_a_time_until_the_fake_stops(self) -> None:
        fake = FakeFilesLink().start()      # its own: stopped in the middle of a trickle
        self.addCleanup(fake.stop)
        fake.inject("api", trickle=0.05)
        fake.inject("api", trickle=0.05, trickle_body=True)
        request = ("GET /v1/projects/1 HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n"
                   % fake.api_key).encode()
        port = urlsplit(fake.base_url).port
        for label in ("headers", "body"):
            with self.subTest(label), socket.create_connection(("127.0.0.1", port), 5) as sock:
                sock.sendall(request)
                got, head = b"", None
                window = time.monotonic() + 0.5
                while time.monotonic() < window:
                    sock.settimeout(max(0.01, window - time.monotonic()))
                    try:
                        got += sock.recv(65536)
                    except socket.timeout:
                        break
                    if head is None and b"\r\n\r\n" in got:
                        head, window = got, time.monotonic() + 0.3   # now time the body
                if label == "headers":
                    # 0.5 s at 0.05 s a byte: about 10 bytes of the status line, no more.
                    self.assertTrue(b"HTTP/1.1 200 OK".startswith(got), got)
                    self.assertTrue(2 <= len(got) <= 11, got)
                else:
                    self.assertIsNotNone(head, "the headers come at once")
                    body = got[len(head):]
                    self.assertTrue(1 <= len(body) <= 7, body)   # 0.3 s at 0.05 s a byte
                    self.assertTrue(b'{"success": true'.startswith(body), body)
                    started = time.monotonic()
                    fake.stop()             # mid-trickle: ends it, and does not wait for it
                    self.assertLess(time.monotonic() - started, 2)
                    sock.settimeout(5)
                    while sock.recv(65536):     # the connection ends: EOF, not a hang
                        pass

    def test_fault_headers_override_or_remove_the_fakes_own(self) -> None:
        path = "/v1/projects/1"
        hostile = '"100-in-1min"; r=0; t=86400'
        self.fake.inject("api", headers={"ratelimit": hostile})
        _, headers, _ = self.api("GET", path)
        self.assertEqual(headers.get_all("RateLimit"), [hostile])
        reset = str(int(time.time()) + 3600)
        self.fake.inject("api", headers={"RateLimit": None, "RateLimit-Policy": None,
                                         "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})
        _, headers, _ = self.api("GET", path)
        self.assertEqual((headers.get("RateLimit"), headers.get("RateLimit-Policy")), (None, None))
        self.assertEqual((headers["X-RateLimit-Remaining"], headers["X-RateLimit-Reset"]),
                         ("0", reset))
        self.fake.inject("api", status=429, headers={"Retry-After": "7"})
        _, headers, _ = self.api("GET", path)
        self.assertEqual(headers.get_all("Retry-After"), ["7"])
        self.assertRegex(self.api("GET", path)[1]["RateLimit"], r"; r=\d{5,}; ")   # its own again

    def test_a_gzip_body_nobody_asked_for(self) -> None:
        self.fake.inject("api", status=400, gzip=True)
        status, headers, raw = _http(self.fake.base_url + "/v1/projects/1",
                                     headers={"Authorization": self.fake.api_key})
        self.assertEqual((status, headers["Content-Encoding"], headers["Content-Length"]),
                         (400, "gzip", str(len(raw))))
        self.assertEqual(json.loads(gzip.decompress(raw).decode())["success"], False)
        url = self.presign(5)[0]["url"]
        self.fake.inject("storage", status=500, gzip=True)
        status, headers, raw = self.put(url, b"hello")
        self.assertEqual((status, headers["Content-Encoding"]), (500, "gzip"))
        self.assertIn(b"<Code>InternalError</Code>", gzip.decompress(raw))

    def test_a_lost_answer_is_carried_out_but_never_arrives(self) -> None:
        self.fake.inject("api", lost=True, path_contains="/v1/folders")
        with self.assertRaises(http.client.RemoteDisconnected):
            self.api("POST", "/v1/folders", {"title": "Lost", "projectId": self.fake.project_id})
        self.assertEqual(sorted(f["title"] for f in self.fake.folders.values()),
                         ["Fake folder", "Lost"])
        self.assertEqual((self.fake.log[-1].path, self.fake.log[-1].status), ("/v1/folders", 0))
        entry = self.presign(5)[0]
        self.fake.inject("storage", lost=True)
        with self.assertRaises(http.client.RemoteDisconnected):
            self.put(entry["url"], b"hello")
        self.assertEqual(self.fake.files[entry["id"]].data, b"hello")   # stored all the same
        with self.assertRaises(ValueError):
            self.fake.inject("api", lost=True, status=500)

    def test_black_hole_urls_lead_where_connect_hangs(self) -> None:
        if not sys.platform.startswith("linux"):
            self.skipTest("a full accept queue drops SYNs on Linux; other kernels refuse")
        origin = self.fake.black_hole()
        self.assertNotEqual(origin, self.fake.storage_url)
        self.assertTrue(self.presign(5)[0]["url"].startswith(origin + "/"))
        self.assertTrue(all(p["url"].startswith(origin + "/")
                            for p in self.initiate(11 * MiB)["parts"]))
        started = time.monotonic()
        with self.assertRaises(socket.timeout):
            socket.create_connection(("127.0.0.1", urlsplit(origin).port), timeout=1.0).close()
        self.assertGreaterEqual(time.monotonic() - started, 0.9)

    def test_the_serve_fake_keeps_sizes_and_digests_in_bounded_memory(self) -> None:
        self.fake = fake = FakeFilesLink.for_serve().start()
        self.addCleanup(fake.stop)
        size, part = 64 * MiB, 5 * MiB
        block = memoryview(pseudo_random_bytes(part, seed=9))   # every part: the same bytes
        plan = self.initiate(size)
        self.assertEqual((plan["partSize"], len(plan["parts"])), (part, 13))
        conn = http.client.HTTPConnection("127.0.0.1", urlsplit(fake.storage_url).port, timeout=10)
        self.addCleanup(conn.close)
        tracemalloc.start()
        try:
            etags = []
            for i, p in enumerate(plan["parts"]):
                target = urlsplit(p["url"])
                conn.request("PUT", target.path + "?" + target.query,
                             body=block[:min(part, size - i * part)],
                             headers={"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                resp.read()
                self.assertEqual(resp.status, 200)
                etags.append(resp.headers["ETag"])
            self.assertEqual(self.complete(plan, etags), 200)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # The default fake holds all 64 MiB (and once held them twice over).
        self.assertLess(peak, 8 * MiB)
        f, up = fake.files[plan["fileId"]], fake.multipart[plan["uploadId"]]
        self.assertEqual((f.uploaded, f.stored, f.data is None), (True, size, True))
        self.assertEqual(up.parts[1][1:], (_md5_hex(block), None))
        self.assertEqual(up.parts[13][:2], (4 * MiB, _md5_hex(block[:4 * MiB])))

    def test_log_limit_keeps_the_latest_requests(self) -> None:
        with FakeFilesLink(log_limit=3) as fake:
            for page in range(1, 6):
                _http(fake.base_url + "/v1/projects/%d" % page,
                      headers={"Authorization": fake.api_key})
            self.assertEqual([r.path for r in fake.log],
                             ["/v1/projects/3", "/v1/projects/4", "/v1/projects/5"])

    def test_wait_for_wakes_on_a_request_and_times_out_without_one(self) -> None:
        self.fake.inject("api", delay=30)     # arrives, then stalls: logged on arrival
        thread = threading.Thread(target=self._try, args=(lambda: self.api("GET", "/v1/projects/1"),),
                                  daemon=True)
        thread.start()
        self.assertTrue(self.fake.wait_for(lambda: len(self.fake.api_calls()) == 1, 5))
        started = time.monotonic()
        self.assertFalse(self.fake.wait_for(lambda: bool(self.fake.storage_calls()), 0.1))
        self.assertGreaterEqual(time.monotonic() - started, 0.09)
        self.fake.stop()
        thread.join(5)














# ---- tests of fileslink (merged by the lead) ----


# ---------------------------------------------------------------------------
# Support: environment fixtures, helpers, a forward proxy, a TLS relay
# ---------------------------------------------------------------------------

class FolderInEnvCase(FakeTestCase):
    """$FILESLINK_FOLDER is the fake's folder: uploads go there by default."""

    def setUp(self) -> None:
        super().setUp()
        self.set_env(folder=True)


class KeyInEnvCase(FakeTestCase):
    """$FILESLINK_KEY and $FILESLINK_BASE_URL point at the fake, as in a user's shell."""

    def setUp(self) -> None:
        super().setUp()
        self.set_env(key=True)


_HERE = os.path.dirname(os.path.abspath(__file__))

#: A child process that uploads one file through the library, as a user's
#: script would; argv: path, then JSON options for Client and upload().
_CHILD_UPLOAD = """
import json, logging, sys  # logging: its last-resort handler shows warnings on stderr
sys.path.insert(0, %r)
import fileslink
options, kwargs = json.loads(sys.argv[2]), json.loads(sys.argv[3])
try:
    result = fileslink.Client(**options).upload(sys.argv[1], **kwargs)
except fileslink.FilesLinkError as exc:
    print("error:", exc)
    sys.exit(1)
print(result.id)
""" % _HERE


_WORLD_PART = 256 * 1024
_WORLD_REPO = os.path.dirname(os.path.abspath(fileslink.__file__))
#: The CLI as `python -m fileslink` runs it, with SIGINT and SIGTERM at their
#: defaults whatever the test runner left them at (a background job ignores SIGINT).
_WORLD_CLI = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
              "runpy.run_module('fileslink', run_name='__main__', alter_sys=True)")
#: An upload in a child process: prints the outcome (a class name) and its seconds.
_WORLD_UPLOAD = """if True:
    import time, fileslink
    client = fileslink.Client(retry=fileslink.Retry(attempts=2, backoff=0.01, max_backoff=0.05))
    started = time.monotonic()
    try:
        client.upload(b"x" * 100, name="gate.bin")
        outcome = "uploaded"
    except fileslink.FilesLinkError as e:
        outcome = type(e).__name__
    print(outcome, "%.2f" % (time.monotonic() - started))
"""


def _world_syn_sent(port: int) -> int:
    """How many sockets of this machine are in connect() to 127.0.0.1:port
    (SYN_SENT in /proc/net/tcp): the black hole's victims."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[2] == "0100007F:%04X" % port and row[3] == "02")


class PartsCase(FakeTestCase):
    """A fake whose parts may be 1 MiB, so multipart tests stay small."""

    fake_options = {"min_part_size": MiB}


class ResumeCase(PartsCase):
    """Resume under test: a state dir of the test's own, and the client in a
    child process that the fake holds mid-upload when asked."""

    def setUp(self) -> None:
        super().setUp()
        self.state = os.path.join(self.tmp, "state")
        os.environ["FILESLINK_STATE_DIR"] = self.state

    def child_upload(self, path: str, **kwargs: Any) -> "subprocess.Popen[str]":
        options = {"api_key": self.fake.api_key, "base_url": self.fake.base_url,
                   "multipart_threshold": MiB, "max_workers": 1, "timeout": 2,
                   "retry": None}
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD_UPLOAD, path, json.dumps(options),
             json.dumps(dict(folder_id=self.fake.folder_id, resume=True, **kwargs))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # A shell's background job starts with SIGINT ignored, and Python
            # then never raises KeyboardInterrupt: give the child the default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def child_stalled_after(self, path: str, parts: int) -> "subprocess.Popen[str]":
        """A child uploading `path` with resume on, held mid-upload: the fake
        lets `parts` PUTs through (faults that do nothing), then stalls the next."""
        self.fake.inject("storage", delay=0, times=parts)
        self.fake.inject("storage", delay=30)
        child = self.child_upload(path)
        self.wait_for(lambda: self.journal_parts() >= parts
                      and len(self.puts()) > parts)  # the stalled PUT is in
        return child

    def journal_parts(self) -> int:
        """Parts the journal records as stored (its .parts file, less the header)."""
        names = [n for n in os.listdir(self.state) if n.endswith(".parts")] \
            if os.path.isdir(self.state) else []
        if not names:
            return 0
        with open(os.path.join(self.state, names[0]), "rb") as f:
            return max(0, f.read().count(b"\n") - 1)

    def wait_for(self, condition: Callable[[], bool], seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds  # a bound for a hung child, not a measure
        while not condition():
            self.assertLess(time.monotonic(), deadline, "the child never got there")
            time.sleep(0.01)


class SmallPartsResumeCase(FakeTestCase):
    """Resume with 64 KiB parts, in this process."""

    fake_options = {"min_part_size": 64 * 1024, "part_size": 64 * 1024}

    def setUp(self) -> None:
        super().setUp()
        self.state = os.path.join(self.tmp, "state")
        os.environ["FILESLINK_STATE_DIR"] = self.state

    def big_client(self, **kw: Any) -> "fileslink.Client":
        return self.client(multipart_threshold=64 * 1024, **kw)


#: Parts of 64 KiB (a fake option), so a 2 MiB file is 32 parts: cheap.
_TINY_PART = 64 * 1024


def _results(call: Callable[[], List[Any]]) -> List[Any]:
    """upload_many's per-source outcomes, whether it returned or raised UploadManyError."""
    try:
        return list(call())
    except fileslink.UploadManyError as e:
        return list(e.results)


def _exception_text(exc: BaseException) -> str:
    """Everything a user could see of an exception: the full traceback with its
    chain (str of each link), repr, args and the APIError fields."""
    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    seen = set()
    link: Optional[BaseException] = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        texts += [str(link), repr(link), repr(link.args)]
        for attr in ("message", "body"):
            texts.append(str(getattr(link, attr, "")))
        link = link.__cause__ or link.__context__
    return "\n".join(texts)


def _verbose() -> bool:
    """Whether the tests run with -v: the chaos test then prints its counts."""
    return "-v" in sys.argv or "--verbose" in sys.argv


def _closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


class _Pipe:
    """Copies bytes both ways between two sockets (TLS or not) until one side
    closes or `wake` becomes readable (the owner is stopping)."""


    @staticmethod
    def relay(a: socket.socket, b: socket.socket, wake: socket.socket) -> None:
        while True:
            ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select([a, b, wake], [], [])
                if wake in ready:
                    return
            for sock in ready:
                try:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
                except OSError:
                    return


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A forward proxy: absolute-form requests are forwarded in origin form
    (to the address the server's routes give a host name, if any), CONNECT
    opens a tunnel. Every request is recorded as it arrives."""

    protocol_version = "HTTP/1.1"
    server: "_Proxy"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> None:
        with self.server.lock:
            self.server.seen.append((self.command, self.path,
                                     {k.lower(): v for k, v in self.headers.items()}))

    def do_CONNECT(self) -> None:
        self._record()
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except (OSError, ValueError):
            self.send_error(502)
            return
        try:
            self.send_response(200, "Connection established")
            self.end_headers()
            _Pipe.relay(self.connection, upstream, self.server.wake_r)
        finally:
            upstream.close()
            self.close_connection = True

    def _forward(self) -> None:
        self._record()
        parts = urlsplit(self.path)
        if parts.scheme != "http" or not parts.hostname:
            self.send_error(400, "absolute-form expected")
            return
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        hop = {"proxy-authorization", "proxy-connection", "connection", "keep-alive"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
        target = parts.path + ("?" + parts.query if parts.query else "")
        host = self.server.routes.get(parts.hostname, parts.hostname)
        upstream = http.client.HTTPConnection(host, parts.port or 80, timeout=5)
        try:
            upstream.request(self.command, target, body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
        except OSError:
            self.send_error(502)
            return
        finally:
            upstream.close()
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in hop | {"content-length", "transfer-encoding"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _forward


class _Proxy(http.server.ThreadingHTTPServer):
    """The proxy on 127.0.0.1: .url, .seen = [(method, target, headers)], stop().
    routes: host name -> address, for names that must not be looked up."""

    daemon_threads = False
    block_on_close = True     # server_close() joins the handler threads

    def __init__(self, routes: Optional[Dict[str, str]] = None) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.routes = dict(routes or {})
        self.lock = threading.Lock()
        self.seen: List[Tuple[str, str, Dict[str, str]]] = []
        self.conns: set = set()
        self.wake_r, self.wake_w = socket.socketpair()
        self.url = "http://127.0.0.1:%d" % self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="test-proxy")
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self._thread.join()
        self.wake_w.send(b"x")        # ends the CONNECT tunnels
        with self.lock:
            conns = list(self.conns)
        for conn in conns:            # ends handlers waiting on a kept-alive socket
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()
        self.wake_r.close()
        self.wake_w.close()


class _TlsRelay:
    """Terminates TLS on 127.0.0.1:<port> and relays the plain bytes to an
    upstream port (one of the fake's): HTTPS in front of the fake."""


    def __init__(self, context: ssl.SSLContext, upstream_port: int) -> None:
        self.context, self.upstream_port = context, upstream_port
        self.lock = threading.Lock()
        self.handshakes = 0           # attempted
        self.refused = 0              # failed (the client refused our certificate)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.wake_r, self.wake_w = socket.socketpair()
        self.threads: List[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="test-tls-accept")
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            ready, _, _ = select.select([self.listener, self.wake_r], [], [])
            if self.wake_r in ready:
                return
            conn, _ = self.listener.accept()
            thread = threading.Thread(target=self._serve, args=(conn,), name="test-tls-conn")
            with self.lock:
                self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.handshakes += 1
        conn.settimeout(5)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except OSError:
            with self.lock:
                self.refused += 1
            conn.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            tls.close()
            return
        try:
            _Pipe.relay(tls, upstream, self.wake_r)
        finally:
            upstream.close()
            tls.close()

    def stop(self) -> None:
        self.wake_w.send(b"x")
        self._accepting.join()
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()


# ---------------------------------------------------------------------------
# Pure functions: the part plan, the retry arithmetic
# ---------------------------------------------------------------------------

class TestPartPlan(unittest.TestCase):
    """fileslink._parse_plan: the plan the service hands out, checked before any PUT."""

    @staticmethod
    def _data(part_size: Optional[int], numbers: List[Any]) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "fileId": "f", "uploadId": "u", "key": "k", "bucket": "b",
            "parts": [{"partNumber": n, "url": "https://s3.example/k?partNumber=%s" % n}
                      for n in numbers]}
        if part_size is not None:
            data["partSize"] = part_size
        return data

    def test_a_one_tebibyte_plan_is_accepted_and_covers_the_size_exactly(self) -> None:
        size = 1024 ** 4
        part_size = 105 * MiB                 # the smallest whole MiB giving <= 10,000 parts
        count = -(-size // part_size)
        plan = fileslink._parse_plan(size, self._data(part_size, list(range(1, count + 1))))
        self.assertLessEqual(len(plan.urls), 10000)
        self.assertEqual(len(plan.urls), count)
        spans = [plan.span(n) for n in (1, 2, count)]
        self.assertEqual(spans[0], (0, part_size))
        self.assertEqual(spans[1], (part_size, part_size))
        self.assertEqual(sum(plan.span(count)), size)     # the last part ends at the last byte
        self.assertEqual(sum(plan.span(n)[1] for n in range(1, count + 1)), size)

    def test_exactly_ten_thousand_parts_are_accepted(self) -> None:
        plan = fileslink._parse_plan(10000 * 5 * MiB,
                                     self._data(5 * MiB, list(range(1, 10001))))
        self.assertEqual(len(plan.urls), 10000)

    def test_parts_listed_out_of_order_are_sent_by_number(self) -> None:
        plan = fileslink._parse_plan(3 * MiB, self._data(MiB, [3, 1, 2]))
        self.assertEqual([u.rsplit("=", 1)[1] for u in plan.urls], ["1", "2", "3"])

    def test_plans_that_cannot_be_right_are_protocol_errors(self) -> None:
        cases = [
            ("parts do not reach the end", 10 * MiB, self._data(MiB, [1, 2, 3])),
            ("more parts than the size needs", 3 * MiB, self._data(5 * MiB, [1, 2, 3])),
            ("more than 10,000 parts", 10001, self._data(1, list(range(1, 10002)))),
            ("duplicate part number", 3 * MiB, self._data(MiB, [1, 1, 2])),
            ("numbering starts at 0", 3 * MiB, self._data(MiB, [0, 1, 2])),
            ("a gap in the numbering", 3 * MiB, self._data(MiB, [1, 2, 4])),
            ("part number not an integer", 3 * MiB, self._data(MiB, ["1", "2", "3"])),
            ("part size not an integer", 3 * MiB,
             dict(self._data(MiB, [1, 2, 3]), partSize="1048576")),
            ("no upload id", 3 * MiB, {k: v for k, v in self._data(MiB, [1, 2, 3]).items()
                                       if k != "uploadId"}),
            ("no parts", 3 * MiB, self._data(MiB, [])),
            ("data is a list", 3 * MiB, [1, 2, 3]),
        ]
        for label, size, data in cases:
            with self.subTest(label):
                with self.assertRaises(fileslink.ProtocolError):
                    fileslink._parse_plan(size, data)


class TestRetryDelay(unittest.TestCase):

    def test_parse_retry_after_reads_seconds_and_http_dates(self) -> None:
        cases = [("5", 5.0), ("0", 0.0), (" 12 ", 12.0), ("-3", 0.0), ("", None), (None, None),
                 ("soon", None)]
        for value, want in cases:
            with self.subTest(value=value):
                self.assertEqual(fileslink._parse_retry_after(value), want)
        with self.subTest("HTTP date 30 s ahead"):
            later = email.utils.formatdate(time.time() + 30, usegmt=True)
            # The wait only shrinks as time passes: the lower bound leaves a
            # busy machine seconds between formatdate() and the parse.
            self.assertTrue(20 <= fileslink._parse_retry_after(later) <= 31)
        with self.subTest("HTTP date in the past"):
            past = email.utils.formatdate(time.time() - 3600, usegmt=True)
            self.assertEqual(fileslink._parse_retry_after(past), 0.0)

    def test_delay_is_full_jitter_within_the_capped_exponential_bound(self) -> None:
        retry = fileslink.Retry(attempts=10, backoff=0.5, max_backoff=3.0)
        for attempt in range(1, 9):
            bound = min(3.0, 0.5 * 2 ** (attempt - 1))
            with self.subTest(attempt=attempt, bound=bound):
                samples = [retry.delay(attempt) for _ in range(300)]
                self.assertTrue(all(0.0 <= s <= bound for s in samples))
                self.assertLess(min(samples), bound * 0.25)       # full jitter: down to ~0
                self.assertGreater(max(samples), bound * 0.75)    # and up to the bound

    def test_retry_after_replaces_the_computed_delay(self) -> None:
        retry = fileslink.Retry(backoff=0.5, max_backoff=30.0)
        self.assertEqual(retry.delay(1, retry_after=7.0), 7.0)
        self.assertEqual(retry.delay(5, retry_after=0.0), 0.0)

    def test_zero_backoff_never_waits(self) -> None:
        retry = fileslink.Retry(attempts=3, backoff=0, max_backoff=0)
        self.assertEqual([retry.delay(n) for n in (1, 2, 3)], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------
# Sources: paths, bytes, file objects, pipes
# ---------------------------------------------------------------------------

class TestSources(FakeTestCase):

    fake_options = {"min_part_size": MiB}        # 1 MiB parts: multipart tests stay small

    def test_every_kind_of_source_uploads_exactly_its_bytes(self) -> None:
        path, data = self.make_file("source.bin", 200 * 1024 + 7, seed=11)
        client = self.client()
        folder = self.fake.folder_id

        def from_pipe(payload: bytes, name: str) -> "fileslink.UploadedFile":
            r, w = os.pipe()
            writer = threading.Thread(target=self._write_and_close, args=(w, payload))
            writer.start()
            try:
                with os.fdopen(r, "rb") as stream:
                    return client.upload(stream, folder, name=name)
            finally:
                writer.join(10)

        class ReadOnly:
            """A stream with read() and nothing else: no seek, no tell, no name."""

            def __init__(self, payload: bytes) -> None:
                self._buf = io.BytesIO(payload)

            def read(self, n: int = -1) -> bytes:
                return self._buf.read(min(n, 4096) if n and n > 0 else 4096)

        cases: List[Tuple[str, Callable[[], "fileslink.UploadedFile"], bytes, str]] = [
            ("path str", lambda: client.upload(path, folder), data, "source.bin"),
            ("pathlib.Path", lambda: client.upload(pathlib.Path(path), folder), data, "source.bin"),
            ("bytes with name=", lambda: client.upload(data, folder, name="b.bin"), data, "b.bin"),
            ("bytearray with name=", lambda: client.upload(bytearray(data), folder, name="ba.bin"),
             data, "ba.bin"),
            ("pipe (not seekable)", lambda: from_pipe(data, "pipe.bin"), data, "pipe.bin"),
            ("object with read() only",
             lambda: client.upload(ReadOnly(data), folder, name="ro.bin"), data, "ro.bin"),
        ]
        for label, run, want, name in cases:
            with self.subTest(label):
                result = run()
                self.assert_stored(result, want)
                self.assertEqual(result.name, name)
                self.assertEqual(self.fake.files[result.id].name, name)

    @staticmethod
    def _write_and_close(fd: int, payload: bytes) -> None:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view[:65536]):]
        except OSError:
            pass                      # the reader gave up; the test reports why
        finally:
            os.close(fd)

    def test_seekable_file_object_uploads_from_its_current_position(self) -> None:
        path, data = self.make_file("offset.bin", 70 * 1024, seed=4)
        client = self.client()
        with open(path, "rb") as f:
            f.seek(1000)
            result = client.upload(f, self.fake.folder_id)
            self.assertFalse(f.closed, "the client closed a file object it does not own")
        self.assert_stored(result, data[1000:])
        self.assertEqual(result.name, "offset.bin")

    def test_seekable_stream_at_an_offset_goes_multipart_and_stays_exact(self) -> None:
        data = pseudo_random_bytes(3 * MiB + 123, seed=8)
        stream = io.BytesIO(data)
        stream.seek(123)
        client = self.client(multipart_threshold=MiB, max_workers=3)
        result = client.upload(stream, self.fake.folder_id, name="stream.bin")
        self.assertTrue(result.multipart)
        self.assert_stored(result, data[123:])

    def test_large_pipe_is_spooled_and_uploaded_multipart_exactly(self) -> None:
        data = pseudo_random_bytes(9 * MiB + 5, seed=9)   # above the 8 MiB in-memory spool
        client = self.client(multipart_threshold=MiB, max_workers=3)
        r, w = os.pipe()
        writer = threading.Thread(target=self._write_and_close, args=(w, data))
        writer.start()
        try:
            with os.fdopen(r, "rb") as stream:
                result = client.upload(stream, self.fake.folder_id, name="big-pipe.bin")
        finally:
            writer.join(10)
        self.assertTrue(result.multipart)
        self.assert_stored(result, data)


class TestSourcesInTheWild(FakeTestCase):
    """Paths that are not regular files, text streams, names with bad bytes."""

    def test_a_fifo_path_is_read_to_its_end_and_stored_whole(self) -> None:
        fifo = os.path.join(self.tmp, "pipe")
        os.mkfifo(fifo)
        data = pseudo_random_bytes(3 * MiB, seed=70)

        def write() -> None:
            with open(fifo, "wb") as f:
                f.write(data)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        result = self.client().upload(fifo, self.fake.folder_id, name="dump.sql")
        writer.join(10)
        self.assertEqual(result.size, len(data))
        self.assert_stored(result, data)

    def test_devices_sockets_and_text_streams_are_refused_before_any_call(self) -> None:
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        sock_path = os.path.join(self.tmp, "s.sock")
        server.bind(sock_path)
        text_path, _ = self.make_file("notes.txt", 10)
        text = open(text_path, "r")
        self.addCleanup(text.close)
        client = self.client()
        for label, source, says in (("device", "/dev/zero", "device"),
                                    ("socket", sock_path, "socket"),
                                    ("text file", text, "binary mode"),
                                    ("StringIO", io.StringIO("hello"), "binary mode")):
            with self.subTest(label):
                with self.assertRaises(fileslink.ConfigError) as caught:
                    client.upload(source, self.fake.folder_id, name="x.bin")
                self.assertIn(says, str(caught.exception))
        self.assertEqual(self.fake.log, [])

    def test_a_name_with_undecodable_bytes_is_repaired_as_file_names_are(self) -> None:
        result = self.client().upload(b"abc", self.fake.folder_id, name="caf\udce9.txt")
        self.assertEqual(result.name, "caf\ufffd.txt")
        self.assertEqual(self.fake.files[result.id].name, "caf\ufffd.txt")


# ---------------------------------------------------------------------------
# Single-part uploads
# ---------------------------------------------------------------------------

class TestSinglePart(FakeTestCase):

    def test_single_part_uploads_store_exactly_the_file(self) -> None:
        client = self.client()
        for size in (0, 1, 1000):
            with self.subTest(size=size):
                path, data = self.make_file("single-%d.bin" % size, size, seed=size)
                mark = self.mark()
                result = client.upload(path, self.fake.folder_id)
                self.assert_stored(result, data)
                self.assertEqual((result.name, result.multipart), ("single-%d.bin" % size, False))
                self.assertEqual(len(self.puts(mark)), 1)
                self.assertEqual(self.puts(mark)[0].headers["content-length"], str(size))

    def _seed_upload(self, path: str) -> str:
        """The blog post's 20-line `requests` snippet, rewritten with urllib."""
        api_key, folder_id, base = self.fake.api_key, self.fake.folder_id, self.fake.base_url
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def post(url: str, obj: Any) -> Any:
            req = urllib.request.Request(url, data=json.dumps(obj).encode(), method="POST",
                                         headers={"Authorization": api_key,
                                                  "Content-Type": "application/json"})
            with opener.open(req, timeout=5) as resp:
                return json.loads(resp.read().decode())

        filename = os.path.basename(path)
        size = os.path.getsize(path)
        entry = post("%s/v1/files/%s" % (base, folder_id),
                     {"filesMetadata": [{"name": filename, "size": size}]})["urls"][0]
        with open(path, "rb") as f:
            put = urllib.request.Request(entry["url"], data=f.read(), method="PUT")
            with opener.open(put, timeout=5) as resp:
                resp.read()
        post("%s/v1/files/confirm-upload" % base, {"ids": [entry["id"]]})
        return entry["s3Key"]

    def test_fileslink_sends_the_seed_snippets_calls_in_the_same_order(self) -> None:
        path, data = self.make_file("report.pdf", 4000, seed=71)
        self._seed_upload(path)
        seed_log = list(self.fake.log)
        self.set_env(key=True, folder=True)
        result = fileslink.upload(path)
        ours = list(self.fake.log)[len(seed_log):]
        self.assert_stored(result, data)

        def shape(log: List[Any]) -> List[Tuple[str, str, str]]:
            return [(r.plane, r.method, r.path if r.plane == "api" else "<presigned>") for r in log]

        self.assertEqual(shape(ours), shape(seed_log))
        self.assertEqual(shape(ours), [("api", "POST", self.presign_path()),
                                       ("storage", "PUT", "<presigned>"),
                                       ("api", "POST", "/v1/files/confirm-upload")])
        for theirs, mine in zip(seed_log, ours):
            if theirs.plane != "api":
                continue
            with self.subTest(theirs.path):
                self.assertEqual(set(mine.json), set(theirs.json))
                if "filesMetadata" in theirs.json:
                    (seed_meta,), (meta,) = theirs.json["filesMetadata"], mine.json["filesMetadata"]
                    self.assertLessEqual(set(seed_meta), set(meta))
                    self.assertEqual({k: meta[k] for k in seed_meta}, seed_meta)
                    self.assertEqual(meta["mimeType"], "application/pdf")
                else:
                    self.assertEqual(mine.json, {"ids": [result.id]})


# ---------------------------------------------------------------------------
# Multipart uploads: the parts, the initiate answer, abort
# ---------------------------------------------------------------------------

class TestMultipart(FakeTestCase):

    def test_multipart_uploads_at_part_boundaries_store_exactly_the_file(self) -> None:
        # The fake plans 5 MiB parts; the threshold lets a 5 MiB file go multipart.
        client = self.client(multipart_threshold=5 * MiB, max_workers=3)
        cases = [("exactly one part", 5 * MiB, [5 * MiB]),
                 ("one byte over a part boundary", 5 * MiB + 1, [5 * MiB, 1]),
                 ("several parts", 11 * MiB, [5 * MiB, 5 * MiB, MiB])]
        for label, size, part_sizes in cases:
            with self.subTest(label):
                path, data = self.make_file("mp-%d.bin" % size, size, seed=size)
                mark = self.mark()
                result = client.upload(path, self.fake.folder_id)
                self.assertTrue(result.multipart)
                self.assert_stored(result, data)
                up = self.fake.multipart[self.upload_id(result.id)]
                self.assertEqual(up.state, "completed")
                self.assertEqual([up.parts[n][0] for n in sorted(up.parts)], part_sizes)
                self.assertEqual(len(self.puts(mark)), len(part_sizes))
                self.assertEqual(self.confirms(mark), [])   # complete is the confirmation


def _alias_shapes() -> List[Tuple[str, Callable[[dict], dict]]]:
    """(label, transform of the fake's canonical initiate `data`), one per alias."""
    def urls(d: dict) -> List[str]:
        return [p["url"] for p in d["parts"]]

    return [
        ("canonical", lambda d: d),
        ("id, UploadId, Key, Bucket, chunkSize, urls as strings",
         lambda d: {"id": d["fileId"], "UploadId": d["uploadId"], "Key": d["key"],
                    "Bucket": d["bucket"], "chunkSize": d["partSize"], "urls": urls(d)}),
        ("s3Key, presignedUrls of {signedUrl, PartNumber} in reverse order",
         lambda d: {"fileId": d["fileId"], "uploadId": d["uploadId"], "s3Key": d["key"],
                    "bucket": d["bucket"], "partSize": d["partSize"],
                    "presignedUrls": [{"signedUrl": p["url"], "PartNumber": p["partNumber"]}
                                      for p in reversed(d["parts"])]}),
        ("partUrls of {presignedUrl, partNumber}, no part size",
         lambda d: {"fileId": d["fileId"], "uploadId": d["uploadId"], "key": d["key"],
                    "bucket": d["bucket"],
                    "partUrls": [{"presignedUrl": p["url"], "partNumber": p["partNumber"]}
                                 for p in d["parts"]]}),
        ("parts as plain URL strings", lambda d: dict(d, parts=urls(d))),
        ("parts of {url} without numbers", lambda d: dict(d, parts=[{"url": u} for u in urls(d)])),
        ("first alias found wins", lambda d: dict(d, id="not-the-file-id", UploadId="not-it",
                                                  Key="not/the/key", Bucket="not-the-bucket",
                                                  chunkSize=1, urls=["http://127.0.0.1:9/x"])),
    ]


class TestInitiateAnswer(FakeTestCase):

    fake_options = {"min_part_size": MiB}        # 1 MiB parts: multipart tests stay small

    def test_every_alias_shape_of_the_initiate_response_uploads_exactly(self) -> None:
        # 3 MiB - 1 in 1 MiB parts: 3 parts, and ceil(size / 3) is 1 MiB too, so
        # the shape without a part size describes the same plan.
        size = 3 * MiB - 1
        path, data = self.make_file("alias.bin", size, seed=21)
        client = self.client(multipart_threshold=MiB, max_workers=3)
        for label, transform in _alias_shapes():
            with self.subTest(label):
                self.fake.initiate_transform = transform
                result = client.upload(path, self.fake.folder_id)
                self.assertTrue(result.multipart)
                self.assert_stored(result, data)
                upload_id = self.upload_id(result.id)
                up = self.fake.multipart[upload_id]
                self.assertEqual(up.state, "completed")
                complete = self.fake.api_calls("/multipart/complete")[-1].json
                self.assertEqual({k: complete[k] for k in ("fileId", "uploadId", "key", "bucket")},
                                 {"fileId": result.id, "uploadId": upload_id, "key": up.key,
                                  "bucket": up.bucket})
                self.assertEqual(result.s3_key, up.key)
                # Ascending part numbers, each ETag exactly as storage sent it (quotes too).
                self.assertEqual(complete["parts"], [{"PartNumber": n, "ETag": up.etags[n]}
                                                     for n in (1, 2, 3)])
                self.assertTrue(all(e.startswith('"') and e.endswith('"')
                                    for e in up.etags.values()))

    def test_initiate_response_matching_no_alias_is_a_protocol_error_before_any_put(self) -> None:
        self.fake.initiate_transform = lambda d: {"upload": d["uploadId"], "chunks": d["parts"]}
        path, _ = self.make_file("nomatch.bin", 2 * MiB)
        client = self.client(multipart_threshold=MiB)
        with self.assertRaises(fileslink.ProtocolError) as caught:
            client.upload(path, self.fake.folder_id)
        self.assertIn("upload", str(caught.exception))
        self.assertIn("chunks", str(caught.exception))
        self.assertEqual(self.puts(), [])

    def test_an_initiate_plan_that_does_not_cover_the_file_is_refused_and_aborted(self) -> None:
        self.fake.initiate_transform = lambda d: dict(d, partSize=d["partSize"] // 2)
        path, _ = self.make_file("badplan.bin", 3 * MiB)
        client = self.client(multipart_threshold=MiB)
        with self.assertRaises(fileslink.ProtocolError):
            client.upload(path, self.fake.folder_id)
        self.assertEqual(self.puts(), [])
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")       # opened, so not left open and billed


class TestMultipartAbort(FolderInEnvCase):
    """Each initiated multipart upload ends aborted when it cannot complete:
    a part that fails for good, Ctrl-C, SystemExit. Parts of 64 KiB."""

    fake_options = {"min_part_size": _TINY_PART, "part_size": _TINY_PART}

    def client(self, **kw: Any) -> "fileslink.Client":
        kw.setdefault("multipart_threshold", 4 * _TINY_PART)
        return super().client(**kw)

    def test_part_that_fails_through_every_retry_ends_the_upload_with_its_number(self) -> None:
        path, _ = self.make_file("flaky.bin", 4 * _TINY_PART, seed=43)     # 4 parts
        self.fake.inject("storage", status=500, times=3)
        client = self.client(max_workers=1)
        with self.assertRaises(fileslink.TransferError) as caught:
            self.bounded(lambda: client.upload(path, self.fake.folder_id), 10)
        numbers = [p.query["partNumber"] for p in self.puts()]
        self.assertEqual(numbers[:3], ["1", "1", "1"])      # tried 3 times in all
        # The part queued behind it may already be under way; no more than that.
        self.assertLessEqual(len(numbers), 4)
        self.assertEqual((caught.exception.status, caught.exception.part), (500, 1))
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")

    def test_a_part_failing_while_others_wait_in_the_queue_still_ends_the_upload(self) -> None:
        # Regression: a queued part cancelled before a worker took it was never
        # counted out of the queue, and the coordinator could wait forever for
        # a worker slot that never frees (in about one run in four). Several
        # rounds of 32 parts on 2 workers, each bounded in time.
        client = self.client(max_workers=2)
        data = bytes(32 * _TINY_PART)
        rounds = 30
        for i in range(rounds):
            name = "q%02d.bin" % i
            # Aimed at this file: a cancelled PUT of the last one may still reach the fake.
            self.fake.inject("storage", status=400, path_contains="/" + name)
            with self.assertRaises(fileslink.TransferError):
                self.bounded(lambda n=name: client.upload(data, name=n))
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"] * rounds)
        self.join_workers()

    def test_system_exit_during_a_multipart_upload_aborts_it(self) -> None:
        path, _ = self.make_file("parts.bin", 32 * _TINY_PART, seed=11)
        # One part stalls (stop() cuts it short), so the multipart upload is
        # still running when the small file's on_file raises SystemExit.
        self.fake.inject("storage", delay=30, path_contains="parts.bin")
        calls: List[int] = []

        def on_file(index: int, result: Any) -> None:
            calls.append(index)
            raise SystemExit(3)

        # The client's timeout is longer than the stall: only a cancel that
        # shuts the stalled socket ends the upload before 30 s.
        client = self.client(max_workers=4, timeout=60)
        started = time.monotonic()
        with self.assertRaises(SystemExit):
            client.upload_many([path, ("small.txt", b"small")], on_file=on_file)
        # Generous, for a busy machine: this takes milliseconds, and a client
        # that waited for the stalled part would take 30 s.
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(calls, [1])
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])
        upload = next(iter(self.fake.multipart.values()))
        self.assertFalse(self.fake.files[upload.file_id].uploaded)
        self.join_workers()

    def stalled_multipart_file(self, seed: int) -> str:
        """A multipart-sized file whose first part stalls for 30 s on the fake,
        so that the upload cannot end by itself; with SIGINT raising
        KeyboardInterrupt in the main thread, which a real Ctrl-C then reaches."""
        if threading.current_thread() is not threading.main_thread():
            self.skipTest("signals go to the main thread")
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        path, _ = self.make_file("parts.bin", 32 * _TINY_PART, seed=seed)
        self.fake.inject("storage", delay=30)        # stop() cuts it short at cleanup
        return path

    def test_ctrl_c_during_a_multipart_upload_aborts_it_at_once(self) -> None:
        path = self.stalled_multipart_file(seed=12)
        sent: List[float] = []

        def progress(name: str, done: int, total: int) -> None:
            if not sent:                              # a real Ctrl-C, to the main thread
                sent.append(time.monotonic())
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        # The client's timeout is longer than the stall: only a cancel that
        # shuts the stalled socket ends the upload before 30 s.
        client = self.client(max_workers=4, timeout=60)
        with self.assertRaises(KeyboardInterrupt):
            client.upload(path, progress=progress)
        # Generous, for a busy machine: this takes milliseconds, and a client
        # that waited for the stalled part would take 30 s.
        self.assertLess(time.monotonic() - sent[0], 10)
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")
        self.assertFalse(self.fake.files[up.file_id].uploaded)
        self.assertEqual(self.fake.api_calls("/multipart/complete"), [])
        self.join_workers()                           # none is left sending

    def test_ctrl_c_aborts_at_once_when_the_rate_limit_budget_is_spent(self) -> None:
        path = self.stalled_multipart_file(seed=13)
        # The initiate's answer says no call is left for 30 s: the abort is
        # sent all the same, not after the user waited out the window.
        self.fake.inject("api", headers={"RateLimit": '"100-in-1min"; r=0; t=30'},
                         path_contains="initiate")
        sent: List[float] = []

        def progress(name: str, done: int, total: int) -> None:
            if not sent:
                sent.append(time.monotonic())
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        with self.assertRaises(KeyboardInterrupt):
            self.client(max_workers=2, timeout=60).upload(path, progress=progress)
        self.assertLess(time.monotonic() - sent[0], 10)   # generous: a wait would be 30 s
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")
        self.join_workers()


class TestPartFailingForGood(FolderInEnvCase):
    """64 KiB parts, and 20 ms of latency per request: the failure is known
    long before the other worker could send many more parts (without the
    latency, a thread starved by a busy machine makes the count flaky)."""

    fake_options = {"min_part_size": _TINY_PART, "part_size": _TINY_PART, "latency": 0.02}

    def test_workers_stop_and_the_upload_is_aborted_once_a_part_fails_for_good(self) -> None:
        path, _ = self.make_file("parts.bin", 32 * _TINY_PART, seed=9)
        self.fake.inject("storage", status=400)       # not retryable: fails for good
        client = self.client(max_workers=2, multipart_threshold=4 * _TINY_PART)
        with self.assertRaises(fileslink.TransferError) as cm:
            self.bounded(lambda: client.upload(path))
        puts = self.puts()
        (refused,) = [p for p in puts if p.status == 400]
        self.assertEqual(cm.exception.status, 400)
        self.assertEqual(cm.exception.part, int(refused.query["partNumber"]))
        # What was running or queued when the failure was seen (2 workers,
        # one task queued behind each), not the 32 parts.
        self.assertLessEqual(len(puts), 8,
                             "%d PUTs: parts kept going after one failed for good" % len(puts))
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")
        self.assertFalse(self.fake.files[up.file_id].uploaded)
        self.assertEqual([a.json["uploadId"] for a in self.fake.api_calls("/multipart/abort")],
                         [up.upload_id])                  # aborted once
        self.assertEqual(self.fake.api_calls("/multipart/complete"), [])
        self.join_workers()


class TestCtrlCWithManyUploads(SmallPartsResumeCase):
    """Ctrl-C with several multipart uploads open."""

    def test_ctrl_c_returns_within_two_seconds_with_several_uploads_to_abort(self) -> None:
        paths = [self.make_file("big%d.bin" % i, 128 * 1024, seed=97 + i)[0] for i in range(4)]
        self.fake.inject("storage", delay=30, times=100)       # parts stall (stop() ends it)
        self.fake.inject("api", delay=30, times=10, path_contains="abort")   # so does abort
        sending: Dict[str, int] = {}
        sent: List[float] = []

        def progress(name: str, done: int, total: int) -> None:
            sending[name] = done
            if len(sending) == 4 and not sent:    # all four initiated, parts on the wire
                sent.append(time.monotonic())
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        with self.assertRaises(KeyboardInterrupt), self.assertLogs("fileslink", "WARNING") as logs:
            self.big_client(max_workers=8, timeout=10).upload_many(paths, self.fake.folder_id,
                                                                   progress=progress)
        self.assertEqual(len(sent), 1)
        self.assertLess(time.monotonic() - sent[0], 2)
        # Each stalled abort gave up after its short try, and said so.
        self.assertEqual(len([r for r in logs.output if "could not abort" in r]), 4, logs.output)


# ---------------------------------------------------------------------------
# upload_many: batches, order, partial failure
# ---------------------------------------------------------------------------

class TestUploadMany(FolderInEnvCase):

    def test_upload_many_of_120_files_costs_at_most_12_api_calls_and_keeps_order(self) -> None:
        # The first file is the largest, so it is not the first to finish.
        items = [("b%03d.bin" % i, pseudo_random_bytes(256 * 1024 if i == 0 else 100 + i, seed=i))
                 for i in range(120)]
        client = self.client(max_workers=4)
        results = client.upload_many(items, self.fake.folder_id)
        self.assertEqual([r.name for r in results], [name for name, _ in items])
        for result, (_, data) in zip(results, items):
            self.assert_stored(result, data)
        calls = len(self.presigns()) + len(self.confirms())
        self.assertLessEqual(calls, 12)
        self.assertEqual(sum(len(r.json["filesMetadata"]) for r in self.presigns()), 120)
        self.assertEqual(sorted(i for r in self.confirms() for i in r.json["ids"]),
                         sorted(r.id for r in results))
        self.assertEqual(len(self.puts()), 120)

    def test_upload_many_takes_name_and_source_pairs(self) -> None:
        path, from_disk = self.make_file("on-disk.bin", 3000, seed=2)
        in_memory = pseudo_random_bytes(500, seed=3)
        streamed = pseudo_random_bytes(700, seed=4)
        client = self.client()
        results = client.upload_many([("renamed.bin", path), ("memory.txt", in_memory),
                                      ("stream.dat", io.BytesIO(streamed))], self.fake.folder_id)
        self.assertEqual([r.name for r in results], ["renamed.bin", "memory.txt", "stream.dat"])
        for result, want in zip(results, (from_disk, in_memory, streamed)):
            self.assert_stored(result, want)
        self.assertEqual(results[1].mime_type, "text/plain")

    def test_partial_failure_names_each_failed_source_and_keeps_the_others(self) -> None:
        sources: List[Any] = []
        data: Dict[int, bytes] = {}
        for i in range(10):
            name = "bad.bin" if i == 6 else "ok%d.bin" % i
            path, data[i] = self.make_file(name, 1000 + i, seed=i)
            sources.append(path)
        sources[3] = os.path.join(self.tmp, "missing.bin")
        self.fake.inject("storage", status=500, times=3, path_contains="/bad.bin")
        calls: List[int] = []
        with self.assertRaises(fileslink.UploadManyError) as cm:
            self.client().upload_many(sources, on_file=lambda i, r: calls.append(i))
        e = cm.exception
        self.assertIsInstance(e, fileslink.FilesLinkError)
        text = str(e)
        for fragment in ("missing.bin", "No such file", "bad.bin", "500"):
            self.assertIn(fragment, text)
        self.assertEqual([i for i, _, _ in e.failures], [3, 6])
        self.assertIsInstance(e.failures[0][2], FileNotFoundError)
        self.assertIsInstance(e.failures[1][2], fileslink.TransferError)
        self.assertEqual(e.failures[1][2].status, 500)
        self.assertEqual(len(e.results), 10)
        self.assertIs(e.results[3], e.failures[0][2])
        self.assertIs(e.results[6], e.failures[1][2])
        good = [i for i in range(10) if i not in (3, 6)]
        self.assertEqual([r.name for r in e.uploaded], ["ok%d.bin" % i for i in good])
        self.assertEqual([e.results[i] for i in good], e.uploaded)
        for i in good:
            stored = self.fake.files[e.results[i].id]
            self.assertEqual((stored.uploaded, stored.data == data[i]), (True, True), i)
        self.assertEqual(sorted(calls), list(range(10)))


class TestFairShareAndReruns(PartsCase):
    """Small files beside a big one, a bandwidth cap, skipping what is there."""

    def test_a_small_file_starts_within_one_part_of_a_big_one(self) -> None:
        big, _ = self.make_file("big.iso", 8 * MiB, seed=74)
        small, small_data = self.make_file("notes.txt", 100, seed=75)
        client = self.client(multipart_threshold=MiB, max_workers=1)
        client.upload_many([big, small], self.fake.folder_id)
        names = [r.path.rsplit("/", 1)[1] for r in self.puts()]
        self.assertEqual(names[:2], ["big.iso", "notes.txt"])
        self.assertEqual(len(names), 9)

    def test_max_bandwidth_holds_the_rate_down_across_workers(self) -> None:
        path, data = self.make_file("slow.bin", 2 * MiB, seed=76)
        client = self.client(multipart_threshold=MiB // 2, max_workers=4,
                             max_bandwidth=4 * MiB)
        started = time.monotonic()
        self.assert_stored(client.upload(path, self.fake.folder_id), data)
        # A lower bound only: a busy machine can make it slower, never faster.
        self.assertGreaterEqual(time.monotonic() - started, 0.45)

    def test_skip_existing_lists_once_and_sends_only_what_is_missing(self) -> None:
        a, _ = self.make_file("a.txt", 10, seed=77)
        b, _ = self.make_file("b.txt", 20, seed=78)
        c, c_data = self.make_file("c.txt", 30, seed=79)
        client = self.client()
        first = client.upload_many([a, b], self.fake.folder_id)
        mark = len(self.fake.log)
        again = client.upload_many([a, b, c], self.fake.folder_id, skip_existing=True)
        self.assertEqual([f.skipped for f in again], [True, True, False])
        self.assertEqual([f.id for f in again[:2]], [f.id for f in first])
        self.assert_stored(again[2], c_data)
        calls = [(r.method, r.path) for r in self.fake.log[mark:] if r.plane == "api"]
        self.assertEqual([m for m, _ in calls], ["GET", "POST", "POST"])  # list, presign, confirm
        self.assertEqual(len(self.puts(mark)), 1)


# ---------------------------------------------------------------------------
# Retry: what is retried and how often, Retry-After, stalls, chaos
# ---------------------------------------------------------------------------

_RETRYABLE = [
    ("connection reset mid-body", {"reset_after": 64 * 1024}),
    ("500", {"status": 500}),
    ("502", {"status": 502}),
    ("503", {"status": 503}),
    ("504", {"status": 504}),
    ("408", {"status": 408}),
    ("429 with Retry-After", {"status": 429, "headers": {"Retry-After": "0"}}),
]


class TestRetry(FolderInEnvCase):

    fake_options = {"min_part_size": MiB}        # 1 MiB parts: multipart tests stay small

    def test_each_retryable_put_failure_is_retried_and_the_upload_succeeds(self) -> None:
        client = self.client()
        for i, (label, fault) in enumerate(_RETRYABLE):
            with self.subTest(label):
                data = pseudo_random_bytes(256 * 1024, seed=100 + i)
                self.fake.inject("storage", **fault)  # type: ignore[arg-type]
                mark = self.mark()
                seen: List[int] = []
                result = client.upload(
                    data, self.fake.folder_id, name="r%d.bin" % i,
                    progress=lambda name, sent, total, seen=seen: seen.append(sent))
                self.assert_stored(result, data)
                puts = self.puts(mark)
                self.assertEqual([p.status for p in puts], [fault.get("status", 0), 200])
                # Each try announced the same length and the retry sent all of it.
                self.assertEqual([p.headers["content-length"] for p in puts], [str(len(data))] * 2)
                self.assertEqual(puts[1].body_size, len(data))
                self.assertEqual(seen[-1], len(data))          # progress rewound, not doubled
                self.assertLessEqual(max(seen), len(data))
                self.assertEqual(len(self.presigns(mark)), 1)
                self.assertEqual(len(self.confirms(mark)), 1)

    def test_each_retryable_api_failure_is_retried_and_the_upload_succeeds(self) -> None:
        client = self.client()
        api_faults = [(label, dict(fault, reset_after=0) if "reset_after" in fault else fault)
                      for label, fault in _RETRYABLE]
        for route, path in (("presign", self.presign_path()),
                            ("confirm", "/v1/files/confirm-upload")):
            for i, (label, fault) in enumerate(api_faults):
                with self.subTest(route=route, fault=label):
                    data = pseudo_random_bytes(1000, seed=200 + i)
                    self.fake.inject("api", path_contains=path, **fault)  # type: ignore[arg-type]
                    mark = self.mark()
                    result = client.upload(data, self.fake.folder_id, name="a%d.bin" % i)
                    self.assert_stored(result, data)
                    calls = self.since(mark, "api", path)
                    self.assertEqual([c.status for c in calls], [fault.get("status", 0), 200])
                    self.assertEqual(len(self.puts(mark)), 1)

    def test_a_retried_part_resends_the_same_bytes_from_its_own_offset(self) -> None:
        # A part reset mid-body, another refused with 503: the object must
        # still be exact, so each retry re-read its part from the part's start.
        data = pseudo_random_bytes(4 * MiB + 17, seed=31)
        stream = io.BytesIO(b"junk-before" + data)
        stream.seek(len(b"junk-before"))
        self.fake.inject("storage", reset_after=300 * 1024)
        self.fake.inject("storage", status=503)
        client = self.client(multipart_threshold=MiB, max_workers=2)
        result = client.upload(stream, self.fake.folder_id, name="retried.bin")
        self.assert_stored(result, data)
        up = self.fake.multipart[self.upload_id(result.id)]
        puts = self.puts()
        self.assertEqual(len(puts), len(up.parts) + 2)
        for put in puts:
            self.assertEqual(int(put.headers["content-length"]),
                             up.expected_size(int(put.query["partNumber"])))
        failed_parts = [p.query["partNumber"] for p in puts if p.status != 200]
        self.assertEqual(len(failed_parts), 2)
        for number in failed_parts:        # each failed part was sent again, and landed
            self.assertEqual([p.status for p in puts if p.query["partNumber"] == number][-1], 200)

    def test_each_non_retryable_put_failure_is_tried_once(self) -> None:
        client = self.client()
        for status in (400, 401, 403, 404):
            with self.subTest(status=status):
                self.fake.inject("storage", status=status)
                mark = self.mark()
                with self.assertRaises(fileslink.TransferError) as caught:
                    client.upload(b"payload", self.fake.folder_id, name="n%d.bin" % status)
                self.assertEqual(caught.exception.status, status)
                self.assertIsNone(caught.exception.part)
                self.assertIn(str(status), str(caught.exception))
                self.assertEqual(len(self.puts(mark)), 1)
                self.assertEqual(self.confirms(mark), [])
                self.assertEqual(len(self.presigns(mark)), 1)   # not presigned again

    def test_each_non_retryable_api_failure_is_tried_once(self) -> None:
        client = self.client()
        for status, cls in ((400, fileslink.APIError), (404, fileslink.APIError),
                            (401, fileslink.AuthError), (403, fileslink.AuthError)):
            with self.subTest(status=status):
                self.fake.inject("api", status=status, path_contains=self.presign_path(),
                                 body={"success": False, "message": "refused %d" % status})
                mark = self.mark()
                with self.assertRaises(fileslink.APIError) as caught:
                    client.upload(b"payload", self.fake.folder_id, name="n.bin")
                self.assertIs(type(caught.exception), cls)
                self.assertEqual(caught.exception.status, status)
                self.assertEqual(caught.exception.message, "refused %d" % status)
                self.assertIn("refused %d" % status, str(caught.exception))
                self.assertNotIn(self.fake.api_key, str(caught.exception))
                self.assertEqual(len(self.presigns(mark)), 1)
                self.assertEqual(self.puts(mark), [])

    def test_retry_after_too_long_to_wait_is_raised_at_once(self) -> None:
        self.fake.inject("api", status=429, headers={"Retry-After": "3600"},
                         path_contains=self.presign_path())
        # A client that waited would sit out the hour; 10 s is slack for a busy machine.
        with self.assertRaises(fileslink.RateLimitError) as caught:
            self.bounded(lambda: self.client().upload(b"x", self.fake.folder_id, name="x.bin"), 10)
        self.assertEqual(caught.exception.status, 429)
        self.assertEqual(len(self.presigns()), 1)

    def test_retry_after_is_waited_out_instead_of_the_backoff(self) -> None:
        # No backoff of its own: any wait is the Retry-After's.
        client = self.client(retry=fileslink.Retry(attempts=2, backoff=0, max_backoff=0))
        for plane, status in (("api", 429), ("api", 503), ("storage", 503)):
            with self.subTest(plane=plane, status=status):
                mark = self.mark()
                self.fake.inject(plane, status=status, headers={"Retry-After": "0.3"},
                                 path_contains=self.presign_path() if plane == "api" else None)
                started = time.monotonic()
                f = client.upload(b"hello", name="hello.txt")
                took = time.monotonic() - started
                self.assertGreaterEqual(took, 0.28)
                # Generous, for a busy machine: the upload itself takes milliseconds.
                self.assertLess(took, 10)
                self.assertTrue(self.fake.files[f.id].uploaded)
                tries = self.presigns(mark) if plane == "api" else self.puts(mark)
                self.assertEqual([r.status for r in tries], [status, 200])


class TestStalls(FolderInEnvCase):
    """Stalls of a minute (stop() cuts them short) against a 0.5 s timeout:
    three tries take 1.5 s, and a client whose timeout did not hold would sit
    out the stall. The bound of 15 s leaves a busy machine ten times that."""

    def test_a_put_stalled_for_good_fails_in_bounded_time(self) -> None:
        self.fake.inject("storage", delay=60, times=3)
        client = self.client(timeout=0.5)
        with self.assertRaises(fileslink.TransferError) as cm:
            self.bounded(lambda: client.upload(b"x" * 1000, name="slow.bin"), 15)
        self.assertIn("timed out", str(cm.exception))
        self.assertEqual(len(self.puts()), 3)
        self.assertEqual(self.confirms(), [])

    def test_an_api_call_stalled_for_good_fails_in_bounded_time(self) -> None:
        self.fake.inject("api", delay=60, times=3)
        client = self.client(timeout=0.5)
        with self.assertRaises(fileslink.APIError) as cm:
            self.bounded(lambda: client.upload(b"x" * 1000, name="slow.bin"), 15)
        self.assertIsNone(cm.exception.status)
        self.assertEqual(len(self.presigns()), 3)

    def test_a_transient_stall_is_retried_and_the_upload_succeeds(self) -> None:
        path, data = self.make_file("stall.bin", 2 * MiB, seed=7)
        self.fake.inject("storage", delay=60)             # the first try stalls
        f = self.bounded(lambda: self.client(timeout=0.5).upload(path), 15)
        self.assertEqual(len(self.puts()), 2)
        self.assertEqual(self.fake.files[f.id].data, data)


class TestRetryReports(FakeTestCase):
    """What -v and the final error say of retries."""

    def test_retries_are_logged_at_info_and_the_last_error_counts_the_tries(self) -> None:
        self.fake.inject("api", status=503, times=3)
        with self.assertLogs("fileslink", "INFO") as logs, \
                self.assertRaises(fileslink.APIError) as caught:
            self.client().upload(b"x", self.fake.folder_id, name="r.txt")
        self.assertIn("gave up after 3 tries", str(caught.exception))
        self.assertTrue(any("try 2 of 3 in" in line for line in logs.output), logs.output)


class TestLostAnswers(FakeTestCase):
    """The request was carried out and its answer lost: a POST that would make
    a visible duplicate is not sent again; one safe to repeat is."""

    def world_outcome(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except fileslink.FilesLinkError as e:
            return e

    def world_assert_one(self, rows: Dict[str, dict], title: str, outcome: Any) -> None:
        count = [row["title"] for row in rows.values()].count(title)
        self.assertEqual(count, 1, "%d rows titled %r: the POST was sent again" % (count, title))
        self.assertIsInstance(outcome, fileslink.APIError)
        self.assertIn("may have been created", str(outcome))

    def test_a_create_folder_whose_answer_was_lost_is_not_sent_again(self) -> None:
        client = self.client()
        client.list_projects()       # a kept-alive connection: its loss is not a stale socket
        self.fake.inject("api", lost=True, path_contains="/v1/folders")
        outcome = self.world_outcome(lambda: client.create_folder("Reports", self.fake.project_id))
        self.world_assert_one(self.fake.folders, "Reports", outcome)

    def test_a_create_project_whose_answer_was_lost_is_not_sent_again(self) -> None:
        self.fake.inject("api", lost=True, path_contains="/v1/projects")
        outcome = self.world_outcome(lambda: self.client().create_project("Quarterly"))
        self.world_assert_one(self.fake.projects, "Quarterly", outcome)

    def test_a_presign_whose_answer_was_lost_is_sent_again_and_the_upload_succeeds(self) -> None:
        self.fake.inject("api", lost=True, path_contains="/v1/files/" + self.fake.folder_id)
        f = self.client().upload(b"again", self.fake.folder_id, name="again.txt")
        self.assertEqual(len(self.fake.api_calls("/v1/files/" + self.fake.folder_id)), 2)
        self.assertEqual([x.id for x in self.fake.files.values() if x.uploaded], [f.id])
        self.assertEqual(self.fake.files[f.id].data, b"again")



class TestLostAnswersOnKeptConnections(FakeTestCase):
    """A lost answer on a kept-alive connection is not a stale connection."""

    def test_create_folder_is_sent_once_when_a_kept_alive_connection_drops_after_it(self) -> None:
        # A raw API: a GET is answered on a kept-alive connection; the POST that
        # follows on it is taken whole (the folder is made) and goes unanswered.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        self.addCleanup(listener.close)
        seen: List[str] = []

        def serve(conn: socket.socket) -> None:
            with conn:
                reader = conn.makefile("rb")
                while True:
                    line = reader.readline().decode()
                    if not line:
                        return
                    length = 0
                    for header in iter(reader.readline, b"\r\n"):
                        name, _, value = header.decode().partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value)
                    reader.read(length)
                    seen.append(line.split()[0])
                    if line.startswith("POST"):
                        return                    # carried out; the answer is lost
                    body = b'{"success": true, "data": []}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        client = self.client(base_url="http://127.0.0.1:%d" % listener.getsockname()[1])
        client.list_projects()                    # leaves a kept-alive connection
        with self.assertRaises(fileslink.APIError) as caught:
            client.create_folder("Invoices", "p1")
        self.assertIn("may have been", str(caught.exception))
        self.assertEqual(seen, ["GET", "POST"])   # a second POST is a second folder


class TestChaos(FolderInEnvCase):

    SEED = 20240611

    def test_chaos_every_upload_ends_byte_exact_or_with_an_error(self) -> None:
        """64 uploads (61 small, 3 multipart; upload_many and upload; paths,
        bytes, tuples, streams) while ~20 % of PUTs and ~10 % of API calls
        fail in every way the fake knows, stalls past the client's timeout
        included. Nothing may be corrupt, nothing reported done that is not,
        and no multipart upload the client learned of may be left open."""
        rng = random.Random(self.SEED)
        expected: Dict[str, bytes] = {}       # name -> bytes; names are unique

        def small(name: str, seed: int) -> bytes:
            roll = rng.random()
            size = 0 if roll < 0.05 else (rng.randrange(MiB, 2 * MiB) if roll > 0.9
                                          else rng.randrange(1, 200 * 1024))
            expected[name] = pseudo_random_bytes(size, seed)
            return expected[name]

        def path(name: str, data: bytes) -> str:
            p = os.path.join(self.tmp, name)
            with open(p, "wb") as f:
                f.write(data)
            return p

        big_sizes = [11 * MiB, 12 * MiB + 17, 13 * MiB - 5]
        bigs = []
        for i, size in enumerate(big_sizes):
            name = "big%d.bin" % i
            expected[name] = pseudo_random_bytes(size, 1000 + i)
            bigs.append(path(name, expected[name]))
        group_a = [path("a%02d.dat" % i, small("a%02d.dat" % i, i)) for i in range(22)]
        group_a.insert(9, bigs[0])
        group_b: List[Any] = [("b%02d.txt" % i, small("b%02d.txt" % i, 100 + i)) for i in range(22)]
        group_b.insert(15, bigs[1])
        singles = []
        for i in range(17):
            name = "c%02d.bin" % i
            data = small(name, 200 + i)
            kind = i % 3
            singles.append((name, path(name, data) if kind == 0 else data, kind))

        client = self.client(timeout=0.5, max_workers=4,
                             multipart_threshold=6 * MiB, batch_size=6)
        # Stalls just past the client's timeout; few, since each costs 0.5 s.
        self.fake.chaos(self.SEED, storage_rate=0.2, api_rate=0.1, delay=0.7)

        outcomes: Dict[str, Any] = {}         # name -> UploadedFile or the exception
        for group in (group_a, group_b):
            names = [item[0] if isinstance(item, tuple) else os.path.basename(item)
                     for item in group]
            for name, result in zip(names, _results(lambda g=group: client.upload_many(g))):
                outcomes[name] = result
        for name, source, kind in singles + [("big2.bin", bigs[2], 0)]:
            try:
                if kind == 2:
                    outcomes[name] = client.upload(io.BytesIO(source), name=name)
                elif kind == 1:
                    outcomes[name] = client.upload(source, name=name)
                else:
                    outcomes[name] = client.upload(source)
            except fileslink.FilesLinkError as e:
                outcomes[name] = e
        self.fake.clear_faults()

        self.assertEqual(sorted(outcomes), sorted(expected))
        unexpected = {n: r for n, r in outcomes.items()
                      if not isinstance(r, (fileslink.UploadedFile, fileslink.FilesLinkError))}
        ok = {n: r for n, r in outcomes.items() if isinstance(r, fileslink.UploadedFile)}
        failed = {n: r for n, r in outcomes.items() if isinstance(r, fileslink.FilesLinkError)}
        files = dict(self.fake.files)
        # Reported done, but the service does not hold exactly these bytes.
        missing = [n for n, r in ok.items()
                   if r.id not in files or not files[r.id].uploaded
                   or files[r.id].data != expected[n] or r.size != len(expected[n])
                   or r.multipart != (len(expected[n]) >= 6 * MiB)]
        # Anything the service shows as uploaded must be byte-exact, even if the
        # client gave up on it (a confirm that landed after the client's timeout).
        corrupt = [f.name for f in files.values()
                   if f.uploaded and f.data != expected.get(f.name)]
        # Multipart uploads the client learned of (it sent a part) left open.
        # An initiate answered after the client's timeout leaves an upload the
        # client never heard of, holding no parts (PROTOCOL.md: it costs
        # nothing); such orphans are the service's to expire, not counted.
        touched = {r.query.get("uploadId") for r in self.puts()}
        left_open = [u.upload_id for u in self.fake.multipart.values()
                     if u.state == "open" and (u.parts or u.upload_id in touched)]
        faults = list(self.fake.faults_fired)
        storage_faults = sum(1 for f in faults if f[0] == "storage")
        stalls = sum(1 for f in faults if "delay" in f[3])
        summary = ("chaos seed %d: %d uploads (%d multipart), %d ok, %d failed; %d faults injected "
                   "(%d storage, %d api, %d stalls); %d corrupt, %d confirmed-but-missing, "
                   "%d multipart left open" % (
                       self.SEED, len(outcomes), len(big_sizes), len(ok), len(failed), len(faults),
                       storage_faults, len(faults) - storage_faults, stalls, len(corrupt),
                       len(missing), len(left_open)))
        if _verbose():
            print("\n" + summary)
        # A failure says it all anyway: each assertion carries the counts.
        self.assertEqual(unexpected, {}, summary)
        self.assertEqual(corrupt, [], summary)
        self.assertEqual(missing, [], summary)
        self.assertEqual(left_open, [], summary)
        self.assertGreaterEqual(len(faults), 10,
                                "chaos was not active: the test proves nothing; " + summary)
        self.assertGreaterEqual(len(ok), len(outcomes) // 2,
                                "retries should save most uploads; " + summary)
        key = self.fake.api_key
        for name, e in failed.items():
            self.assertNotIn(key, _exception_text(e), name)


# ---------------------------------------------------------------------------
# Expired presigned URLs
# ---------------------------------------------------------------------------

class TestExpiry(FolderInEnvCase):

    fake_options = {"min_part_size": MiB}        # 1 MiB parts: multipart tests stay small

    def test_expired_single_part_url_is_presigned_again(self) -> None:
        # From a path: the file is read again from its start for the new URL.
        path, data = self.make_file("late.bin", 5000, seed=51)
        self.fake.inject("storage", expire=True)
        result = self.client().upload(path)
        self.assert_stored(result, data)
        self.assertEqual(len(self.presigns()), 2)
        first, second = self.fake.files.values()
        self.assertEqual((first.name, second.name), ("late.bin", "late.bin"))
        self.assertEqual(result.id, second.id)
        self.assertNotEqual(first.id, second.id)
        self.assertFalse(first.uploaded)                 # the old row stays unconfirmed
        self.assertEqual([c.json["ids"] for c in self.confirms()], [[second.id]])
        self.assertEqual([p.status for p in self.puts()], [403, 200])

    def test_url_that_expires_every_time_ends_in_a_transfer_error(self) -> None:
        self.fake.inject("storage", expire=True, times=10)
        with self.assertRaises(fileslink.TransferError) as caught:
            self.client().upload(b"never", self.fake.folder_id, name="never.bin")
        self.assertEqual(caught.exception.status, 403)
        self.assertIsNone(caught.exception.part)
        self.assertIn("expir", str(caught.exception))
        self.assertEqual(len(self.presigns()), 3)        # a bounded number of presigns
        self.assertEqual(len(self.puts()), 3)
        self.assertEqual(self.confirms(), [])

    def test_part_urls_expired_on_arrival_are_initiated_again_once(self) -> None:
        path, data = self.make_file("expiring.bin", 4 * MiB, seed=53)
        self.fake.inject("storage", expire=True)
        client = self.client(multipart_threshold=MiB, max_workers=2)
        result = self.bounded(lambda: client.upload(path))
        self.assert_stored(result, data)
        self.assertEqual(len([p for p in self.puts() if p.status == 403]), 1)
        first, second = self.fake.multipart.values()
        self.assertEqual((first.state, second.state), ("aborted", "completed"))
        self.assertEqual(len(self.fake.api_calls("/initiate")), 2)
        self.join_workers()

    def test_part_urls_expired_on_arrival_give_up_after_bounded_initiates(self) -> None:
        path, _ = self.make_file("parts.bin", 8 * MiB, seed=10)
        self.fake.inject("storage", expire=True, times=100)
        with self.assertRaises(fileslink.TransferError) as caught:
            self.bounded(lambda: self.client(multipart_threshold=MiB, max_workers=2).upload(path))
        self.assertEqual(caught.exception.status, 403)
        self.assertIn("expired", str(caught.exception))
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"] * 3)
        self.assertEqual(self.fake.api_calls("/multipart/complete"), [])
        self.join_workers()

    def test_part_urls_that_expire_mid_upload_fail_it_naming_the_lifetime(self) -> None:
        path, _ = self.make_file("slow.bin", 4 * MiB, seed=54)
        client = self.client(multipart_threshold=MiB, max_workers=1)

        def on_request(req: Any) -> None:   # part 1 is stored: every URL's lifetime runs out
            if req.plane == "storage" and req.query.get("partNumber") == "1" and req.status == 200:
                self.fake.advance_clock(self.fake.url_ttl + 60)

        self.fake.on_request = on_request
        with self.assertRaises(fileslink.TransferError) as caught:
            client.upload(path)
        refused = [p for p in self.puts() if p.status == 403]
        self.assertEqual((caught.exception.status, caught.exception.part), (403, 2))
        self.assertEqual(int(refused[0].query["partNumber"]), 2)
        self.assertIn("lifetime is 15 min", str(caught.exception))
        self.assertIn("after the upload had run", str(caught.exception))
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")
        self.assertEqual(self.fake.api_calls("/multipart/complete"), [])
        self.assertEqual(len(self.fake.api_calls("/initiate")), 1)

    def test_early_403_with_a_reset_mid_body_is_read_as_expiry_not_a_reset(self) -> None:
        # Storage answers 403 from the headers alone and hangs up while 16 MiB
        # are still being sent: the client must read that 403 (and presign again).
        data = pseudo_random_bytes(16 * MiB, seed=62)
        self.fake.inject("storage", expire=True)
        result = self.client().upload(data, self.fake.folder_id, name="large.bin")
        self.assert_stored(result, data)
        first, second = self.puts()
        self.assertEqual((first.status, second.status), (403, 200))
        self.assertLess(first.body_size, len(data))       # refused mid-body
        self.assertEqual(len(self.presigns()), 2)

    def test_early_403_for_a_bad_signature_is_reported_as_a_transfer_error(self) -> None:
        def tamper(d: dict) -> dict:
            url = d["parts"][0]["url"]
            d["parts"][0]["url"] = url.replace("X-Amz-Signature=", "X-Amz-Signature=00")
            return d

        self.fake.initiate_transform = tamper
        path, _ = self.make_file("tampered.bin", 11 * MiB, seed=63)
        client = self.client(multipart_threshold=6 * MiB, max_workers=1)
        with self.assertRaises(fileslink.TransferError) as caught:
            self.bounded(lambda: client.upload(path, self.fake.folder_id), 10)
        self.assertEqual((caught.exception.status, caught.exception.part), (403, 1))
        self.assertIn("SignatureDoesNotMatch", str(caught.exception))
        self.assertNotIn("X-Amz-Signature", str(caught.exception))   # no signature in messages
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")


class TestExpiryWarning(PartsCase):
    """Part URLs too short-lived for the rate are warned of."""

    def test_part_urls_too_short_for_the_rate_are_warned_of_then_named(self) -> None:
        self.fake.url_ttl = 2.0
        path, _ = self.make_file("late.bin", 4 * MiB, seed=80)
        client = self.client(multipart_threshold=MiB, max_workers=1, max_bandwidth=MiB)
        with self.assertLogs("fileslink", "WARNING") as logs, \
                self.assertRaises(fileslink.TransferError) as caught:
            client.upload(path, self.fake.folder_id)
        self.assertIn("will likely fail", "\n".join(logs.output))
        self.assertIn("lifetime is 2 s", str(caught.exception))
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])


# ---------------------------------------------------------------------------
# Integrity: the ETag against the MD5 of what was sent; sources that change
# ---------------------------------------------------------------------------

class TestIntegrity(FolderInEnvCase):

    def test_put_whose_etag_disagrees_with_the_bytes_sent_is_sent_again(self) -> None:
        path, data = self.make_file("etag.bin", 300 * 1024, seed=1)
        self.fake.inject("storage", wrong_etag=True)      # corrupted in transit
        result = self.client().upload(path)
        self.assert_stored(result, data)                  # the damaged copy was replaced
        self.assertEqual([p.status for p in self.puts()], [200, 200])
        self.assertEqual(len(self.confirms()), 1)

    def test_etag_always_wrong_fails_naming_md5_and_confirms_nothing(self) -> None:
        path, _ = self.make_file("etag.bin", 1000, seed=2)
        self.fake.inject("storage", wrong_etag=True, times=3)
        with self.assertRaises(fileslink.TransferError) as cm:
            self.client().upload(path)
        self.assertIn("MD5", str(cm.exception))
        self.assertEqual(len(self.puts()), 3)
        self.assertEqual(self.confirms(), [])
        self.assertFalse(any(f.uploaded for f in self.fake.files.values()))

    def test_without_checksum_a_wrong_etag_is_accepted_the_documented_trade_off(self) -> None:
        path, data = self.make_file("fast.bin", 1000, seed=3)
        self.fake.inject("storage", wrong_etag=True)
        f = self.client(checksum=False).upload(path)
        # One PUT, no comparison: storage holds the damaged bytes, and the
        # client could not know. That is what checksum=False gives up.
        self.assertEqual(len(self.puts()), 1)
        stored = self.fake.files[f.id]
        self.assertTrue(stored.uploaded)
        self.assertNotEqual(stored.data, data)

    def test_a_part_with_a_wrong_etag_is_sent_again_and_the_object_is_byte_exact(self) -> None:
        path, data = self.make_file("mp.bin", 11 * MiB, seed=4)
        self.fake.inject("storage", wrong_etag=True)
        f = self.client(multipart_threshold=6 * MiB).upload(path)
        self.assertTrue(f.multipart)
        self.assertEqual(len(self.puts()), 4)       # 3 parts, one sent twice
        self.assertEqual(self.fake.files[f.id].data, data)

    def _grow_on_first_progress(self, path: str) -> Callable[[str, int, int], None]:
        grown = threading.Event()

        def progress(name: str, sent: int, total: int) -> None:
            if sent > 0 and not grown.is_set():
                grown.set()
                with open(path, "ab") as f:
                    f.write(b"appended while uploading")

        return progress

    def test_file_that_grows_while_uploaded_is_not_confirmed(self) -> None:
        path, _ = self.make_file("log.txt", 3 * MiB, seed=5)
        with self.assertRaises(fileslink.SourceChangedError) as cm:
            self.client().upload(path, progress=self._grow_on_first_progress(path))
        self.assertIsInstance(cm.exception, fileslink.TransferError)
        self.assertIn("log.txt", str(cm.exception))
        self.assertIn("changed", str(cm.exception))
        self.assertEqual(self.confirms(), [])
        self.assertFalse(any(f.uploaded for f in self.fake.files.values()))

    def test_file_that_grows_during_a_multipart_upload_is_aborted_not_completed(self) -> None:
        path, _ = self.make_file("video.bin", 11 * MiB, seed=6)
        client = self.client(multipart_threshold=6 * MiB)
        with self.assertRaises(fileslink.SourceChangedError):
            client.upload(path, progress=self._grow_on_first_progress(path))
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])
        self.assertEqual(self.fake.api_calls("/multipart/complete"), [])
        self.assertFalse(any(f.uploaded for f in self.fake.files.values()))

    def test_file_that_grows_in_upload_many_fails_alone(self) -> None:
        paths = [self.make_file("m%d.bin" % i, 100 * 1024, seed=10 + i)[0] for i in range(3)]
        grown = threading.Event()

        def progress(name: str, sent: int, total: int) -> None:
            if name == "m1.bin" and not grown.is_set():
                grown.set()
                with open(paths[1], "ab") as f:
                    f.write(b"more")

        with self.assertRaises(fileslink.UploadManyError) as cm:
            self.client().upload_many(paths, progress=progress)
        e = cm.exception
        self.assertEqual([(i, n) for i, n, _ in e.failures], [(1, "m1.bin")])
        self.assertIsInstance(e.failures[0][2], fileslink.SourceChangedError)
        self.assertEqual([f.name for f in e.uploaded], ["m0.bin", "m2.bin"])
        uploaded = sorted(f.name for f in self.fake.files.values() if f.uploaded)
        self.assertEqual(uploaded, ["m0.bin", "m2.bin"])


class TestEncryptedStorage(FakeTestCase):
    """Under SSE-KMS and SSE-C storage's ETags are not MD5s: no resends."""

    def world_upload_to(self, sse: str) -> None:
        self.fake = fake = FakeFilesLink(sse=sse, min_part_size=_WORLD_PART,
                                         part_size=_WORLD_PART).start()
        self.addCleanup(fake.stop)
        path, data = self.make_file("sealed.bin", 4 * _WORLD_PART + 17, seed=21)
        client = self.client(checksum=True, multipart_threshold=2 * _WORLD_PART, max_workers=3)
        single = client.upload(data[:_WORLD_PART], fake.folder_id, name="one.bin")
        multi = client.upload(path, fake.folder_id)
        # One PUT for the single file, one per part (5): nothing sent twice.
        self.assertEqual(len([r for r in fake.storage_calls() if r.method == "PUT"]), 6)
        self.assertEqual(fake.files[single.id].data, data[:_WORLD_PART])
        self.assertTrue(multi.multipart)
        self.assertTrue(fake.files[multi.id].data == data, "stored bytes differ")

    def test_an_upload_to_sse_kms_storage_sends_each_part_once_and_succeeds(self) -> None:
        self.world_upload_to("aws:kms")

    def test_an_upload_to_sse_kms_dsse_storage_sends_each_part_once_and_succeeds(self) -> None:
        self.world_upload_to("aws:kms:dsse")

    def test_an_upload_to_sse_c_storage_sends_each_part_once_and_succeeds(self) -> None:
        self.world_upload_to("SSE-C")

    def test_under_sse_s3_the_etag_is_still_checked_and_a_damaged_body_resent(self) -> None:
        self.fake = fake = FakeFilesLink(sse="AES256").start()
        self.addCleanup(fake.stop)
        fake.inject("storage", wrong_etag=True)
        f = self.client().upload(b"payload" * 100, fake.folder_id, name="s3.bin")
        self.assertEqual(len(fake.storage_calls()), 2)
        self.assertEqual(fake.files[f.id].data, b"payload" * 100)

    def test_the_cli_names_its_own_flag_for_a_checksum_that_never_matches(self) -> None:
        error = fileslink.TransferError("storage reports MD5 x; if this storage's ETags are "
                                        "not MD5s, upload with checksum=False")
        self.assertIn("checksum=False (--no-checksum)", fileslink._describe(error))

    def test_a_genuine_md5_mismatch_is_retried_and_its_error_names_checksum_false(self) -> None:
        self.fake.inject("storage", wrong_etag=True, times=3)
        with self.assertRaises(fileslink.TransferError) as cm:
            self.client().upload(b"payload" * 100, self.fake.folder_id, name="bad.bin")
        self.assertEqual(len(self.fake.storage_calls()), 3)     # attempts=3: all of them
        self.assertIn("checksum=False", str(cm.exception))


# ---------------------------------------------------------------------------
# Rate limits
# ---------------------------------------------------------------------------

class TestRateLimit(FolderInEnvCase):

    fake_options = {"rate_limit": (5, 2)}

    def _429s(self) -> int:
        return sum(1 for r in self.fake.api_calls() if r.status == 429)

    def test_forty_files_under_five_calls_per_two_seconds_wait_instead_of_hammering(self) -> None:
        paths = [self.make_file("r%02d.txt" % i, 100 + i, seed=i)[0] for i in range(40)]
        files = self.client(batch_size=10).upload_many(paths)
        self.assertEqual(len(files), 40)
        self.assertTrue(all(self.fake.files[f.id].uploaded for f in files))
        calls = self.fake.api_calls()
        self.assertGreater(len(calls), 5, "the budget must be spent for the test to mean anything")
        # The ratelimit headers say when the budget is spent; a client that
        # waits for the window sees no 429 at all here (one calling on into
        # the limit and obeying Retry-After would see one per window).
        self.assertEqual(self._429s(), 0)

    def test_two_threads_sharing_a_client_share_its_budget(self) -> None:
        client = self.client(batch_size=5)
        results: Dict[int, Any] = {}

        def run(t: int) -> None:
            items = [("t%d-%02d.txt" % (t, i), b"x" * (i + 1)) for i in range(10)]
            try:
                results[t] = client.upload_many(items)
            except BaseException as e:  # reported by the main thread
                results[t] = e

        threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual([len(results[t]) for t in range(2)], [10, 10], results)
        self.assertEqual(sum(1 for f in self.fake.files.values() if f.uploaded), 20)
        self.assertLessEqual(self._429s(), 2)


class TestLongRateLimitWait(FolderInEnvCase):

    def test_a_wait_of_minutes_for_the_rate_limit_is_a_warning(self) -> None:
        # Without -v, fifteen silent minutes look like a hang.
        if threading.current_thread() is not threading.main_thread():
            self.skipTest("signals go to the main thread")
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        client = self.client()
        self.fake.inject("api", headers={"RateLimit": '"100-in-1min"; r=0; t=600'})
        client.list_files(self.fake.folder_id)                 # no call left for 600 s

        class StopWaiting(logging.Handler):                      # the user gives up
            def emit(self, record: logging.LogRecord) -> None:
                if "waiting" in record.getMessage():
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        with self.assertRaises(KeyboardInterrupt), self.assertLogs("fileslink", "INFO") as logs:
            logging.getLogger("fileslink").addHandler(StopWaiting())  # assertLogs drops it after
            client.list_files(self.fake.folder_id)
        self.assertRegex(logs.output[-1], r"^WARNING:fileslink:GET /v1/files/folder/\S+: rate "
                         r"limit budget spent; waiting \d+\.\d\d s$")


class TestHostileRateLimits(FakeTestCase):
    """Rate-limit headers asking for a day or for decades: the wait is capped as
    Retry-After is, and RateLimitError comes at once. In a child process: a
    client that obeys waits for a day."""

    def world_upload_in_a_child(self) -> Tuple[str, float]:
        proc = subprocess.Popen([sys.executable, "-c", _WORLD_UPLOAD], cwd=self.tmp,
                                env=self.child_env(FILESLINK_STATE_DIR=self.tmp, PYTHONPATH=_WORLD_REPO), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.fail("the upload was still waiting for the rate limit after 5 s")
        self.assertEqual(proc.returncode, 0, err.decode(errors="replace"))
        outcome, took = out.decode().split()
        return outcome, float(took)

    def test_a_ratelimit_reset_a_day_away_raises_rate_limit_error_at_once(self) -> None:
        self.fake.inject("api", headers={"RateLimit": '"100-in-1min"; r=0; t=86400'},
                         path_contains="/v1/files/" + self.fake.folder_id)
        outcome, took = self.world_upload_in_a_child()
        self.assertEqual(outcome, "RateLimitError")
        self.assertLess(took, 2)

    def test_an_epoch_x_ratelimit_reset_raises_rate_limit_error_at_once(self) -> None:
        # An hour from now as a Unix time: too long whether read as a time
        # (1 h) or, wrongly, as seconds (57 years).
        self.fake.inject("api", headers={
            "RateLimit": None, "RateLimit-Policy": None, "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 3600)},
            path_contains="/v1/files/" + self.fake.folder_id)
        outcome, took = self.world_upload_in_a_child()
        self.assertEqual(outcome, "RateLimitError")
        self.assertLess(took, 2)


# ---------------------------------------------------------------------------
# The wire: what a PUT carries; connections kept, reused and replaced
# ---------------------------------------------------------------------------

class TestPutOnTheWire(FakeTestCase):

    def test_put_carries_length_and_declared_type_and_never_the_key(self) -> None:
        client = self.client()
        cases = [("report.pdf", "application/pdf"), ("photo.JPG", "image/jpeg"),
                 ("notes.txt", "text/plain"), ("data.unknownext", "application/octet-stream"),
                 ("no-extension", "application/octet-stream")]
        for name, mime in cases:
            with self.subTest(name):
                data = pseudo_random_bytes(3000, seed=len(name))
                mark = self.mark()
                result = client.upload(data, self.fake.folder_id, name=name)
                self.assertEqual(result.mime_type, mime)
                presign = self.presigns(mark)[0]
                self.assertEqual(presign.json["filesMetadata"],
                                 [{"name": name, "size": 3000, "mimeType": mime}])
                put = self.puts(mark)[0]
                self.assertEqual(put.headers.get("content-length"), "3000")
                self.assertNotIn("transfer-encoding", put.headers)
                self.assertNotIn("authorization", put.headers)
                self.assertEqual(put.headers.get("content-type"), mime)
                self.assertNotEqual(put.headers.get("content-type"),
                                    "application/x-www-form-urlencoded")
                self.assertEqual(self.fake.files[result.id].mime_type, mime)
                for call in self.since(mark, "api"):
                    self.assertEqual(call.headers.get("authorization"), self.fake.api_key)

    def test_explicit_mime_type_is_declared_and_sent(self) -> None:
        client = self.client()
        mark = self.mark()
        client.upload(b"{}", self.fake.folder_id, name="x.bin", mime_type="application/json")
        self.assertEqual(self.presigns(mark)[0].json["filesMetadata"][0]["mimeType"],
                         "application/json")
        self.assertEqual(self.puts(mark)[0].headers["content-type"], "application/json")

    def test_each_part_is_sent_through_a_reader_bounded_to_its_length(self) -> None:
        # One worker: every part goes down the same kept-alive connection, so a
        # part that sent more than its Content-Length would corrupt the next
        # request on it. The file is far longer than any part.
        path, data = self.make_file("bounded.bin", 11 * MiB, seed=61)
        client = self.client(multipart_threshold=6 * MiB, max_workers=1)
        result = client.upload(path, self.fake.folder_id)
        self.assert_stored(result, data)
        up = self.fake.multipart[self.upload_id(result.id)]
        puts = self.puts()
        self.assertEqual(len(puts), up.part_count)        # no extra request
        self.assertEqual(len(self.fake.log), up.part_count + 2)   # + initiate, complete
        for put in puts:
            number = int(put.query["partNumber"])
            self.assertEqual((put.status, put.body_size, int(put.headers["content-length"])),
                             (200, up.expected_size(number), up.expected_size(number)))

    def test_an_api_call_does_not_allocate_its_body_cap(self) -> None:
        # A small answer must cost small memory. (Before 3.10, HTTPResponse.read(n)
        # allocates n bytes up front: reading with a 32 MiB cap costs 32 MiB and
        # ~20 ms of zero-filling per call, on every call.)
        client = self.client()
        client.list_projects()                    # connection open, modules imported
        tracemalloc.start()
        try:
            client.list_projects()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 4 * MiB)


class TestConnectionReuse(FakeTestCase):

    def _count_connections(self) -> Dict[int, int]:
        """Patch-free of fileslink: counts the TCP connections the fake accepts,
        per port, from now on."""
        counts: Dict[int, int] = {}
        real = _Handler.setup
        lock = threading.Lock()

        def counting(handler: Any) -> None:
            with lock:
                port = handler.server.server_address[1]
                counts[port] = counts.get(port, 0) + 1
            real(handler)

        patcher = mock.patch.object(_Handler, "setup", counting)
        patcher.start()
        self.addCleanup(patcher.stop)
        return counts

    def test_uploads_from_one_client_reuse_one_connection_per_host(self) -> None:
        api_port = int(self.fake.base_url.rsplit(":", 1)[1])
        storage_port = int(self.fake.storage_url.rsplit(":", 1)[1])
        counts = self._count_connections()
        client = self.client()
        for i in range(5):
            client.upload(pseudo_random_bytes(2000, seed=i), self.fake.folder_id, name="r%d" % i)
        self.assertEqual(len(self.puts()), 5)
        self.assertEqual(counts, {api_port: 1, storage_port: 1})

    def test_upload_many_opens_at_most_one_storage_connection_per_worker(self) -> None:
        api_port = int(self.fake.base_url.rsplit(":", 1)[1])
        storage_port = int(self.fake.storage_url.rsplit(":", 1)[1])
        counts = self._count_connections()
        client = self.client(max_workers=3)
        items = [("m%02d.bin" % i, pseudo_random_bytes(4000, seed=i)) for i in range(24)]
        client.upload_many(items, self.fake.folder_id)
        self.assertEqual(len(self.puts()), 24)
        self.assertEqual(counts.get(api_port), 1)
        self.assertLessEqual(counts.get(storage_port, 0), 3)

    def test_connection_closed_while_idle_is_replaced_without_spending_a_try(self) -> None:
        client = self.client(retry=fileslink.Retry(attempts=1))
        client.upload(b"first", self.fake.folder_id, name="first.txt")
        self.assertGreaterEqual(self.fake.close_idle_connections(), 1)
        mark = self.mark()
        result = client.upload(b"second", self.fake.folder_id, name="second.txt")
        self.assert_stored(result, b"second")
        self.assertEqual([r.status for r in self.since(mark)], [200, 200, 200])

    def test_kept_alive_connection_that_fails_on_the_next_request_is_retried_for_free(self) -> None:
        # The race that no check before reuse can close: the server drops a
        # kept-alive connection just as the next request goes out. Modelled by
        # resetting that request on each plane; with attempts=1 there is no
        # retry to spend, so only the fresh-connection retry can save it. A short
        # timeout: a retry that re-sends the headers but not the body stalls.
        client = self.client(retry=fileslink.Retry(attempts=1), timeout=2)
        client.upload(b"first", self.fake.folder_id, name="first.txt")   # connections now kept
        self.fake.inject("api", reset_after=0, path_contains=self.presign_path())
        self.fake.inject("storage", reset_after=0)
        mark = self.mark()
        result = client.upload(b"second", self.fake.folder_id, name="second.txt")
        self.assert_stored(result, b"second")
        self.assertEqual([r.status for r in self.presigns(mark)], [0, 200])
        self.assertEqual([r.status for r in self.puts(mark)], [0, 200])

    def test_the_free_retry_is_once_and_only_for_a_reused_connection(self) -> None:
        with self.subTest("a fresh connection reset spends the only try"):
            client = self.client(retry=fileslink.Retry(attempts=1))
            self.fake.inject("api", reset_after=0, path_contains=self.presign_path())
            mark = self.mark()
            with self.assertRaises(fileslink.APIError):
                client.upload(b"x", self.fake.folder_id, name="x.txt")
            self.assertEqual(len(self.presigns(mark)), 1)
        with self.subTest("a reused connection is replaced once, not twice"):
            client = self.client(retry=fileslink.Retry(attempts=1))
            client.upload(b"first", self.fake.folder_id, name="first.txt")
            self.fake.inject("api", reset_after=0, times=2, path_contains=self.presign_path())
            mark = self.mark()
            with self.assertRaises(fileslink.APIError):
                client.upload(b"y", self.fake.folder_id, name="y.txt")
            self.assertEqual(len(self.presigns(mark)), 2)


class TestInterimAnswers(FakeTestCase):
    """102 Processing and 103 Early Hints come before the answer: skip them."""

    fake_options = {"min_part_size": _WORLD_PART, "part_size": _WORLD_PART}

    def test_102_and_103_before_an_api_answer_are_skipped(self) -> None:
        self.fake.inject("api", interim=(102, 103), path_contains="/v1/files/" + self.fake.folder_id)
        f = self.client().upload(b"hello", self.fake.folder_id, name="a.txt")
        self.assertEqual(self.fake.files[f.id].data, b"hello")
        self.assertEqual(len(self.fake.api_calls("/v1/files/" + self.fake.folder_id)), 1)

    def test_102_and_103_before_a_put_answer_are_skipped(self) -> None:
        self.fake.inject("storage", interim=(102, 103))
        f = self.client().upload(b"hello", self.fake.folder_id, name="a.txt")
        self.assertEqual(self.fake.files[f.id].data, b"hello")
        self.assertEqual(len(self.fake.storage_calls()), 1)

    def test_a_multipart_upload_with_interim_answers_everywhere_succeeds(self) -> None:
        # Every answer on kept-alive connections: a 1xx left unread would be
        # taken for the next exchange's answer.
        self.fake.inject("api", interim=(103,), times=50)
        self.fake.inject("storage", interim=(102, 103), times=50)
        path, data = self.make_file("hints.bin", 5 * _WORLD_PART, seed=22)
        f = self.client(multipart_threshold=_WORLD_PART, max_workers=2).upload(
            path, self.fake.folder_id)
        self.assertTrue(self.fake.files[f.id].data == data, "stored bytes differ")
        self.assertEqual(len(self.fake.storage_calls()), 5)



class TestSlowAnswers(FakeTestCase):
    """An answer trickling in at a byte every 0.5 s never trips a 1 s per-socket
    timeout; `timeout` must also bound the whole answer. Each trickle would take
    over a minute whole; the bound of 6 s leaves room for a loaded machine."""

    def world_fails_in_time(self, error: type) -> None:
        client = self.client(timeout=1, retry=fileslink.Retry(attempts=1))
        started = time.monotonic()
        with self.assertRaises(error):
            self.bounded(lambda: client.upload(b"x" * 100, self.fake.folder_id, name="slow.bin"), 6)
        self.assertLess(time.monotonic() - started, 6)

    def test_api_answer_headers_trickling_in_fail_the_call_within_seconds(self) -> None:
        self.fake.inject("api", trickle=0.5, times=5)
        self.world_fails_in_time(fileslink.APIError)

    def test_an_api_answer_body_trickling_in_fails_the_call_within_seconds(self) -> None:
        self.fake.inject("api", trickle=0.5, trickle_body=True, times=5)
        self.world_fails_in_time(fileslink.APIError)

    def test_a_put_answer_trickling_in_fails_the_put_within_seconds(self) -> None:
        self.fake.inject("storage", trickle=0.5, times=5)
        self.world_fails_in_time(fileslink.TransferError)


# ---------------------------------------------------------------------------
# Errors: the documented class and a useful message for each bad input
# ---------------------------------------------------------------------------

class TestMissingConfiguration(FakeTestCase):

    def test_no_api_key_is_a_config_error(self) -> None:
        self.assertNotIn("FILESLINK_KEY", os.environ)
        with self.assertRaises(fileslink.ConfigError) as caught:
            fileslink.Client(base_url=self.fake.base_url)
        self.assertIn("FILESLINK_KEY", str(caught.exception))
        self.assertEqual(self.fake.log, [])

    def test_no_folder_is_a_config_error(self) -> None:
        self.assertNotIn("FILESLINK_FOLDER", os.environ)
        with self.assertRaises(fileslink.ConfigError) as caught:
            self.client().upload(b"x", name="x.bin")
        self.assertIn("FILESLINK_FOLDER", str(caught.exception))
        self.assertEqual(self.fake.log, [])


class TestBadInput(FolderInEnvCase):

    def test_bad_inputs_raise_the_documented_error_with_a_useful_message(self) -> None:
        fake, folder = self.fake, self.fake.folder_id
        client = self.client()
        missing = os.path.join(self.tmp, "missing.bin")
        unreadable, _ = self.make_file("secret.bin", 10)
        os.chmod(unreadable, 0)
        empty, _ = self.make_file("empty.bin", 0)
        read_end, write_end = os.pipe()
        pipe = open(read_end, "rb")
        self.addCleanup(pipe.close)
        self.addCleanup(os.close, write_end)
        wrong_key = "fl_wrong_key_0123456789"

        def up(source: Any = b"data", **kw: Any) -> Callable[[], Any]:
            kw.setdefault("name", None if not isinstance(source, bytes) else "a.bin")
            return lambda: client.upload(source, **kw)

        def inject(**kw: Any) -> Callable[[], None]:
            return lambda: fake.inject("api", **kw)

        def nothing() -> None:
            pass

        # Extra checks: each gets the exception and the requests it cost.
        def capped(e: Any, calls: List[Req]) -> None:
            self.assertEqual(e.status, 400)
            self.assertLessEqual(len(e.body), 64 * 1024)
            self.assertLess(len(str(e)), 1000)

        def rejected_key(e: Any, calls: List[Req]) -> None:
            self.assertEqual((e.status, e.message), (401, "Invalid API key"))
            self.assertNotIn(wrong_key, _exception_text(e))
            self.assertEqual(len(calls), 1)

        def html_page(e: Any, calls: List[Req]) -> None:
            self.assertIs(type(e), fileslink.APIError)
            self.assertEqual(e.status, 502)
            self.assertTrue(e.body.startswith("<!DOCTYPE html>"))
            self.assertEqual(len(calls), 3)               # after the retries

        def no_put(e: Any, calls: List[Req]) -> None:
            self.assertEqual([r for r in calls if r.plane == "storage"], [])

        def message(status: int, text: str) -> Callable[[Any, List[Req]], None]:
            def check(e: Any, calls: List[Req]) -> None:
                self.assertEqual((e.status, e.message), (status, text))
                no_put(e, calls)
            return check

        def all_protocol(e: Any, calls: List[Req]) -> None:
            for _, _, cause in e.failures:
                self.assertIsInstance(cause, fileslink.ProtocolError)

        def status(n: int, tries: int = 1) -> Callable[[Any, List[Req]], None]:
            def check(e: Any, calls: List[Req]) -> None:
                self.assertEqual(e.status, n)
                self.assertEqual(len([r for r in calls if r.plane == "api"]), tries)
            return check

        one_url = {"success": True, "urls": [{"id": "f1", "url": fake.storage_url + "/b/k?x=1",
                                              "s3Key": "k"}]}
        padded = json.dumps({"success": False, "message": "bad", "pad": "x" * (2 * MiB)})
        # (label, arrange, act, error class or None for success, fragment, extra check, offline)
        rows: List[Tuple[str, Callable[[], None], Callable[[], Any], Optional[type], str,
                         Optional[Callable[[Any, List[Req]], None]], bool]] = [
            ("missing file", nothing, up(missing), FileNotFoundError, "missing.bin", None, True),
            ("directory", nothing, up(self.tmp), IsADirectoryError, "directory", None, True),
            ("unreadable file", nothing, up(unreadable), PermissionError, "secret.bin", None, True),
            ("empty file", nothing, up(empty), None, "", None, False),
            ("non-seekable stream without a name", nothing, up(pipe), fileslink.ConfigError,
             "name=", None, True),
            ("bytes without a name", nothing, up(b"data", name=None), fileslink.ConfigError,
             "name=", None, True),
            ("folder id with a slash", nothing, up(folder_id="../" + folder),
             fileslink.ConfigError, "folder id", None, True),
            ("API key with a newline", nothing,
             lambda: fileslink.Client(api_key=fake.api_key + "\n", base_url=fake.base_url),
             fileslink.ConfigError, "newline", None, True),
            ("401", nothing, lambda: self.client(api_key=wrong_key).upload(b"d", name="a.bin"),
             fileslink.AuthError, "Invalid API key", rejected_key, False),
            ("403", inject(status=403), up(), fileslink.AuthError, "blocked", status(403), False),
            ("404", nothing, up(folder_id="no-such-folder"), fileslink.APIError,
             "Folder not found", status(404), False),
            ("400 with message", inject(status=400, body={
                "success": False, "message": "Storage limit exceeded for this plan"}), up(),
             fileslink.APIError, "Storage limit exceeded for this plan", status(400), False),
            ("429 exhausted", inject(status=429, headers={"Retry-After": "0"}, times=3), up(),
             fileslink.RateLimitError, "429", status(429, tries=3), False),
            ("HTML 502 page", inject(status=502, non_json=True, times=3), up(),
             fileslink.APIError, "502", html_page, False),
            ("truncated JSON", inject(status=200, body='{"success": true, "urls": [{"id": "f'),
             up(), fileslink.ProtocolError, "not a JSON object", no_put, False),
            ("JSON without urls", inject(status=200, body={"success": True}), up(),
             fileslink.ProtocolError, "`urls`", None, False),
            ("fewer urls than files", inject(status=200, body=one_url),
             lambda: client.upload_many([("a.bin", b"a"), ("b.bin", b"b")]),
             fileslink.UploadManyError, "expected 2 entries", all_protocol, False),
            ("success false on 200", inject(status=200, body={
                "success": False, "message": "Folder is archived"}), up(),
             fileslink.APIError, "Folder is archived", message(200, "Folder is archived"), False),
            ("10 MiB error body", inject(status=400, body=b"<" * (10 * MiB)), up(),
             fileslink.APIError, "400", capped, False),
            ("JSON error body past the cap", inject(status=400, body=padded), up(),
             fileslink.APIError, "400", capped, False),
        ]
        for label, arrange, act, cls, fragment, check, offline in rows:
            with self.subTest(label):
                if label == "unreadable file" and hasattr(os, "geteuid") and os.geteuid() == 0:
                    self.skipTest("root reads any file")
                fake.clear_faults()
                before = len(fake.log)
                arrange()
                if cls is None:
                    got = self.bounded(act)
                    stored = fake.files[got.id]
                    self.assertEqual((got.size, stored.uploaded, stored.data), (0, True, b""))
                    continue
                with self.assertRaises(cls) as cm:
                    self.bounded(act)                 # no row may hang the suite
                self.assertIn(fragment, str(cm.exception))
                self.assertNotIn(fake.api_key, _exception_text(cm.exception))
                if check is not None:
                    check(cm.exception, fake.log[before:])
                if offline:
                    self.assertEqual(fake.log[before:], [], "no request before a local error")


    def test_bad_client_options_are_config_errors_that_name_the_option(self) -> None:
        whole, number = "a whole number >= 1", "a finite number > 0"
        rows: List[Tuple[str, Any, str]] = [
            ("max_workers", 0, whole), ("max_workers", 2.5, whole), ("max_workers", True, whole),
            ("max_workers", None, whole), ("multipart_threshold", -1, whole),
            ("multipart_threshold", None, whole), ("batch_size", 0, whole),
            ("batch_size", "10", whole), ("timeout", 0, number), ("timeout", None, number),
            ("timeout", "5", number), ("max_bandwidth", 0.0, number),
            ("max_bandwidth", False, number), ("timeout", float("inf"), number),
            ("timeout", float("nan"), number), ("max_bandwidth", float("inf"), number),
            ("retry", 3, "a fileslink.Retry"),
            ("ssl_context", "ca.pem", "an ssl.SSLContext")]
        base = {"api_key": "k", "base_url": self.fake.base_url}
        for option, value, words in rows:
            with self.subTest(option=option, value=value):
                with self.assertRaises(fileslink.ConfigError) as cm:
                    fileslink.Client(**dict(base, **{option: value}))
                self.assertIn("%s must be %s" % (option, words), str(cm.exception))
        for option, value in (("batch_size", None), ("max_bandwidth", None), ("timeout", 0.5),
                              ("max_bandwidth", 1), ("multipart_threshold", 1)):
            with self.subTest(option=option, value=value):
                fileslink.Client(**dict(base, **{option: value})).close()
        self.assertEqual(self.fake.log, [])


class TestGzipErrors(FakeTestCase):
    """An error body gzipped though nobody asked: described, not dumped."""

    def world_assert_described(self, text: str, raw: bytes) -> None:
        self.assertIn("gzip", text)
        sizes = (str(len(gzip.compress(raw, mtime=0))), str(len(raw)))
        self.assertTrue(any(size in text for size in sizes), text)
        self.assertNotRegex(text, "[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]")

    def test_a_gzip_error_body_from_the_api_is_described_by_size_and_encoding(self) -> None:
        raw = json.dumps({"success": False, "message": "folder is locked"}).encode()
        self.fake.inject("api", status=400, body=raw, gzip=True)
        with self.assertRaises(fileslink.APIError) as cm:
            self.client().upload(b"x" * 100, self.fake.folder_id, name="z.bin")
        self.world_assert_described(str(cm.exception), raw)

    def test_a_gzip_error_body_from_storage_is_described_by_size_and_encoding(self) -> None:
        raw = _s3_error("AccessDenied", "Access Denied")
        self.fake.inject("storage", status=400, body=raw, gzip=True)
        with self.assertRaises(fileslink.TransferError) as cm:
            self.client().upload(b"x" * 100, self.fake.folder_id, name="z.bin")
        self.world_assert_described(str(cm.exception), raw)



class TestBadInputOfTheWild(FakeTestCase):
    """Keys and streams a user pastes or opens wrongly."""

    def test_a_key_the_headers_cannot_carry_is_refused_and_never_shown(self) -> None:
        key = "\u201c%s\u201d" % self.fake.api_key   # pasted with a page's curly quotes
        with self.assertRaises(fileslink.ConfigError) as caught:
            self.client(api_key=key).list_projects()
        self.assertNotIn(self.fake.api_key, repr(caught.exception))
        self.assertEqual(self.fake.log, [])

    def test_a_text_mode_spooled_temporary_file_is_refused_before_any_call(self) -> None:
        stream = tempfile.SpooledTemporaryFile(mode="w+")
        self.addCleanup(stream.close)
        stream.write("hello\n")
        stream.seek(0)
        with self.assertRaises(fileslink.ConfigError) as caught:
            self.client().upload(stream, self.fake.folder_id, name="x.txt")
        self.assertIn("binary", str(caught.exception))
        self.assertEqual(self.fake.log, [])


# ---------------------------------------------------------------------------
# Security: the key stays home, signatures stay secret, URLs are checked
# ---------------------------------------------------------------------------

class TestSecurity(FolderInEnvCase):

    def test_api_redirects_are_not_followed_so_the_key_stays_home(self) -> None:
        recorder, seen = self.recorder()
        client = self.client()
        for status in (301, 302, 303, 307, 308):
            with self.subTest(status=status):
                self.fake.clear_faults()
                mark = self.mark()
                location = recorder + "/v1/files/" + self.fake.folder_id
                self.fake.inject("api", status=status, headers={"Location": location},
                                 path_contains=self.presign_path())
                with self.assertRaises(fileslink.APIError) as cm:
                    client.upload(b"secret bytes", name="r.bin")
                self.assertEqual(cm.exception.status, status)
                self.assertIn("redirect", str(cm.exception))
                self.assertEqual(len(self.since(mark)), 1)     # the presign, and nothing after it
                self.assertEqual(seen, [])                     # the key went nowhere else

    def test_puts_carry_no_authorization_and_api_calls_carry_the_key(self) -> None:
        path, _ = self.make_file("big.bin", 11 * MiB, seed=13)
        client = self.client(multipart_threshold=6 * MiB)
        client.upload(b"hello", name="hello.txt")
        client.upload_many([path, ("b.txt", b"b")])
        storage = [r for r in self.fake.log if r.plane == "storage"]
        self.assertEqual(len(storage), 5)
        self.assertEqual([r for r in storage if "authorization" in r.headers], [])
        keys = {r.headers.get("authorization") for r in self.fake.log if r.plane == "api"}
        self.assertEqual(keys, {self.fake.api_key})

    def _bad_urls(self, port: int) -> List[Tuple[str, str]]:
        missing = os.path.join(self.tmp, "never-created")
        return [
            ("file", "file://" + missing),
            ("file passwd", "file:///etc/passwd"),
            ("ftp", "ftp://127.0.0.1:%d/bucket/key" % port),
            ("data", "data:application/octet-stream;base64,AAAA"),
            ("no host", "http:///bucket/key?X-Amz-Signature=abc"),
            ("empty host with port", "http://:%d/bucket/key" % port),
            ("scheme-relative", "//127.0.0.1:%d/bucket/key" % port),
            ("a file path", "/etc/passwd"),
            ("header injection", "http://127.0.0.1:%d/k?a=1\r\nX-Evil: 1" % port),
        ]

    def test_presigned_url_that_is_not_http_with_a_host_is_refused_before_any_io(self) -> None:
        # The fake's presign answer is replaced by a scripted one (inject with
        # status 200 and a JSON body): the URL reaches the client exactly as a
        # hostile or broken service would send it, through a real socket.
        port, was_connected = self.listener()
        client = self.client()
        presign = self.presign_path()
        for label, url in self._bad_urls(port):
            with self.subTest(label):
                self.fake.clear_faults()
                mark = self.mark()
                self.fake.inject("api", status=200, path_contains=presign, body={
                    "success": True, "urls": [{"id": "file-1", "url": url, "s3Key": "k/file-1"}]})
                with self.assertRaises(fileslink.ProtocolError):
                    client.upload(b"secret bytes", name="x.bin")
                # The presign, and nothing else: no PUT, no confirm.
                self.assertEqual([r.path for r in self.since(mark)], [presign])
                self.assertFalse(was_connected())
                self.assertFalse(os.path.exists(os.path.join(self.tmp, "never-created")))

    def test_part_url_that_is_not_http_with_a_host_is_refused_before_any_io(self) -> None:
        port, was_connected = self.listener()
        path, _ = self.make_file("big.bin", 11 * MiB, seed=14)
        client = self.client(multipart_threshold=6 * MiB)
        for n, (label, url) in enumerate(self._bad_urls(port), 1):
            with self.subTest(label):
                def transform(d: dict, url: str = url) -> dict:
                    d["parts"][-1]["url"] = url
                    return d
                self.fake.initiate_transform = transform
                with self.assertRaises(fileslink.ProtocolError):
                    client.upload(path)
                self.assertEqual(self.puts(), [])
                self.assertFalse(was_connected())
                # The client was given an upload id: it must abort what it will not complete.
                self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"] * n)

    def test_plain_http_presigned_url_is_taken_under_a_loopback_or_allowed_http_base(self) -> None:
        # Hosts that are not loopback, as in production, reached through a
        # forward proxy that routes their names to the fake: nothing is looked
        # up, nothing leaves the machine. (Under an https base the same URL is
        # refused: TestHttps.)
        proxy = _Proxy(routes={"files.invalid": "127.0.0.1", "storage.invalid": "127.0.0.1"})
        self.addCleanup(proxy.stop)
        os.environ["HTTP_PROXY"] = proxy.url
        api_port = urlsplit(self.fake.base_url).port
        storage = "http://storage.invalid:%d" % urlsplit(self.fake.storage_url).port
        self.fake.storage_url = storage                   # the host of the presigned URLs
        insecure = {"allow_insecure": True, "base_url": "http://files.invalid:%d" % api_port}
        for label, options in (("loopback base", {}), ("allow_insecure base", insecure)):
            with self.subTest(label):
                del proxy.seen[:]
                result = self.client(**options).upload(b"plain", name="p.txt")
                self.assert_stored(result, b"plain")
                puts = [target for method, target, _ in proxy.seen if method == "PUT"]
                self.assertEqual(len(puts), 1)
                self.assertTrue(puts[0].startswith(storage + "/"), puts)

    def test_plain_http_base_url_is_refused_except_to_loopback_or_when_allowed(self) -> None:
        for base in ("http://example.com", "http://10.0.0.1:8080", "http://api.files.link"):
            with self.subTest(base):
                with self.assertRaises(fileslink.ConfigError) as cm:
                    fileslink.Client(api_key="k", base_url=base)
                self.assertIn("allow_insecure", str(cm.exception))
                client = fileslink.Client(api_key="k", base_url=base, allow_insecure=True)
                self.assertEqual(client.base_url, base)
        for base in ("http://127.0.0.1:1", "http://localhost:8080", "http://[::1]:9",
                     "https://api.files.link"):
            with self.subTest(base):
                self.assertEqual(fileslink.Client(api_key="k", base_url=base).base_url, base)
        for base in ("ftp://api.files.link", "file:///tmp/x", "https://", "api.files.link"):
            with self.subTest(base):
                with self.assertRaises(fileslink.ConfigError):
                    fileslink.Client(api_key="k", base_url=base)
        self.assertEqual(self.fake.log, [])

    def test_the_key_is_in_no_error_text_even_when_a_server_echoes_it(self) -> None:
        key = self.fake.api_key
        echo = "Invalid API key: %s (Authorization: %s)" % (key, key)
        cases: List[Tuple[str, Callable[[], Any], type]] = [
            ("401 echoed", lambda: self.fake.inject("api", status=401, body={
                "success": False, "message": echo}), fileslink.AuthError),
            ("400 echoed", lambda: self.fake.inject("api", status=400, body={
                "success": False, "message": echo}), fileslink.APIError),
            ("200 success false echoed", lambda: self.fake.inject("api", status=200, body={
                "success": False, "message": echo}), fileslink.APIError),
            ("502 page echoed", lambda: self.fake.inject("api", status=502, times=3,
                                                          body="<html>" + echo + "</html>"),
             fileslink.APIError),
            ("200 not JSON echoed", lambda: self.fake.inject("api", status=200,
                                                              body="<html>" + echo),
             fileslink.ProtocolError),
        ]
        client = self.client()
        for label, arrange, cls in cases:
            with self.subTest(label):
                self.fake.clear_faults()
                arrange()
                with self.assertRaises(cls) as cm:
                    client.upload(b"data", name="a.bin")
                self.assertNotIn(key, _exception_text(cm.exception))
        with self.subTest("wrong key, 401"):
            wrong = "fl_live_wrong_key_0000"
            with self.assertRaises(fileslink.AuthError) as cm:
                self.client(api_key=wrong).upload(b"data", name="a.bin")
            self.assertNotIn(wrong, _exception_text(cm.exception))
        with self.subTest("connection refused"):
            down = self.client(base_url="http://127.0.0.1:%d" % _closed_port())
            with self.assertRaises(fileslink.APIError) as cm:
                down.upload(b"data", name="a.bin")
            self.assertIsNone(cm.exception.status)
            self.assertNotIn(key, _exception_text(cm.exception))
        self.assertNotIn(key, repr(client))
        self.assertNotIn(key, str(client))

    def test_the_key_is_in_no_cli_output_even_at_debug_verbosity(self) -> None:
        key = self.fake.api_key
        self.set_env(key=True)
        path, _ = self.make_file("a.txt", 1000)
        self.fake.inject("api", status=503, headers={"Retry-After": "0"})
        self.fake.inject("storage", status=500)
        code, out, err = self.cli("upload", path, "-vv", "--json")
        self.assertEqual(code, 0, err)
        self.assertIn("try 2", err)                   # -vv did log, retries included
        echo = {"success": False, "message": "Invalid API key: " + key}
        self.fake.inject("api", status=401, body=echo)
        code2, out2, err2 = self.cli("upload", path, "-vv")
        self.assertEqual(code2, 1)
        self.assertIn("401", err2)
        self.fake.inject("api", status=200, body=echo)
        code3, out3, err3 = self.cli("ls", self.fake.folder_id, "-vv")
        self.assertEqual(code3, 1)
        signatures = {r.query["X-Amz-Signature"] for r in self.fake.log
                      if "X-Amz-Signature" in r.query}
        for text in (out, err, out2, err2, out3, err3):
            self.assertNotIn(key, text)
            for sig in signatures:
                self.assertNotIn(sig, text)

    def test_neither_the_key_nor_a_signature_is_logged_at_debug(self) -> None:
        records: List[logging.LogRecord] = []

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        logger = logging.getLogger("fileslink")
        handler = Capture(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        self.addCleanup(logger.setLevel, old_level)
        self.addCleanup(logger.removeHandler, handler)

        path, _ = self.make_file("big.bin", 11 * MiB, seed=16)
        client = self.client(multipart_threshold=6 * MiB)
        # A full run with retries of every kind, an expired URL, a failure.
        self.fake.inject("api", status=503, headers={"Retry-After": "0"})
        self.fake.inject("storage", status=500)
        self.fake.inject("storage", wrong_etag=True)
        self.fake.inject("storage", reset_after=10)
        self.fake.inject("storage", expire=True)
        client.upload(b"hello", name="hello.txt")
        _results(lambda: client.upload_many(
            [path, ("b.txt", b"b"), os.path.join(self.tmp, "missing")]))
        self.fake.inject("storage", status=500, times=3)
        with self.assertRaises(fileslink.TransferError) as cm:
            client.upload(b"last", name="last.txt")
        texts = [handler.format(r) for r in records]
        self.assertTrue(any("try 2" in t for t in texts), "no retry was logged: %s" % texts)
        signatures = {r.query["X-Amz-Signature"] for r in self.fake.log
                      if r.plane == "storage" and "X-Amz-Signature" in r.query}
        self.assertGreater(len(signatures), 3)
        for text in texts + [_exception_text(cm.exception)]:
            self.assertNotIn(self.fake.api_key, text)
            self.assertNotIn("X-Amz-", text)
            for sig in signatures:
                self.assertNotIn(sig, text)

    def test_a_storage_error_page_echoing_the_url_does_not_reveal_its_signature(self) -> None:
        # A proxy or a careless storage gateway may echo the request line.
        url = (self.fake.storage_url + "/fileslink-fake/k/file-1?X-Amz-Algorithm=AWS4-HMAC-SHA256"
               "&X-Amz-Signature=5ec2e7516a7c0ffee")
        self.fake.inject("api", status=200, path_contains="/v1/files/" + self.fake.folder_id,
                         body={"success": True, "urls": [
                             {"id": "file-1", "url": url, "s3Key": "k/file-1"}]})
        self.fake.inject("storage", status=400, body="Bad Request: PUT " + url)
        with self.assertRaises(fileslink.TransferError) as cm:
            self.client().upload(b"data", name="a.bin")
        self.assertEqual(cm.exception.status, 400)
        self.assertNotIn("5ec2e7516a7c0ffee", _exception_text(cm.exception))

    def test_an_etag_with_control_characters_is_refused(self) -> None:
        for etag in ('"0123456789abcdef0123456789abcdef"\x01', '"abc\x7fdef"', '"a\tb"'):
            with self.subTest(repr(etag)):
                self.fake.clear_faults()
                self.fake.inject("storage", status=200, body=b"", headers={"ETag": etag})
                with self.assertRaises(fileslink.ProtocolError) as cm:
                    self.client().upload(b"data", name="a.bin")
                self.assertNotIn(etag, str(cm.exception))
        self.assertEqual(self.confirms(), [])

    def test_a_name_with_control_characters_is_refused(self) -> None:
        for name in ("a\nb.txt", "a\rb.txt", "nul\x00.txt", "esc\x1b[31m.txt", "del\x7f.txt", "",
                     "csi\x9b31m.txt", "gnp.\u202etxt"):   # C1 CSI; a right-to-left override
            with self.subTest(repr(name)):
                with self.assertRaises(fileslink.ConfigError) as cm:
                    self.client().upload(b"data", name=name)
                self.assertIn("name", str(cm.exception))
        self.assertEqual(self.fake.log, [])

    def test_file_names_from_disk_are_cleaned_and_slashes_in_name_are_kept(self) -> None:
        # Observed and documented behaviour:
        # - a name on disk with undecodable bytes or control characters is
        #   uploaded with U+FFFD for each bad byte and "_" for each control;
        # - name= with "/" is kept as given (the CLI names a directory's files
        #   "sub/dir/file"); the service decides what a slash means.
        raw = os.path.join(os.fsencode(self.tmp), b"bad\xffname\x01.txt")
        with open(raw, "wb") as f:
            f.write(b"odd")
        client = self.client()
        got = client.upload(os.fsdecode(raw))
        self.assertEqual(got.name, "bad\ufffdname_.txt")
        self.assertEqual(self.fake.files[got.id].name, "bad\ufffdname_.txt")
        self.assertEqual(self.fake.files[got.id].data, b"odd")
        nested = client.upload(b"x", name="photos/2024/a.jpg")
        self.assertEqual((nested.name, nested.mime_type), ("photos/2024/a.jpg", "image/jpeg"))
        self.assertEqual(self.fake.files[nested.id].name, "photos/2024/a.jpg")


# ---------------------------------------------------------------------------
# The rest of the API, and the module-level upload()
# ---------------------------------------------------------------------------

class TestApiMethods(FakeTestCase):

    def test_file_methods_read_list_sign_link_and_delete(self) -> None:
        client = self.client()
        data = pseudo_random_bytes(2048, seed=81)
        uploaded = client.upload(data, self.fake.folder_id, name="thin.txt")
        record = client.get_file(uploaded.id)
        self.assertEqual((record["id"], record["fileName"], record["fileSize"], record["uploaded"]),
                         (uploaded.id, "thin.txt", 2048, True))
        self.assertEqual([f["id"] for f in client.list_files(self.fake.folder_id)], [uploaded.id])
        self.assertEqual(_http(client.signed_url(uploaded.id))[::2], (200, data))
        url = client.create_link(uploaded.id)
        self.assertEqual(url, self.fake.base_url + "/v1/p/" + self.fake.files[uploaded.id].link)
        self.assertEqual(_http(url)[::2], (200, data))
        client.delete_file(uploaded.id)
        self.assertNotIn(uploaded.id, self.fake.files)
        with self.assertRaises(fileslink.APIError) as caught:
            client.get_file(uploaded.id)
        self.assertEqual(caught.exception.status, 404)

    def test_upload_with_link_sets_the_permanent_url(self) -> None:
        client = self.client(multipart_threshold=5 * MiB)
        for label, size in (("single-part", 10), ("multipart", 5 * MiB + 3)):
            with self.subTest(label):
                data = pseudo_random_bytes(size, seed=size)
                result = client.upload(data, self.fake.folder_id, name="l.bin", link=True)
                self.assert_stored(result, data)
                link = self.fake.files[result.id].link
                self.assertIsNotNone(link)
                self.assertEqual(result.url, self.fake.base_url + "/v1/p/" + link)
                self.assertEqual(result.multipart, label == "multipart")
        plain = client.upload(b"no link", self.fake.folder_id, name="n.txt")
        self.assertIsNone(plain.url)
        self.assertIsNone(self.fake.files[plain.id].link)

    def test_a_link_that_fails_says_the_file_was_uploaded(self) -> None:
        client = self.client(multipart_threshold=5 * MiB)
        for label, size in (("single-part", 10), ("multipart", 5 * MiB + 3)):
            with self.subTest(label):
                self.fake.inject("api", status=400, path_contains="/v1/p", times=1)
                data = pseudo_random_bytes(size, seed=size)
                with self.assertRaises(fileslink.APIError) as caught:
                    client.upload(data, self.fake.folder_id, name="l.bin", link=True)
                self.assertEqual(caught.exception.status, 400)
                self.assertIn("was uploaded (id ", str(caught.exception))
                file_id = str(caught.exception).split("(id ")[1].split(")")[0]
                self.assertTrue(self.fake.files[file_id].uploaded)
                self.assertEqual(self.fake.files[file_id].data, data)

    def test_project_and_folder_methods(self) -> None:
        client = self.client()
        projects = client.list_projects()
        self.assertIn(self.fake.project_id, [p["id"] for p in projects])
        project_id = client.create_project("Reports")
        self.assertEqual(self.fake.projects[project_id]["title"], "Reports")
        self.assertEqual(len(client.list_projects(1)), 2)
        folder_id = client.create_folder("Q3", project_id, private=True)
        self.assertEqual((self.fake.folders[folder_id]["title"],
                          self.fake.folders[folder_id]["isPrivate"],
                          self.fake.folders[folder_id]["projectId"]), ("Q3", True, project_id))
        self.assertEqual([f["id"] for f in client.list_folders(project_id)], [folder_id])
        public_id = client.create_folder("Public", project_id)
        self.assertFalse(self.fake.folders[public_id]["isPrivate"])
        result = client.upload(b"in the new folder", folder_id, name="q3.txt")
        self.assertEqual(self.fake.files[result.id].folder_id, folder_id)


class TestModuleUpload(FakeTestCase):

    def test_module_upload_is_configured_from_the_environment(self) -> None:
        path, data = self.make_file("env.csv", 1234, seed=91)
        self.set_env(key=True, folder=True)
        result = fileslink.upload(path)
        self.assert_stored(result, data)
        self.assertEqual((result.name, result.mime_type), ("env.csv", "text/csv"))
        self.assertEqual(self.fake.files[result.id].folder_id, self.fake.folder_id)

    def test_module_upload_takes_an_explicit_folder_over_the_environment(self) -> None:
        other = self.client().create_folder("Other", self.fake.project_id)
        self.set_env(key=True, folder=True)
        result = fileslink.upload(b"elsewhere", other, name="e.txt")
        self.assertEqual(self.fake.files[result.id].folder_id, other)

    def test_module_upload_without_a_key_is_a_config_error_before_any_call(self) -> None:
        path, _ = self.make_file("nokey.bin", 10)
        os.environ.update(FILESLINK_FOLDER=self.fake.folder_id,
                          FILESLINK_BASE_URL=self.fake.base_url)
        with self.assertRaises(fileslink.ConfigError):
            fileslink.upload(path)
        self.assertEqual(self.fake.log, [])


# ---------------------------------------------------------------------------
# Resume: the journal on its own, then uploads continued after a crash
# ---------------------------------------------------------------------------

#: A second process for the journal tests: argv = repo, mode, state dir, path.
_JOURNAL_CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import fileslink
mode, state, path = sys.argv[2:5]
try:
    journal = fileslink._Journal.open(state, "https://api.example", "folder-1", path)
except fileslink.ConfigError as exc:
    print(exc)
    sys.exit(3)
if mode == "crash-before-rename":
    os.replace = lambda *args: os._exit(9)     # dies where a power cut could
    journal.create(json.loads(sys.stdin.read()))
print("locked")
"""


def _signed_url(number: int, signed_at: float, lifetime: int, vendor: str = "Amz") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(signed_at))
    return ("https://storage.example/bucket/big.bin?partNumber=%d&uploadId=up-1&X-%s-Date=%s"
            "&X-%s-Expires=%d&X-%s-Signature=%s" % (number, vendor, stamp, vendor, lifetime,
                                                     vendor, "ab" * 32))


def _mode_of(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def _query_of(url: str) -> Dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


class TestJournal(unittest.TestCase):

    base_url, folder = "https://api.example", "folder-1"

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="fileslink-journal-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.state = os.path.join(self.tmp, "state")
        self.path = self.write("big.bin", pseudo_random_bytes(3 * MiB))
        self.now = float(int(time.time()))

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.tmp, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def open(self, path: Optional[str] = None) -> "fileslink._Journal":
        journal = fileslink._Journal.open(self.state, self.base_url, self.folder, path or self.path)
        self.addCleanup(journal.close)
        return journal

    def record(self, urls: Optional[List[str]] = None, path: Optional[str] = None,
               file_id: str = "file-1", upload_id: str = "up-1",
               size: int = 3 * MiB) -> Dict[str, Any]:
        if urls is None:
            urls = [_signed_url(n, self.now, 3600) for n in (1, 2, 3)]
        return fileslink._journal_record(
            self.base_url, self.folder, fileslink._source_identity(path or self.path),
            file_id=file_id, upload_id=upload_id, key="k/big.bin", bucket="bucket",
            name="big.bin", mime_type="application/octet-stream", size=size,
            part_size=-(-size // len(urls)), urls=urls, now=self.now)

    def child(self, mode: str, stdin: bytes = b"") -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-c", _JOURNAL_CHILD, HERE, mode, self.state,
                               self.path], input=stdin.decode(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=30)

    def files(self) -> List[str]:
        return sorted(os.listdir(self.state))

    def test_state_dir_is_the_variable_else_the_user_cache_directory(self) -> None:
        if os.name == "nt":
            self.skipTest("the POSIX layout")
        rows = [({"FILESLINK_STATE_DIR": "/s", "XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/s"),
                ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/fileslink"),
                ({"XDG_CACHE_HOME": "relative", "HOME": "/h"}, "/h/.cache/fileslink"),
                ({"FILESLINK_STATE_DIR": "", "HOME": "/h"}, "/h/.cache/fileslink")]
        for environ, want in rows:
            with self.subTest(environ):
                self.assertEqual(fileslink._state_dir(environ), want)

    def test_journal_files_are_0600_in_a_0700_directory_and_never_hold_the_api_key(self) -> None:
        with FakeFilesLink() as fake:          # the fake's real part URLs, as initiate gives them
            meta = {"fileMetadata": {"name": "big.bin", "size": 3 * MiB,
                                     "mimeType": "application/octet-stream"}}
            status, _, body = _http(
                fake.base_url + "/v1/files/multipart/%s/initiate" % fake.folder_id, "POST",
                json.dumps(meta).encode(), {"Authorization": fake.api_key,
                                            "Content-Type": "application/json"})
        self.assertEqual(status, 200)
        data = json.loads(body)["data"]
        urls = [p["url"] for p in data["parts"]]
        journal = self.open()
        record = self.record(urls)
        journal.create(record)
        journal.add_part(1, '"etag-1"')
        self.assertEqual(_mode_of(self.state), 0o700)
        self.assertEqual({name: _mode_of(os.path.join(self.state, name)) for name in self.files()},
                         {journal.name + suffix: 0o600 for suffix in (".json", ".lock", ".parts")})
        for name in self.files():
            with open(os.path.join(self.state, name), "rb") as f:
                self.assertNotIn(fake.api_key.encode(), f.read(), name)
        signed = calendar.timegm(time.strptime(_query_of(urls[0])["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        self.assertEqual(journal.load()["parts"][0]["expires"], signed + fake.url_ttl)
        with self.assertRaises(ValueError):    # a record with anything more is refused
            journal.create(dict(record, api_key=fake.api_key))
        self.assertEqual(journal.load()["etags"], {1: '"etag-1"'})

    def test_a_crash_between_write_and_rename_leaves_the_old_record_whole(self) -> None:
        journal = self.open()
        journal.create(self.record())
        journal.add_part(1, '"a"')
        old = journal.load()
        journal.close()
        child = self.child("crash-before-rename",
                           json.dumps(self.record(upload_id="up-2")).encode())
        self.assertEqual(child.returncode, 9, child.stderr)
        self.assertTrue(any(name.endswith(".tmp") for name in self.files()), self.files())
        again = self.open()
        self.assertEqual(again.load(), old)
        self.assertFalse([name for name in self.files() if name.endswith(".tmp")])

    def test_a_torn_part_record_counts_as_not_stored_and_the_next_one_survives(self) -> None:
        journal = self.open()
        journal.create(self.record())
        journal.add_part(1, '"a"')
        journal.close()
        with open(os.path.join(self.state, journal.name + ".parts"), "ab") as f:
            f.write(b'{"n": 2, "etag": "\\"b')    # kill -9 in the middle of an append
        again = self.open()
        self.assertEqual(again.load()["etags"], {1: '"a"'})
        again.add_part(3, '"c"')
        self.assertEqual(again.load()["etags"], {1: '"a"', 3: '"c"'})

    def test_a_corrupt_journal_reads_as_absent_and_says_so_at_debug_level(self) -> None:
        journal = self.open()
        journal.create(self.record())
        with open(os.path.join(self.state, journal.name + ".json"), "wb") as f:
            f.write(b'{"version": 1, "parts": [')
        with self.assertLogs("fileslink", "DEBUG") as logs:
            self.assertIsNone(journal.load())
        self.assertIn("ignoring the journal", logs.output[0])
        self.assertEqual(fileslink._Journal.entries(self.state), [])
        journal.create(self.record())          # and a fresh upload simply replaces it
        self.assertEqual(journal.load()["upload_id"], "up-1")

    def test_a_journal_whose_parts_do_not_cover_its_size_reads_as_absent(self) -> None:
        journal = self.open()
        for label, change in (("no parts", {"parts": []}), ("parts of 0 bytes", {"part_size": 0}),
                              ("parts of -1 bytes", {"part_size": -1}),
                              ("too big parts", {"part_size": 3 * MiB})):
            with self.subTest(label):
                with open(os.path.join(self.state, journal.name + ".json"), "w") as f:
                    json.dump(dict(self.record(), **change), f)
                with self.assertLogs("fileslink", "DEBUG") as logs:
                    self.assertIsNone(journal.load())
                self.assertIn("do not cover", logs.output[0])

    def test_a_second_process_is_refused_while_the_first_holds_the_journal(self) -> None:
        journal = self.open()
        journal.create(self.record())
        refused = self.child("lock")
        self.assertEqual(refused.returncode, 3, refused.stderr)
        self.assertIn("%s is being uploaded by another fileslink process (pid %d)"
                      % (self.path, os.getpid()), refused.stdout)
        journal.close()
        granted = self.child("lock")
        self.assertEqual((granted.returncode, granted.stdout), (0, "locked\n"), granted.stderr)
        journal = self.open()
        journal.remove()                       # the lock file goes too, unlinked under the lock
        journal.close()
        self.assertEqual(self.files(), [])
        self.open().close()                    # and a new one is made for the next upload

    def test_a_journal_removed_and_created_again_stays_locked(self) -> None:
        journal = self.open()
        journal.create(self.record())
        journal.remove()                       # its part URLs expired early: initiated again
        journal.create(self.record(upload_id="up-2"))
        refused = self.child("lock")
        self.assertEqual(refused.returncode, 3, refused.stdout + refused.stderr)
        journal.close()
        self.assertEqual(self.open().load()["upload_id"], "up-2")

    def test_open_refuses_a_state_directory_it_cannot_write(self) -> None:
        plain = self.write("plain-file", b"x")
        for label, state in (("its parent is a regular file", os.path.join(plain, "state")),
                             ("it is a regular file", plain)):
            with self.subTest(label):
                with self.assertRaises(fileslink.ConfigError) as cm:
                    fileslink._Journal.open(state, self.base_url, self.folder, self.path)
                self.assertIn(state, str(cm.exception))
                self.assertIn("FILESLINK_STATE_DIR", str(cm.exception))
        with open(plain, "rb") as f:
            self.assertEqual(f.read(), b"x")

    def test_url_expiry_reads_amz_and_goog_lifetimes(self) -> None:
        rows = [("amz", _signed_url(1, self.now, 900), self.now + 900),
                ("goog", _signed_url(1, self.now, 604800, "Goog"), self.now + 604800),
                ("names in lower case", _signed_url(1, self.now, 60).replace("X-Amz-", "x-amz-"),
                 self.now + 60),
                ("no lifetime", "https://storage.example/b/k?partNumber=1&sig=abc", None),
                ("a date without a lifetime", _signed_url(1, self.now, 1).replace(
                    "X-Amz-Expires", "X-Other"), None),
                ("a 13th month", "https://s.example/k?X-Amz-Date=20241301T000000Z"
                                 "&X-Amz-Expires=900", None),
                ("a lifetime that is not a number", _signed_url(1, self.now, 900).replace(
                    "Expires=900", "Expires=soon"), None)]
        for label, url, want in rows:
            with self.subTest(label):
                self.assertEqual(fileslink._url_expiry(url), want)

    def test_source_identity_sees_a_rewritten_end_but_not_a_read(self) -> None:
        before = fileslink._source_identity(self.path)
        with open(self.path, "rb") as f:
            f.read()
        self.assertEqual(fileslink._source_identity(self.path), before)
        st = os.stat(self.path)
        with open(self.path, "r+b") as f:       # same size, new last byte, mtime put back
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        after = fileslink._source_identity(self.path)
        self.assertEqual({k: after[k] for k in ("size", "mtime_ns", "inode")},
                         {k: before[k] for k in ("size", "mtime_ns", "inode")})
        self.assertNotEqual(after["digest"], before["digest"])
        small = self.write("small.txt", b"hello world")
        first = fileslink._source_identity(small)["digest"]
        self.write("small.txt", b"hello World")
        self.assertNotEqual(fileslink._source_identity(small)["digest"], first)

    def test_resume_check_says_why_a_journal_cannot_be_resumed(self) -> None:
        now = self.now
        record = dict(self.record(), etags={})
        same = fileslink._source_identity(self.path)

        def changed(**kw: Any) -> Dict[str, Any]:
            return dict(same, **kw)

        def parts(*lifetimes: int) -> Dict[str, Any]:
            return dict(self.record([_signed_url(n, now, t) for n, t in enumerate(lifetimes, 1)]),
                        etags={})

        rows: List[Tuple[str, Dict[str, Any], str, str, Dict[str, Any], float, Optional[str]]] = [
            ("the same upload", record, self.base_url, self.folder, same, now, None),
            ("another API", record, "https://other.example", self.folder, same, now,
             "started against https://api.example, not https://other.example"),
            ("another folder", record, self.base_url, "folder-2", same, now,
             "in folder folder-1, not folder-2"),
            ("a new size", record, self.base_url, self.folder, changed(size=5), now,
             "size 3145728 -> 5"),
            ("another inode", record, self.base_url, self.folder, changed(inode=1), now,
             "replaced"),
            ("a new mtime", record, self.base_url, self.folder, changed(mtime_ns=1), now,
             "modified"),
            ("other bytes", record, self.base_url, self.folder, changed(digest="0" * 64), now,
             "its start or end differs"),
            ("expired", record, self.base_url, self.folder, same, now + 3700,
             "the URLs of its 3 parts left expired 100 s ago"),
            ("expiring within the margin", record, self.base_url, self.folder, same, now + 3570,
             "the URLs of its 3 parts left expire in 30 s"),
            ("only stored parts expired", dict(parts(60, 60, 7200), etags={1: "a", 2: "b"}),
             self.base_url, self.folder, same, now + 600, None),
            ("every part stored", dict(record, etags={1: "a", 2: "b", 3: "c"}), self.base_url,
             self.folder, same, now + 86400, None),
            ("URLs that carry no lifetime", dict(self.record(["https://s.example/1"]), etags={}),
             self.base_url, self.folder, same, now + 86400, None),
        ]
        for label, rec, base_url, folder, identity, at, reason in rows:
            with self.subTest(label):
                got = fileslink._resume_check(rec, base_url, folder, identity, at)
                if reason is None:
                    self.assertIsNone(got)
                else:
                    self.assertIn(reason, got or "")

    def test_pending_lists_every_journal_and_claim_locks_one_to_remove_it(self) -> None:
        other = self.write("other.bin", b"other")
        first, second = self.open(), self.open(other)
        first.create(self.record([_signed_url(n, self.now, 60 * n) for n in (1, 2, 3)]))
        first.add_part(1, '"a"')
        first.add_part(2, '"b"')
        second.create(self.record(path=other, file_id="file-2", upload_id="up-2"))
        pending = sorted(map(fileslink._pending, fileslink._Journal.entries(self.state)),
                         key=lambda p: p.id)
        self.assertEqual(pending[0], fileslink.PendingUpload(
            "file-1", "big.bin", 3 * MiB, 2, 3, self.now + 180, self.folder, self.path))
        self.assertEqual((pending[1].id, pending[1].parts_done, pending[1].path),
                         ("file-2", 0, other))
        with self.assertRaises(AttributeError):
            pending[0].parts_done = 3
        self.assertEqual(pending[0].to_dict()["partsDone"], 2)
        with self.assertRaises(fileslink.ConfigError):   # `first` is still uploading it
            fileslink._Journal.claim(self.state, "file-1")
        first.close()
        claimed = fileslink._Journal.claim(self.state, "file-1")
        assert claimed is not None
        claimed.remove()
        claimed.close()
        self.assertEqual([r["file_id"] for r in fileslink._Journal.entries(self.state)],
                         ["file-2"])
        self.assertEqual([n for n in self.files() if n.startswith(claimed.name)], [])
        self.assertIsNone(fileslink._Journal.claim(self.state, "file-1"))
        self.assertEqual(fileslink._Journal.entries(os.path.join(self.tmp, "nowhere")), [])

    def test_parts_recorded_from_many_threads_on_a_10000_part_journal_all_read_back(self) -> None:
        # 400 parts, not 10,000: each add_part waits for an fsync (~0.3 ms here).
        urls = [_signed_url(n, self.now, 3600) for n in range(1, 10001)]
        journal = self.open()
        journal.create(self.record(urls, size=10000 * 5 * MiB))   # parts of 5 MiB
        etags = {n: '"%032x"' % n for n in range(1, 10001, 25)}
        numbers = sorted(etags)

        def record_parts(share: List[int]) -> None:
            for n in share:
                journal.add_part(n, etags[n])

        threads = [threading.Thread(target=record_parts, args=(numbers[k::8],)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        loaded = journal.load()
        self.assertEqual(loaded["etags"], etags)
        self.assertEqual(fileslink._pending(loaded).parts_done, 400)
        with open(os.path.join(self.state, journal.name + ".parts"), "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 401)      # the header, then one whole line per part
        self.assertTrue(all(json.loads(line) for line in lines))




class TestResume(ResumeCase):
    """kill -9, Ctrl-C, changed sources, two processes, pending and abort."""

    def test_kill_9_then_a_rerun_sends_only_the_parts_not_journaled(self) -> None:
        path, data = self.make_file("big.bin", 8 * MiB, seed=81)
        child = self.child_stalled_after(path, 3)
        child.kill()
        child.communicate(timeout=10)
        journaled, first_puts = self.journal_parts(), len(self.puts())
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["open"])
        mark = len(self.fake.log)
        rerun = self.child_upload(path)
        out, err = rerun.communicate(timeout=30)
        self.assertEqual(rerun.returncode, 0, out + err)
        self.assertEqual(journaled, 3)
        self.assertEqual(len(self.puts(mark)), 8 - journaled)
        self.assertEqual(len(self.fake.api_calls("complete")), 1)
        self.assertEqual(len(self.fake.api_calls("initiate")), 1)
        self.assertEqual(self.fake.files[out.strip()].data, data)
        self.assertEqual(os.listdir(self.state), [])  # the journal went with the upload
        print("\nresume after kill -9: run 1 sent %d part PUTs, %d journaled; run 2 sent %d; "
              "%d of 8 MiB not sent again" % (first_puts, journaled, 8 - journaled, journaled)
              if "-v" in sys.argv else "", end="")

    def test_ctrl_c_with_resume_keeps_the_upload_and_a_rerun_completes_it(self) -> None:
        path, data = self.make_file("big.bin", 8 * MiB, seed=82)
        child = self.child_stalled_after(path, 2)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
        self.assertEqual(self.fake.api_calls("abort"), [])
        self.assertEqual(len(self.client().pending()), 1, out + err)
        (pending,) = self.client().pending()
        self.assertEqual((pending.name, pending.size, pending.parts_total), ("big.bin", 8 * MiB, 8))
        self.assertGreaterEqual(pending.parts_done, 2)
        rerun = self.child_upload(path)
        out, err = rerun.communicate(timeout=30)
        self.assertEqual(rerun.returncode, 0, out + err)
        self.assertEqual(self.fake.files[out.strip()].data, data)
        self.assertEqual(self.client().pending(), [])

    def test_a_changed_source_or_dead_urls_start_afresh_and_abort_the_old(self) -> None:
        for label, spoil in (("modified", "modify"), ("expired", "expire")):
            with self.subTest(label):
                path, _ = self.make_file("big-%s.bin" % label, 8 * MiB, seed=83)
                child = self.child_stalled_after(path, 2)
                child.kill()
                child.communicate(timeout=10)
                if spoil == "modify":
                    data = pseudo_random_bytes(8 * MiB, seed=84)
                    with open(path, "wb") as f:
                        f.write(data)
                else:
                    with open(path, "rb") as f:
                        data = f.read()
                    self.fake.advance_clock(self.fake.url_ttl + 60)
                rerun = self.child_upload(path)
                out, err = rerun.communicate(timeout=30)
                self.assertEqual(rerun.returncode, 0, out + err)
                self.assertEqual(self.fake.files[out.strip()].data, data)
                ups = [u for u in self.fake.multipart.values()
                       if self.fake.files[u.file_id].name == os.path.basename(path)]
                self.assertEqual(sorted(u.state for u in ups), ["aborted", "completed"])
                self.assertIn("not resumed", err)

    def test_a_second_process_on_the_same_upload_is_refused(self) -> None:
        path, data = self.make_file("big.bin", 8 * MiB, seed=85)
        first = self.child_stalled_after(path, 1)
        second = self.child_upload(path)
        out, err = second.communicate(timeout=30)
        self.assertEqual(second.returncode, 1, out + err)
        self.assertIn("being uploaded by another fileslink process", out)
        first.kill()  # held mid-upload by the fake: it never got past the lock either way
        first.communicate(timeout=10)
        self.assertEqual(len(self.fake.api_calls("initiate")), 1)
        self.assertEqual(self.journal_parts(), 1)  # the second touched nothing of the first's

    def test_resume_without_a_writable_state_dir_fails_before_any_call(self) -> None:
        blocker, _ = self.make_file("a-file", 1)
        os.environ["FILESLINK_STATE_DIR"] = os.path.join(blocker, "state")
        path, _ = self.make_file("big.bin", 2 * MiB)
        with self.assertRaises(fileslink.ConfigError) as caught:
            self.client(multipart_threshold=MiB).upload(path, self.fake.folder_id, resume=True)
        self.assertIn("FILESLINK_STATE_DIR", str(caught.exception))
        self.assertEqual(self.fake.log, [])

    def test_abort_pending_aborts_at_the_service_and_drops_the_journal(self) -> None:
        path, _ = self.make_file("big.bin", 8 * MiB, seed=86)
        child = self.child_stalled_after(path, 1)
        child.kill()
        child.communicate(timeout=10)
        (pending,) = self.client().pending()
        self.assertEqual(self.client().abort_pending(), [pending.id])
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])
        self.assertEqual(self.client().pending(), [])
        self.assertEqual(os.listdir(self.state), [])


class TestResumeEdges(SmallPartsResumeCase):
    """Resume where a hostile user pushed it."""

    def test_a_resumed_upload_whose_parts_are_all_stored_is_completed(self) -> None:
        # The network died at `complete`: every part is journaled, none is left to send.
        path, data = self.make_file("big.bin", 300 * 1024, seed=90)
        self.fake.inject("api", status=500, times=3, path_contains="complete")
        with self.assertRaises(fileslink.APIError):
            self.big_client().upload(path, self.fake.folder_id, resume=True)
        (pending,) = self.big_client().pending()
        self.assertEqual((pending.parts_done, pending.parts_total), (5, 5))
        mark = len(self.fake.log)
        result = self.big_client().upload(path, self.fake.folder_id, resume=True)
        self.assertEqual(self.fake.files[result.id].data, data)
        self.assertEqual([r for r in self.fake.log[mark:] if r.plane == "storage"], [])
        self.assertEqual(self.big_client().pending(), [])

    def test_a_journal_that_cannot_be_removed_does_not_fail_the_completed_upload(self) -> None:
        # The state directory goes read-only once every byte is sent.
        path, data = self.make_file("big.bin", 300 * 1024, seed=94)
        sent_all: List[bool] = []
        sweep = fileslink._Journal._sweep

        def progress(name: str, sent: int, total: int) -> None:
            if sent == total:
                sent_all.append(True)

        def read_only(journal: Any) -> None:
            if sent_all:
                raise OSError(30, "Read-only file system")      # EROFS
            sweep(journal)

        with mock.patch.object(fileslink._Journal, "_sweep", read_only), \
                self.assertLogs("fileslink", "WARNING") as logs:
            result = self.big_client().upload(path, self.fake.folder_id, resume=True,
                                              progress=progress)
        self.assert_stored(result, data)
        self.assertRegex(logs.output[-1], r"could not remove the resume journal .*\.json: "
                         r"Read-only file system$")

    def test_a_source_gone_before_its_initiate_leaves_no_orphan_and_spares_the_rest(self) -> None:
        a, _ = self.make_file("a.bin", 640 * 1024, seed=91)
        b, _ = self.make_file("b.bin", 300 * 1024, seed=92)
        c, _ = self.make_file("c.txt", 1000, seed=93)
        removed: List[bool] = []

        def progress(name: str, sent: int, total: int) -> None:
            if name == "a.bin" and not removed:   # b.bin is open, waiting its turn
                removed.append(True)
                os.unlink(b)                      # a cleanup job removes it meanwhile

        with self.assertRaises(fileslink.UploadManyError) as caught:
            self.big_client(max_workers=2).upload_many([a, b, c], self.fake.folder_id,
                                                       resume=True, progress=progress)
        self.assertEqual([name for _, name, _ in caught.exception.failures], ["b.bin"])
        states = {self.fake.files[u.file_id].name: u.state for u in self.fake.multipart.values()}
        self.assertEqual(states.get("a.bin"), "completed")
        self.assertIn(states.get("b.bin", "never initiated"), ("aborted", "never initiated"))

    def test_a_source_rewritten_before_its_initiate_is_never_resumed_into_a_mix(self) -> None:
        a, _ = self.make_file("a.bin", 640 * 1024, seed=94)
        b, _ = self.make_file("b.bin", 300 * 1024, seed=95)
        new = pseudo_random_bytes(300 * 1024, seed=96)
        steps: List[str] = []

        def progress(name: str, sent: int, total: int) -> None:
            if name == "a.bin" and not steps:     # b.bin is open, waiting its turn
                steps.append("rewritten")
                with open(b + ".new", "wb") as f:
                    f.write(new)
                os.replace(b + ".new", b)         # an export regenerated in place
            elif name == "b.bin" and sent >= 128 * 1024 and steps == ["rewritten"]:
                steps.append("interrupted")
                raise KeyboardInterrupt           # Ctrl-C with b.bin half sent

        # b.bin is refused (the path no longer names the file opened) or cut short.
        with self.assertRaises((KeyboardInterrupt, fileslink.UploadManyError)):
            self.big_client(max_workers=1).upload_many([a, b], self.fake.folder_id,
                                                       resume=True, progress=progress)
        result = self.big_client().upload(b, self.fake.folder_id, resume=True)
        self.assertTrue(self.fake.files[result.id].data == new,
                        "the object stored mixes the old file's parts with the new one's")

    def test_an_upload_whose_journal_cannot_be_written_is_aborted_not_orphaned(self) -> None:
        # The state dir goes (a tmp cleaner, a full disk) while initiate is answered:
        # no record of the upload exists, so it cannot be kept to be resumed.
        path, _ = self.make_file("big.bin", 300 * 1024, seed=103)
        self.fake.inject("api", delay=0.5, path_contains="initiate")

        def remove_state_dir() -> None:
            self.fake.wait_for(lambda: bool(self.fake.api_calls("initiate")))
            shutil.rmtree(self.state)

        remover = threading.Thread(target=remove_state_dir)
        remover.start()
        with self.assertRaises(OSError):
            self.big_client().upload(path, self.fake.folder_id, resume=True)
        remover.join()
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])

    def test_an_upload_initiated_again_under_resume_keeps_its_journal_locked(self) -> None:
        # Its part URLs were dead on arrival: the journal is rewritten for the new
        # upload, and must still be locked, or a second process could take it on.
        path, data = self.make_file("big.bin", 300 * 1024, seed=104)
        self.fake.inject("storage", expire=True)
        refused: List[bool] = []

        def progress(name: str, sent: int, total: int) -> None:
            if sent == 0:
                return  # between the two uploads: none is open, no lock is due
            try:
                fileslink._Journal.open(self.state, self.fake.base_url, self.fake.folder_id,
                                        path, "big.bin").close()
            except fileslink.ConfigError:
                refused.append(True)
            else:
                refused.append(False)

        result = self.big_client(max_workers=1).upload(path, self.fake.folder_id, resume=True,
                                                       progress=progress)
        self.assertEqual(self.fake.files[result.id].data, data)
        self.assertEqual(len(self.fake.api_calls("/initiate")), 2)
        self.assertTrue(refused and all(refused), refused)

    def test_one_path_under_two_names_uploads_both_with_resume_on(self) -> None:
        path, data = self.make_file("big.bin", 640 * 1024, seed=101)
        self.fake.inject("storage", delay=0.2, times=4)   # the first is still sending
        results = self.big_client().upload_many([("latest.bin", path), ("v1.bin", path)],
                                                self.fake.folder_id, resume=True)
        self.assertEqual([r.name for r in results], ["latest.bin", "v1.bin"])
        for result in results:
            self.assertEqual(self.fake.files[result.id].data, data)

    def test_progress_of_a_resumed_upload_ends_at_the_size(self) -> None:
        path, _ = self.make_file("big.bin", 640 * 1024, seed=102)

        def stop(name: str, sent: int, total: int) -> None:
            if sent >= 320 * 1024:
                raise KeyboardInterrupt

        with self.assertRaises(KeyboardInterrupt):
            self.big_client(max_workers=1).upload(path, self.fake.folder_id, resume=True,
                                                  progress=stop)
        seen: List[Tuple[int, int]] = []
        self.big_client().upload(path, self.fake.folder_id, resume=True,
                                 progress=lambda name, sent, total: seen.append((sent, total)))
        self.assertEqual(seen[-1], (640 * 1024, 640 * 1024))


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

class TestUploadCommand(KeyInEnvCase):

    #: The keys of UploadedFile.to_dict(), i.e. of each --json line.
    JSON_KEYS = frozenset(("id", "name", "size", "s3Key", "mimeType", "multipart", "url"))

    def test_upload_of_files_and_a_directory_names_each_by_its_path_below_the_directory(self) -> None:
        _, a = self.make_file("photos/a.txt", 1000, seed=1)
        _, b = self.make_file("photos/sub/b.bin", 2000, seed=2)
        _, c = self.make_file("photos/sub/deeper/c.jpg", 3000, seed=3)
        lone, d = self.make_file("lone.dat", 500, seed=4)
        code, out, err = self.cli("upload", os.path.join(self.tmp, "photos"), lone,
                                  "--folder", self.fake.folder_id)
        self.assertEqual(code, 0, err)
        self.assertEqual(self.uploaded(), {"a.txt": a, "sub/b.bin": b, "sub/deeper/c.jpg": c,
                                           "lone.dat": d})
        ids = {f.name: f.id for f in self.fake.files.values()}
        lines = out.splitlines()      # one human line per file: name -> id
        self.assertEqual(sorted(lines), sorted("%s -> %s" % (n, i) for n, i in ids.items()))

    def test_json_prints_one_object_per_file_with_exactly_the_documented_keys(self) -> None:
        small, _ = self.make_file("small.txt", 100)
        big, big_data = self.make_file("big.bin", 7 * MiB, seed=5)
        code, out, err = self.cli("upload", small, big, "--folder", self.fake.folder_id,
                                  "--json", "--threshold", "6M", "--workers", "2")
        self.assertEqual(code, 0, err)
        records = {r["name"]: r for r in self.json_lines(out)}
        self.assertEqual(set(records), {"small.txt", "big.bin"})
        for record in records.values():
            self.assertEqual(set(record), self.JSON_KEYS)
            self.assertEqual(self.fake.files[record["id"]].name, record["name"])
        self.assertIs(records["big.bin"]["multipart"], True)
        self.assertIs(records["small.txt"]["multipart"], False)
        self.assertEqual(records["big.bin"]["size"], 7 * MiB)
        self.assertEqual(records["small.txt"]["mimeType"], "text/plain")
        self.assertIsNone(records["small.txt"]["url"])
        (up,) = self.fake.multipart.values()
        self.assertEqual((up.state, up.part_count), ("completed", 2))
        self.assertEqual(self.uploaded()["big.bin"], big_data)

    def test_dash_uploads_stdin_under_the_name_given(self) -> None:
        data = pseudo_random_bytes(300 * 1024, seed=6)
        child = self.run_child("-m", "fileslink", "upload", "-", "--name", "dump.sql", "--json",
                               input=data)
        self.assertEqual(child.returncode, 0, child.stderr)
        (record,) = self.json_lines(child.stdout.decode())
        self.assertEqual((record["name"], record["size"]), ("dump.sql", len(data)))
        self.assertEqual(self.uploaded(), {"dump.sql": data})

    def test_dash_without_name_is_a_usage_error(self) -> None:
        code, out, err = self.cli("upload", "-", "--folder", self.fake.folder_id,
                                  stdin=io.TextIOWrapper(io.BytesIO(b"data")))
        self.assertEqual(code, 2)
        self.assertIn("--name", err)
        self.assertEqual(self.fake.log, [])

    def test_folder_flag_wins_over_FILESLINK_FOLDER_which_is_the_default(self) -> None:
        other = self.client().create_folder("Other", self.fake.project_id)
        path, _ = self.make_file("x.txt", 10)
        os.environ["FILESLINK_FOLDER"] = self.fake.folder_id
        for flags, folder in (([], self.fake.folder_id), (["--folder", other], other)):
            with self.subTest(flags=flags):
                code, out, err = self.cli("upload", path, "--json", *flags)
                self.assertEqual(code, 0, err)
                (record,) = self.json_lines(out)
                self.assertEqual(self.fake.files[record["id"]].folder_id, folder)

    def test_link_prints_permanent_urls_that_serve_the_file(self) -> None:
        path, data = self.make_file("shared.txt", 2048, seed=7)
        code, out, err = self.cli("upload", path, "--link", "--folder", self.fake.folder_id)
        self.assertEqual(code, 0, err)
        name, arrow, url = out.strip().partition(" -> ")
        self.assertEqual((name, arrow), ("shared.txt", " -> "))
        self.assertTrue(url.startswith(self.fake.base_url + "/v1/p/"), url)
        self.assertEqual(_http(url)[::2], (200, data))

    def test_quiet_prints_nothing_on_stderr_and_off_a_terminal_neither_does_success(self) -> None:
        paths = [self.make_file("q%d.txt" % i, 1000 + i)[0] for i in range(3)]
        code, out, err = self.cli("upload", *paths, "--folder", self.fake.folder_id, "--quiet")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 3)
        code, out, err = self.cli("upload", *paths, "--folder", self.fake.folder_id)
        self.assertEqual((code, err), (0, ""))  # the summary is for a terminal (TestTerminal)

    def test_verbose_logs_calls_on_stderr_and_never_the_key(self) -> None:
        path, _ = self.make_file("v.txt", 10)
        logger = logging.getLogger("fileslink")
        self.addCleanup(logger.setLevel, logger.level)
        for flag, expected in (("-v", r"info: uploaded v\.txt as "),
                               ("-v", r"info: POST /v1/files/[^ ]+ -> 200 \(try 2"),
                               ("-vv", r"debug: PUT v\.txt to [^ ]+\?\.\.\. -> 200 \(try 1")):
            with self.subTest(flag=flag):
                # A careless server echoes the key in an error: it must not reach the log.
                self.fake.inject("api", status=503, body={"success": False, "message":
                                 "overloaded, key %s" % self.fake.api_key}, headers={"Retry-After": "0"})
                code, out, err = self.cli("upload", path, flag, "--folder", self.fake.folder_id)
                self.assertEqual(code, 0, err)
                self.assertRegex(err, expected)
                self.assertNotIn(self.fake.api_key, err)
                self.assertEqual(logger.handlers, [])   # main() removed its handler
        self.assertIn("try 2 of", err)                    # -v shows the retry and its wait
        self.assertIn("***", err)

    def test_verbose_leaves_the_fileslink_logger_level_as_it_found_it(self) -> None:
        # A program that calls main() once must not find DEBUG records from
        # fileslink in its own logs afterwards.
        logger = logging.getLogger("fileslink")
        self.addCleanup(logger.setLevel, logger.level)
        logger.setLevel(logging.NOTSET)
        path, _ = self.make_file("v.txt", 10)
        code, _, err = self.cli("upload", path, "-vv", "--quiet", "--folder", self.fake.folder_id)
        self.assertEqual(code, 0, err)
        self.assertEqual(logger.level, logging.NOTSET)


class TestExitStatus(KeyInEnvCase):

    def test_some_failures_exit_1_with_one_line_each_and_the_others_uploaded(self) -> None:
        good, data = self.make_file("good.txt", 1000)
        bad, _ = self.make_file("refused.bin", 1000)
        missing = os.path.join(self.tmp, "missing.txt")
        self.fake.inject("storage", status=400, path_contains="refused.bin")
        code, out, err = self.cli("upload", good, bad, missing, "--folder", self.fake.folder_id)
        self.assertEqual(code, 1)
        self.assertEqual(self.uploaded(), {"good.txt": data})
        (good_id,) = [f.id for f in self.fake.files.values() if f.uploaded]
        self.assertEqual(out, "good.txt -> %s\n" % good_id)
        self.assertNotIn("Traceback", err)
        errors = [line for line in err.splitlines() if "error" in line]
        self.assertEqual(len(errors), 2, err)
        self.assertEqual(sum("refused.bin" in line for line in errors), 1, err)
        self.assertEqual(sum("missing.txt" in line for line in errors), 1, err)
        self.assertEqual(len(err.splitlines()), 2, err)  # off a terminal: no summary after them

    def test_missing_key_exits_2_and_says_to_set_FILESLINK_KEY(self) -> None:
        del os.environ["FILESLINK_KEY"]
        path, _ = self.make_file("a.txt", 10)
        for argv in (["upload", path, "--folder", self.fake.folder_id], ["projects"]):
            with self.subTest(argv=argv[0]):
                code, out, err = self.cli(*argv)
                self.assertEqual(code, 2)
                self.assertIn("FILESLINK_KEY", err)
                self.assertEqual(len(err.splitlines()), 1, err)
        self.assertEqual(self.fake.log, [])

    def test_missing_folder_exits_2_and_says_how_to_list_folders(self) -> None:
        path, _ = self.make_file("a.txt", 10)
        code, out, err = self.cli("upload", path)
        self.assertEqual(code, 2)
        self.assertIn("FILESLINK_FOLDER", err)
        self.assertIn("fileslink folders", err)
        self.assertEqual(self.fake.log, [])

    def test_usage_errors_exit_2(self) -> None:
        path, _ = self.make_file("a.txt", 10)
        cases = [[], ["frobnicate"], ["upload"], ["upload", path, "--workers", "0"],
                 ["upload", path, "--threshold", "abc"], ["upload", path, "--threshold", "6X"],
                 ["upload", path, "--threshold", ""], ["upload", path, path, "--name", "n"],
                 ["upload", path, "--ca-bundle", os.path.join(self.tmp, "no-such.pem")]]
        for argv in cases:
            with self.subTest(argv=argv):
                code, out, err = self.cli(*argv, "--folder", self.fake.folder_id) if argv \
                    and argv[0] == "upload" else self.cli(*argv)
                self.assertEqual(code, 2, err)
                self.assertTrue(err.strip(), "a usage error says what is wrong")
                self.assertNotIn("Traceback", err)
        self.assertEqual(self.fake.log, [])

    def test_bad_threshold_message_names_the_flag_and_shows_a_valid_size(self) -> None:
        path, _ = self.make_file("a.txt", 10)
        code, out, err = self.cli("upload", path, "--threshold", "lots")
        self.assertEqual(code, 2)
        self.assertIn("--threshold", err)
        self.assertIn("64M", err)                # the hint of _parse_size's message
        self.assertNotIn("_parse_size", err)     # not the name of an internal function

    def test_rejected_key_exits_1_and_says_the_key_was_rejected(self) -> None:
        os.environ["FILESLINK_KEY"] = "fl_wrong_key"
        path, _ = self.make_file("a.txt", 10)
        for argv in (["upload", path, "--quiet", "--folder", self.fake.folder_id],
                     ["ls", self.fake.folder_id]):
            with self.subTest(argv=argv[0]), warnings.catch_warnings():
                # (a file left open is TestLibraryInAProgram's business, not this test's)
                warnings.simplefilter("ignore", ResourceWarning)
                code, out, err = self.cli(*argv)
                gc.collect()
                self.assertEqual(code, 1)
                self.assertIn("the API key was rejected", err)
                self.assertEqual(len(err.splitlines()), 1, err)
                self.assertNotIn("fl_wrong_key", err)
        self.assertEqual(self.fake.files, {})

    def test_storage_limit_is_reported_as_such(self) -> None:
        small, _ = self.make_file("small.txt", 10)
        big, _ = self.make_file("big.bin", 2048)
        limit = {"success": False, "message": "Storage limit exceeded"}
        for path, flags, route in ((small, [], "/v1/files/" + self.fake.folder_id),
                                   (big, ["--threshold", "1K"], "/initiate")):
            with self.subTest(route=route):
                self.fake.inject("api", status=400, body=limit, path_contains=route)
                code, out, err = self.cli("upload", path, "--quiet", "--folder",
                                          self.fake.folder_id, *flags)
                self.assertEqual(code, 1)
                self.assertEqual(len(err.splitlines()), 1, err)
                self.assertIn("storage limit exceeded", err.lower())
                self.assertIn(os.path.basename(path), err)
                self.assertEqual(out, "")
        self.assertEqual(self.fake.files, {})

    def test_help_of_each_subcommand_shows_an_example_and_exits_0(self) -> None:
        for command in ("upload", "ls", "rm", "link", "folders", "projects"):
            with self.subTest(command=command):
                code, out, err = self.cli(command, "--help")
                self.assertEqual(code, 0)
                self.assertIn("example", out)
                self.assertIn("fileslink %s " % command, out.replace("\n", " "))
        code, out, _ = self.cli("--help")
        self.assertEqual(code, 0)
        for command in ("upload", "ls", "rm", "link", "folders", "projects"):
            self.assertIn(command, out)


class TestOtherCommands(KeyInEnvCase):

    def setUp(self) -> None:
        super().setUp()
        client = self.client()
        self.ids = [client.upload(pseudo_random_bytes(100 * (i + 1), seed=i), self.fake.folder_id,
                                  name="f%d.txt" % i).id for i in range(2)]

    def test_ls_lists_the_files_of_a_folder(self) -> None:
        code, out, err = self.cli("ls", self.fake.folder_id)
        self.assertEqual(code, 0, err)
        rows = sorted(line.split() for line in out.splitlines())
        self.assertEqual(rows, sorted([[self.ids[0], "100", "f0.txt"], [self.ids[1], "200", "f1.txt"]]))
        code, out, err = self.cli("ls", self.fake.folder_id, "--json")
        self.assertEqual(code, 0, err)
        # The field names of upload --json (issue 10).
        self.assertEqual(sorted((r["id"], r["name"], r["size"]) for r in self.json_lines(out)),
                         sorted(zip(self.ids, ["f0.txt", "f1.txt"], [100, 200])))

    def test_rm_deletes_each_file_and_reports_the_ones_it_could_not(self) -> None:
        code, out, err = self.cli("rm", self.ids[0], "no-such-id")
        self.assertEqual(code, 1)
        self.assertEqual(out, "deleted %s\n" % self.ids[0])
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("no-such-id", err)
        self.assertEqual(list(self.fake.files), [self.ids[1]])
        code, out, err = self.cli("rm", self.ids[1], "--json")
        self.assertEqual((code, self.json_lines(out)), (0, [{"id": self.ids[1], "deleted": True}]))
        self.assertEqual(self.fake.files, {})

    def test_link_prints_a_public_url_that_serves_the_file(self) -> None:
        code, out, err = self.cli("link", self.ids[1])
        self.assertEqual(code, 0, err)
        self.assertEqual(_http(out.strip())[::2], (200, pseudo_random_bytes(200, seed=1)))
        code, out, err = self.cli("link", "no-such-id")
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)

    def test_projects_and_folders_list_the_ids_a_user_needs(self) -> None:
        code, out, err = self.cli("projects")
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "%s  Fake project\n" % self.fake.project_id)
        code, out, err = self.cli("folders", self.fake.project_id)
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "%s  Fake folder\n" % self.fake.folder_id)
        code, out, err = self.cli("folders", self.fake.project_id, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual([r["id"] for r in self.json_lines(out)], [self.fake.folder_id])
        # The id listed is the one upload takes.
        path, _ = self.make_file("a.txt", 10)
        code, out, err = self.cli("upload", path, "--folder", self.json_lines(out)[0]["id"])
        self.assertEqual(code, 0, err)


class TestEntryPoints(KeyInEnvCase):

    def test_the_three_entry_points_print_the_version(self) -> None:
        expected = "fileslink %s" % fileslink.__version__
        for args in (["-m", "fileslink", "--version"], ["fileslink.py", "--version"]):
            with self.subTest(args=args):
                child = self.run_child(*args)
                self.assertEqual(child.returncode, 0, child.stderr)
                self.assertEqual(child.stdout.decode().strip(), expected)
        code, out, err = self.cli("--version")
        self.assertEqual((code, out.strip()), (0, expected))


class TestTerminal(KeyInEnvCase):

    def three_files(self) -> List[str]:
        return [self.make_file("t%d.bin" % i, 200 * 1024, seed=i)[0] for i in range(3)]

    @unittest.skipUnless(hasattr(os, "openpty"), "needs a pseudo-terminal")
    def test_progress_line_is_redrawn_in_a_terminal_then_summarised(self) -> None:
        import pty

        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "fileslink", "upload"] + self.three_files(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
                                    env=self.child_env(), cwd=self.repo)
        finally:
            os.close(slave)
        chunks = []
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
                if not ready:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError:       # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            self.assertEqual(proc.wait(timeout=10), 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
        drawn = b"".join(chunks).decode("utf-8", "replace")
        self.assertRegex(drawn, r"\r1/3 files  .*\x1b\[K")
        self.assertRegex(drawn, r"\r3/3 files  ")
        self.assertRegex(drawn, r"\r\x1b\[K3 files, 600\.0 KiB in \d+\.\d s \(.*/s\)\r?\n")
        self.assertEqual(len(self.uploaded()), 3)

    def test_no_escape_codes_when_stderr_is_a_pipe_and_nothing_with_quiet(self) -> None:
        paths = self.three_files()
        child = self.run_child("-m", "fileslink", "upload", *paths)
        self.assertEqual(child.returncode, 0, child.stderr)
        err = child.stderr.decode()
        self.assertNotIn("\x1b", err)
        self.assertNotIn("\r", err)
        self.assertEqual(err, "")  # off a terminal a run that went well is silent (cron)
        self.assertEqual(len(child.stdout.decode().splitlines()), 3)
        child = self.run_child("-m", "fileslink", "upload", "--quiet", *paths)
        self.assertEqual((child.returncode, child.stderr), (0, b""))
        self.assertEqual(len(child.stdout.decode().splitlines()), 3)

    @unittest.skipUnless(os.name == "posix", "sends SIGINT")
    def test_ctrl_c_during_a_multipart_upload_exits_130_and_aborts_it(self) -> None:
        path, _ = self.make_file("big.bin", 30 * MiB)
        # The first part stalls (stop() cuts it short), so the upload cannot
        # end by itself; the first part answered says the upload is under way.
        self.fake.inject("storage", delay=30)
        under_way = threading.Event()
        self.fake.on_request = lambda req: under_way.set() if req.plane == "storage" else None
        # Not --quiet: no summary either, as if the run had ended.
        proc = subprocess.Popen([sys.executable, "-m", "fileslink", "upload", path, "--threshold",
                                 "6M", "--workers", "2"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.child_env(), cwd=self.repo)
        try:
            self.assertTrue(under_way.wait(20), "no part was sent within 20 s")
            self.assertIsNone(proc.poll(), "the CLI ended before it was interrupted")
            proc.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            out, err = proc.communicate(timeout=30)
            elapsed = time.monotonic() - signalled
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.assertEqual(proc.returncode, 130, err)
        # Generous, for a busy machine: a CLI that waited for the stalled part
        # would take 30 s. Exiting at all also says no worker was left running.
        self.assertLess(elapsed, 10)
        self.assertEqual(out, b"")
        lines = [line for line in err.decode().splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertIn("interrupted", lines[0])
        (up,) = self.fake.multipart.values()
        self.assertEqual(up.state, "aborted")
        self.assertEqual(len(self.fake.api_calls("/multipart/abort")), 1)
        self.assertEqual(self.uploaded(), {})


class TestSignals(FakeTestCase):
    """The CLI in a child process, signalled mid-upload: it exits with the
    conventional status (130 Ctrl-C, 143 SIGTERM) within 5 s (the target is
    2 s; 5 s leaves room for a loaded machine), its multipart upload aborted."""

    fake_options = {"min_part_size": MiB, "part_size": MiB}

    def world_cli(self, *argv: str) -> "subprocess.Popen[bytes]":
        proc = subprocess.Popen([sys.executable, "-c", _WORLD_CLI] + list(argv), cwd=_WORLD_REPO,
                                env=self.child_env(FILESLINK_STATE_DIR=self.tmp, PYTHONPATH=_WORLD_REPO), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def reap() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()

        self.addCleanup(reap)
        return proc

    def world_exit_status(self, proc: "subprocess.Popen[bytes]", what: str) -> Tuple[int, bytes]:
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.fail("the CLI was still running 5 s after %s" % what)
        return proc.returncode, out

    def test_ctrl_c_with_workers_stuck_in_connect_exits_130_within_seconds_and_aborts(self) -> None:
        if not sys.platform.startswith("linux"):
            self.skipTest("needs Linux: a full accept queue and /proc/net/tcp")
        path, _ = self.make_file("big.bin", 4 * MiB, seed=31)
        port = urlsplit(self.fake.black_hole()).port
        proc = self.world_cli("upload", path, "--threshold", "1M", "--workers", "4")
        # The kernel raises no event for a SYN sent: poll its table, bounded.
        deadline = time.monotonic() + 10
        while _world_syn_sent(port) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertGreater(_world_syn_sent(port), 0, "no worker reached connect()")
        proc.send_signal(signal.SIGINT)
        code, out = self.world_exit_status(proc, "SIGINT")
        self.assertEqual((code, out), (130, b""))
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])

    def test_sigterm_during_a_multipart_upload_aborts_it_and_exits_143(self) -> None:
        path, _ = self.make_file("big.bin", 4 * MiB, seed=32)
        self.fake.inject("storage", delay=30, times=100)     # parts hang until the signal
        proc = self.world_cli("upload", path, "--threshold", "1M", "--workers", "4")
        self.assertTrue(self.fake.wait_for(lambda: bool(self.fake.storage_calls()), 10),
                        "no part reached storage")
        proc.send_signal(signal.SIGTERM)
        code, out = self.world_exit_status(proc, "SIGTERM")
        self.assertEqual((code, out), (143, b""))
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])



# The command line as people use it: terminals, pipes, cron, re-runs, trees,
# signals (issue 10 items 1-9; issue 9 items 4, 7, 10; issue 11's commands)
# ---------------------------------------------------------------------------

def _terminal_lines(raw: str) -> List[str]:
    """What a terminal shows, line by line, of what was written to it: a
    carriage return goes back to column 0, ESC [ K erases to the end of the
    line, and text overwrites what it lands on."""
    lines: List[str] = []
    line: List[str] = []
    col = i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = raw[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        else:
            line[col:col + 1] = [ch]
            col += 1
    if "".join(line).strip():
        lines.append("".join(line).rstrip())
    return lines


#: A progress line as drawn: "\r3/6 files  ..." up to the next control character.
_PROGRESS_DRAW = re.compile(r"\r(\d+/\d+ files[^\r\n\x1b]*)")


def _without_dac_override() -> Optional[Callable[[], None]]:
    """For a child run by root, a preexec_fn that drops the capabilities
    which let root read what permissions forbid (so an unreadable directory
    is unreadable for it too); None when not root."""
    if os.geteuid() != 0:
        return None
    import ctypes

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return drop


class CliCase(FakeTestCase):
    """The fake's key, base URL and folder in the environment, and ways to
    run the CLI in a child process: on pipes, or on a pseudo-terminal."""

    def setUp(self) -> None:
        super().setUp()
        os.environ.update(FILESLINK_KEY=self.fake.api_key, FILESLINK_BASE_URL=self.fake.base_url,
                          FILESLINK_FOLDER=self.fake.folder_id,
                          FILESLINK_STATE_DIR=os.path.join(self.tmp, "state"))  # not ~/.cache
        for name in ("COLUMNS", "LINES", "PYTHONIOENCODING"):
            os.environ.pop(name, None)

    def child(self, *argv: str, input: Optional[bytes] = None, stdout: Any = subprocess.PIPE,
              **env: str) -> "subprocess.CompletedProcess[bytes]":
        """`python -m fileslink ARGV` on pipes (20 s bound: a hang fails, not blocks)."""
        return subprocess.run([sys.executable, "-m", "fileslink"] + list(argv), input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              stdout=stdout, stderr=subprocess.PIPE, cwd=HERE,
                              env=dict(os.environ, PYTHONPATH="", **env), timeout=20)

    def on_terminal(self, *argv: str, columns: int = 80, stdin: Any = subprocess.DEVNULL,
                    **env: str) -> Tuple[int, str]:
        """`python -m fileslink ARGV` with stdout and stderr on one pseudo-
        terminal of that width: (status, everything written to it)."""
        import fcntl
        import pty
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        try:
            proc = subprocess.Popen([sys.executable, "-m", "fileslink"] + list(argv), stdin=stdin,
                                    stdout=slave, stderr=slave, cwd=HERE,
                                    env=dict(os.environ, PYTHONPATH="", **env))
        finally:
            os.close(slave)
        chunks = []
        deadline = time.monotonic() + 20  # a generous bound: a hang fails the test
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
                try:
                    chunk = os.read(master, 65536) if ready else b""
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                chunks.append(chunk)
            status = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
        return status, b"".join(chunks).decode("utf-8", "replace")

    def tree(self, *names: str, size: int = 1000) -> str:
        """tmp/tree holding these files (seeded by position); its path."""
        for i, name in enumerate(names):
            self.make_file(os.path.join("tree", name), size + i, seed=i)
        return os.path.join(self.tmp, "tree")

    def stored(self) -> Dict[str, bytes]:
        """name -> bytes of each file the fake holds as uploaded."""
        return {f.name: f.data for f in self.fake.files.values() if f.uploaded}

    def once_answered(self, plane: str, action: Callable[[], None]) -> None:
        """Call action() when the fake has answered the first request on
        plane (its on_request hook runs after the answer)."""
        armed = [True]

        def hook(req: Req) -> None:
            if req.plane == plane and armed and armed.pop():
                action()
        self.fake.on_request = hook

    def interrupt(self) -> None:
        """SIGINT to this process's main thread, as Ctrl-C sends it."""
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def need_sigint(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.skipTest("signals go to the main thread")
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            self.skipTest("SIGINT is handled by the test runner (unittest -c?)")


@unittest.skipUnless(hasattr(os, "openpty"), "needs a pseudo-terminal")
class TestCliProgressLine(CliCase):

    def test_no_result_line_shares_a_line_with_progress_and_each_draw_fits_40_columns(self) -> None:
        top = self.tree(*("f%d.bin" % i for i in range(6)), size=64 * 1024)
        status, raw = self.on_terminal("upload", top, "--workers", "2", columns=40, TERM="xterm")
        self.assertEqual(status, 0, raw)
        draws = _PROGRESS_DRAW.findall(raw)
        self.assertTrue(draws, raw)                              # it was drawn...
        self.assertTrue(all(len(d) <= 39 for d in draws), draws)  # ...and never wrapped
        for draw in draws:                                       # ...nor cut mid-field
            self.assertRegex(draw, r"(files|B|B/s|\d:\d\d)$")
        ids = {f.name: f.id for f in self.fake.files.values()}
        shown = [line for line in _terminal_lines(raw) if line]
        self.assertEqual(sorted(shown[:-1]), sorted("%s -> %s" % kv for kv in ids.items()), raw)
        self.assertRegex(shown[-1], r"^6 files, 384\.0 KiB in \d+\.\d s \(.*/s\)$")

    def test_a_dumb_terminal_gets_no_escape_codes(self) -> None:
        top = self.tree("a.bin", "b.bin", size=64 * 1024)
        status, raw = self.on_terminal("upload", top, TERM="dumb")
        self.assertEqual(status, 0, raw)
        self.assertNotIn("\x1b", raw)
        self.assertTrue(_PROGRESS_DRAW.findall(raw), raw)
        shown = [line for line in _terminal_lines(raw) if line]
        self.assertEqual(len(shown), 3, shown)                  # two results, one summary
        self.assertTrue(all(" -> " in line for line in shown[:2]), shown)

    def test_a_stream_of_unknown_size_shows_bytes_and_rate_without_a_total(self) -> None:
        data = pseudo_random_bytes(300 * 1024, seed=3)
        with tempfile.TemporaryFile() as stdin:
            stdin.write(data)
            stdin.seek(0)
            status, raw = self.on_terminal("upload", "-", "--name", "dump.sql", stdin=stdin)
        self.assertEqual(status, 0, raw)
        draws = _PROGRESS_DRAW.findall(raw)
        self.assertTrue(draws, raw)
        for draw in draws:
            self.assertNotIn(" / ", draw)                       # no "55.0 MiB / 0 B"
            self.assertRegex(draw, r"^\d/1 files  [\d.]+ (B|KiB)  [\d.]+ (B|KiB|MiB|GiB)/s$")
        self.assertEqual(self.stored(), {"dump.sql": data})

    def test_quiet_on_a_terminal_draws_nothing_but_still_reports_a_failure(self) -> None:
        top = self.tree("a.bin", size=64 * 1024)
        missing = os.path.join(self.tmp, "missing.txt")
        status, raw = self.on_terminal("upload", top, missing, "-q")
        self.assertEqual(status, 1, raw)
        self.assertEqual(_PROGRESS_DRAW.findall(raw), [])
        self.assertNotIn(" in 0.", raw)                     # no summary
        shown = [line for line in _terminal_lines(raw) if line]
        self.assertEqual(len(shown), 2, shown)
        self.assertRegex(shown[0], r"^fileslink: error: .*missing\.txt: No such file")
        self.assertRegex(shown[1], r"^a\.bin -> ")


class TestCliSilence(CliCase):
    """Cron mails whatever a job prints: in a pipe, success says nothing on
    stderr, and a failure says one line per failure."""

    def test_success_in_a_pipe_writes_nothing_on_stderr(self) -> None:
        child = self.child("upload", self.tree("a.txt", "b.txt", "c.txt"))
        self.assertEqual((child.returncode, child.stderr), (0, b""))
        self.assertEqual(len(child.stdout.splitlines()), 3)

    def test_a_failed_run_writes_one_line_per_failure_and_nothing_else(self) -> None:
        top = self.tree("good.txt", "refused.bin")
        self.fake.inject("storage", status=400, path_contains="refused.bin")
        status, out, err = self.cli(*["upload", top, os.path.join(self.tmp, "missing.txt")])
        self.assertEqual(status, 1)
        self.assertEqual(len(out.splitlines()), 1)
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)
        self.assertTrue(all(line.startswith("fileslink: error: ") for line in lines), err)
        self.assertEqual(sorted("refused.bin" in line for line in lines), [False, True], err)

    def test_a_warning_a_person_must_see_survives_quiet_and_a_pipe(self) -> None:
        # A multipart upload whose abort fails: storage keeps billing it,
        # which the user must be told even with -q and no terminal.
        path, _ = self.make_file("big.bin", 12 * MiB)
        self.fake.inject("storage", status=400, times=2)
        self.fake.inject("api", status=400, path_contains="abort")   # not retried: fast
        status, out, err = self.cli(*["upload", path, "--threshold", "6M", "-q"])
        self.assertEqual(status, 1, err)
        self.assertRegex(err, r"(?m)^fileslink: warning: could not abort ")
        self.assertRegex(err, r"(?m)^fileslink: error: big\.bin: ")
        self.assertEqual(out, "")


class TestCliReruns(CliCase):

    def test_skip_existing_skips_what_matches_by_name_and_size_and_uploads_the_rest(self) -> None:
        top = self.tree("same.txt", "grown.txt", "sub/same.txt")
        status, out, err = self.cli(*["upload", top])
        self.assertEqual(status, 0, err)
        first = {f.name: f.id for f in self.fake.files.values()}
        with open(os.path.join(top, "grown.txt"), "ab") as f:
            f.write(b"more")
        self.make_file("tree/new.txt", 10)
        status, out, err = self.cli(*["upload", top, "--skip-existing"])
        self.assertEqual((status, err), (0, ""))
        lines = sorted(out.splitlines())
        self.assertEqual(lines[2:], sorted(["same.txt skipped (%s)" % first["same.txt"],
                                            "sub/same.txt skipped (%s)" % first["sub/same.txt"]]))
        self.assertRegex(lines[0], r"^grown\.txt -> ")
        self.assertRegex(lines[1], r"^new\.txt -> ")
        self.assertEqual(sorted(f.name for f in self.fake.files.values()),
                         ["grown.txt", "grown.txt", "new.txt", "same.txt", "sub/same.txt"])

    def test_skip_existing_json_marks_the_skipped_file_with_its_existing_id(self) -> None:
        path, _ = self.make_file("a.txt", 100)
        status, out, _ = self.cli(*["upload", path, "--json"])
        uploaded = json.loads(out)
        self.assertNotIn("skipped", uploaded)
        status, out, err = self.cli(*["upload", path, "--json", "--skip-existing"])
        self.assertEqual(status, 0, err)
        (record,) = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(record, dict(uploaded, skipped=True))
        self.assertEqual(len(self.fake.files), 1)

    def test_dry_run_lists_what_would_go_and_calls_nothing_but_the_listing(self) -> None:
        there, _ = self.make_file("tree/there.txt", 100)
        self.cli(*["upload", there])
        self.make_file("tree/big.bin", 7 * MiB)
        self.make_file("tree/.env", 5)
        mark = len(self.fake.log)
        status, out, err = self.cli(*["upload", os.path.join(self.tmp, "tree"), "--dry-run",
                                    "--skip-existing", "--threshold", "6M"])
        self.assertEqual((status, err), (0, ""))
        (there_id,) = self.fake.files
        self.assertEqual(out.splitlines(), [".env would be uploaded (5 B)",
                                            "big.bin would be uploaded (7.0 MiB)",
                                            "there.txt would be skipped (%s)" % there_id])
        calls = [(r.method, r.path) for r in self.fake.log[mark:]]
        self.assertEqual([method for method, _ in calls], ["GET"], calls)   # the listing
        self.assertIn(self.fake.folder_id, calls[0][1])
        self.assertEqual(len(self.fake.files), 1)

    def test_dry_run_json_says_what_each_file_would_do(self) -> None:
        top = self.tree("a.txt", "b.tmp")
        status, out, err = self.cli(*["upload", top, "--dry-run", "--json", "--exclude", "*.tmp"])
        self.assertEqual(status, 0, err)
        records = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(records, [
            {"name": "a.txt", "size": 1000, "dryRun": True, "mimeType": "text/plain"},
            {"name": "b.tmp", "size": 1001, "dryRun": True, "excluded": True}])
        self.assertEqual(self.fake.log, [])   # no --skip-existing: not even a listing


class TestCliFilters(CliCase):
    """--exclude / --include follow aws s3's rule: every file is in, and
    the last rule matching its name (its path below the directory) decides."""

    NAMES = ("a.jpg", "b.txt", "sub/c.jpg", "sub/d.txt", ".env", "sub/.cache/e.jpg")

    def chosen(self, *rules: str) -> List[str]:
        status, out, err = self.cli(*["upload", self.tree(*self.NAMES), "--dry-run", "--json"]
                                   + list(rules))
        self.assertEqual(status, 0, err)
        return sorted(r["name"] for r in map(json.loads, out.splitlines()) if not r.get("excluded"))

    def test_the_last_matching_rule_wins(self) -> None:
        cases = [([], sorted(self.NAMES)),                       # dotfiles included
                 (["--exclude", "*.txt"], [".env", "a.jpg", "sub/.cache/e.jpg", "sub/c.jpg"]),
                 (["--exclude", "*", "--include", "*.jpg"], ["a.jpg", "sub/.cache/e.jpg", "sub/c.jpg"]),
                 (["--include", "*.jpg", "--exclude", "*"], []),
                 (["--exclude", ".*", "--exclude", "*/.*"], ["a.jpg", "b.txt", "sub/c.jpg", "sub/d.txt"]),
                 (["--exclude", "sub/*", "--include", "sub/*.txt"], [".env", "a.jpg", "b.txt", "sub/d.txt"])]
        for rules, expected in cases:
            with self.subTest(rules=rules):
                self.assertEqual(self.chosen(*rules), expected)

    def test_filters_choose_what_is_uploaded_and_apply_to_files_named_directly(self) -> None:
        top = self.tree("keep.txt", "drop.log")
        loose, _ = self.make_file("loose.log", 10)
        status, out, err = self.cli(*["upload", top, loose, "--exclude", "*.log"])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(sorted(self.stored()), ["keep.txt"])

    def test_everything_excluded_is_one_notice_and_status_0(self) -> None:
        status, out, err = self.cli(*["upload", self.tree("a.txt"), "--exclude", "*"])
        self.assertEqual((status, out), (0, ""))
        self.assertEqual(err, "fileslink: nothing to upload: 1 excluded by --exclude/--include\n")


class TestCliPipes(CliCase):

    def closed_pipe(self) -> int:
        """The write end of a pipe whose reader is gone: writing to it fails."""
        read, write = os.pipe()
        os.close(read)
        self.addCleanup(os.close, write)
        return write

    def test_ls_into_a_closed_pipe_ends_quietly_with_status_0(self) -> None:
        self.client().upload(b"x", self.fake.folder_id, name="x.txt")
        child = self.child("ls", stdout=self.closed_pipe())
        self.assertEqual((child.returncode, child.stderr), (0, b""))

    def test_upload_json_into_a_closed_pipe_stops_cleanly(self) -> None:
        top = self.tree("a.txt", "b.txt", "c.txt")
        self.make_file("tree/big.bin", 13 * MiB, seed=9)
        child = self.child("upload", top, "--json", "--threshold", "6M", "--workers", "2",
                           stdout=self.closed_pipe())
        self.assertEqual((child.returncode, child.stderr), (0, b""))
        self.assertNotIn("open", [up.state for up in self.fake.multipart.values()])
        local = {name: pseudo_random_bytes(1000 + i, seed=i)
                 for i, name in enumerate(("a.txt", "b.txt", "c.txt"))}
        local["big.bin"] = pseudo_random_bytes(13 * MiB, seed=9)
        for name, data in self.stored().items():    # what was confirmed is whole
            self.assertEqual(data, local[name], name)

    def test_an_empty_directory_is_status_0_with_one_notice(self) -> None:
        empty = os.path.join(self.tmp, "empty")
        os.mkdir(empty)
        status, out, err = self.cli(*["upload", empty])
        self.assertEqual((status, out), (0, ""))
        self.assertEqual(err, "fileslink: nothing to upload: no files in %s\n" % empty)
        self.assertEqual(self.fake.log, [])


class TestCliArguments(CliCase):

    def test_global_options_work_before_or_after_the_command(self) -> None:
        other = self.client().create_folder("Other", self.fake.project_id)
        path, _ = self.make_file("a.txt", 10)
        for argv in (["--json", "--folder", other, "upload", path],
                     ["upload", path, "--json", "--folder", other],
                     ["-q", "--json", "upload", "--folder", other, path]):
            with self.subTest(argv=argv):
                status, out, err = self.cli(*argv)
                self.assertEqual((status, err), (0, ""))
                self.assertEqual(self.fake.files[json.loads(out)["id"]].folder_id, other)
        for argv in (["-v", "ls", other], ["ls", other, "-v"]):
            with self.subTest(argv=argv):
                status, out, err = self.cli(*argv)
                self.assertEqual(status, 0, err)
                self.assertEqual(len(out.splitlines()), 3)

    def test_a_wrong_option_prints_that_commands_usage_and_is_never_abbreviated(self) -> None:
        path, _ = self.make_file("a.txt", 10)
        for argv, command in ((["upload", "--worker", "3", path], "upload"),
                              (["upload", path, "--dry"], "upload"),
                              (["ls", "--jso"], "ls"), (["--verb", "ls"], "ls"),
                              (["rm", "--force", "x"], "rm")):
            with self.subTest(argv=argv):
                status, out, err = self.cli(*argv)
                self.assertEqual((status, out), (2, ""))
                self.assertTrue(err.startswith("usage: fileslink %s " % command), err)
                self.assertRegex(err.splitlines()[-1],
                                 r"^fileslink: error: unrecognized arguments: --\w+$")
        self.assertEqual(self.fake.log, [])

    def test_every_error_has_one_style(self) -> None:
        path, _ = self.make_file("a.txt", 10)
        cases = [(["upload"], 2), (["frobnicate"], 2), (["upload", path, "--threshold", "6X"], 2),
                 (["upload", path, "--workers", "0"], 2), (["upload", path, "--bwlimit", "fast"], 2),
                 (["upload", "-"], 2), (["abort"], 2), (["abort", "x", "--all"], 2),
                 (["upload", path, "--ca-bundle", os.path.join(self.tmp, "none.pem")], 2),
                 (["rm", "no-such-id"], 1), (["link", "no-such-id"], 1)]
        for argv, expected in cases:
            with self.subTest(argv=argv):
                status, out, err = self.cli(*argv)
                self.assertEqual(status, expected, err)
                self.assertRegex(err.splitlines()[-1], r"^fileslink: error: \S")
                self.assertNotIn("Traceback", err)
        del os.environ["FILESLINK_FOLDER"]
        status, _, err = self.cli(*["upload", path])
        self.assertEqual((status, err.count("\n")), (2, 1))
        self.assertRegex(err, r"^fileslink: error: no folder: pass --folder ID or set FILESLINK_FOLDER")

    def test_every_command_and_every_argument_has_a_help_line(self) -> None:
        import argparse

        parser = fileslink._parser()
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        self.assertEqual(set(commands.choices), {"upload", "ls", "rm", "link", "projects",
                                                 "folders", "pending", "abort"})
        helps = {c.dest: c.help for c in commands._choices_actions}
        self.assertTrue(all(helps.values()), helps)
        for name, command in list(commands.choices.items()) + [("", parser)]:
            for action in command._actions:
                with self.subTest(command=name, argument=action.dest):
                    self.assertTrue(action.help, "no help line")

    def test_ls_defaults_to_FILESLINK_FOLDER_and_speaks_upload_jsons_names(self) -> None:
        path, _ = self.make_file("a.txt", 10)
        _, out, _ = self.cli(*["upload", path, "--json"])
        uploaded = json.loads(out)
        status, out, err = self.cli(*["ls", "--json"])
        self.assertEqual(status, 0, err)
        (listed,) = [json.loads(line) for line in out.splitlines()]
        for key in ("id", "name", "size", "mimeType", "s3Key"):
            self.assertEqual(listed[key], uploaded[key], key)
        self.assertNotIn("fileName", listed)
        status, out, err = self.cli(*["ls"])
        self.assertEqual(out.split(), [uploaded["id"], "10", "a.txt"])

    def test_v_shows_each_file_and_api_call_and_vv_each_request(self) -> None:
        path, _ = self.make_file("v.txt", 10)
        status, _, err = self.cli(*["upload", path, "-v"])
        self.assertEqual(status, 0, err)
        self.assertRegex(err, r"(?m)^fileslink: info: uploaded v\.txt as ")
        self.assertRegex(err, r"(?m)^fileslink: info: POST /v1/files/\S+ -> 200")
        self.assertNotIn("PUT", err)
        status, _, err = self.cli(*["upload", path, "-vv"])
        self.assertRegex(err, r"(?m)^fileslink: debug: PUT v\.txt to http://127\.0\.0\.1:\d+/")

    def test_allow_insecure_is_the_cli_way_to_plain_http_to_a_remote_host(self) -> None:
        # 127.1 reaches the fake, yet is not a loopback name the client knows.
        os.environ["FILESLINK_BASE_URL"] = self.fake.base_url.replace("127.0.0.1", "127.1")
        status, out, err = self.cli(*["ls"])
        self.assertEqual(status, 2)
        self.assertRegex(err, r"^fileslink: error: refusing plain http to 127\.1")
        self.assertIn("FILESLINK_ALLOW_INSECURE", err)
        for argv, env in ((["ls", "--allow-insecure"], {}),
                          (["ls"], {"FILESLINK_ALLOW_INSECURE": "1"})):
            with self.subTest(argv=argv, env=env):
                os.environ.update(env)
                self.assertEqual(self.cli(*argv)[0], 0)

    @unittest.skipUnless(shutil.which("openssl"), "needs openssl to make a certificate")
    def test_a_refused_certificate_gets_the_cli_hint_to_add_a_ca(self) -> None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem", "-out",
                        "cert.pem", "-days", "1", "-subj", "/CN=127.0.0.1"], cwd=self.tmp,
                       check=True, timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(os.path.join(self.tmp, "cert.pem"), os.path.join(self.tmp, "key.pem"))
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)

        def handshake_once() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError):  # the client refuses the certificate
                context.wrap_socket(conn, server_side=True).close()
            conn.close()
        server = threading.Thread(target=handshake_once, daemon=True)
        server.start()
        os.environ["FILESLINK_BASE_URL"] = "https://127.0.0.1:%d" % listener.getsockname()[1]
        status, out, err = self.cli(*["ls"])
        server.join(10)
        self.assertEqual(status, 1, err)
        self.assertRegex(err, r"^fileslink: error: .*certificate verify failed.*"
                         r"\(if a proxy re-signs TLS, --ca-bundle FILE adds its CA\)\n$")

    def test_bwlimit_takes_a_rate_with_a_suffix_and_refuses_others(self) -> None:
        path, data = self.make_file("a.bin", 128 * 1024)
        started = time.monotonic()
        status, out, err = self.cli(*["upload", path, "--bwlimit", "128K"])
        elapsed = time.monotonic() - started
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.stored(), {"a.bin": data})
        # 128 KiB at 128 KiB/s: the first 16 KiB block goes at once, the rest
        # take 0.875 s. Only a lower bound: a busy machine is slower, never faster.
        self.assertGreater(elapsed, 0.8)
        for bad in ("fast", "0", "-1K"):
            with self.subTest(rate=bad):
                status, _, err = self.cli(*["upload", path, "--bwlimit", bad])
                self.assertEqual(status, 2)
                self.assertIn("--bwlimit", err)


@unittest.skipUnless(os.name == "posix", "FIFOs, sockets and symbolic links")
class TestCliTrees(CliCase):
    """What a directory holds besides regular files (issue 9 item 7)."""

    def test_special_files_are_skipped_with_one_warning_each_and_never_opened(self) -> None:
        top = self.tree("a.txt", "sub/b.txt")
        os.mkfifo(os.path.join(top, "fifo"))               # opening it would block the run
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        server.bind(os.path.join(top, "sub", "sock"))
        os.symlink(os.devnull, os.path.join(top, "null"))  # a character device
        child = self.child("upload", top)
        self.assertEqual(child.returncode, 0, child.stderr)
        warnings_ = child.stderr.decode().splitlines()
        self.assertEqual(sorted(warnings_), [
            "fileslink: warning: skipped %s/fifo: a FIFO, not a regular file" % top,
            "fileslink: warning: skipped %s/null: a character device, not a regular file" % top,
            "fileslink: warning: skipped %s/sub/sock: a socket, not a regular file" % top])
        self.assertEqual(sorted(self.stored()), ["a.txt", "sub/b.txt"])

    def test_directory_links_are_followed_and_a_loop_is_skipped_with_a_warning(self) -> None:
        top = self.tree("a.txt")
        elsewhere = os.path.dirname(self.make_file("elsewhere/x.txt", 10)[0])
        os.symlink(elsewhere, os.path.join(top, "linked"))
        os.symlink(".", os.path.join(top, "linked-up"))     # a loop: tree/linked-up -> tree
        status, out, err = self.cli(*["upload", top])
        self.assertEqual(status, 0, err)
        self.assertEqual(err, "fileslink: warning: skipped %s/linked-up: a link to a directory "
                         "above it (a loop)\n" % top)
        self.assertEqual(sorted(self.stored()), ["a.txt", "linked/x.txt"])

    def test_a_dangling_link_is_one_failure_and_the_rest_is_uploaded(self) -> None:
        top = self.tree("a.txt")
        os.symlink("nowhere", os.path.join(top, "dangling"))
        status, out, err = self.cli(*["upload", top])
        self.assertEqual(status, 1)
        self.assertEqual(err, "fileslink: error: %s/dangling: No such file or directory\n" % top)
        self.assertEqual(sorted(self.stored()), ["a.txt"])

    @unittest.skipUnless(sys.platform.startswith("linux"), "drops root's capabilities as Linux does")
    def test_unreadable_directories_and_files_are_one_failure_line_each(self) -> None:
        top = self.tree("a.txt", "locked/b.txt", "secret.txt")
        os.chmod(os.path.join(top, "locked"), 0)
        os.chmod(os.path.join(top, "secret.txt"), 0)
        self.addCleanup(os.chmod, os.path.join(top, "locked"), 0o700)
        child = subprocess.run([sys.executable, "-m", "fileslink", "upload", top],
                               stdin=subprocess.DEVNULL, capture_output=True, cwd=HERE,
                               env=dict(os.environ, PYTHONPATH=""), timeout=20,
                               preexec_fn=_without_dac_override())
        self.assertEqual(child.returncode, 1, child.stderr)
        self.assertEqual(sorted(child.stderr.decode().splitlines()), [
            "fileslink: error: %s/locked: Permission denied" % top,
            "fileslink: error: secret.txt: Permission denied"])
        self.assertEqual(sorted(self.stored()), ["a.txt"])
        os.chmod(top, 0)                                    # now the top one
        self.addCleanup(os.chmod, top, 0o700)
        child = subprocess.run([sys.executable, "-m", "fileslink", "upload", top],
                               stdin=subprocess.DEVNULL, capture_output=True, cwd=HERE,
                               env=dict(os.environ, PYTHONPATH=""), timeout=20,
                               preexec_fn=_without_dac_override())
        self.assertEqual((child.returncode, child.stderr.decode()),
                         (1, "fileslink: error: %s: Permission denied\n" % top))


class TestCliSignals(CliCase):
    """SIGTERM is Ctrl-C with another status; the last line says what was
    aborted, and only what was (issue 9 item 4)."""

    fake_options = {"min_part_size": 64 * 1024, "part_size": 64 * 1024}

    @unittest.skipUnless(os.name == "posix", "sends SIGTERM")
    def test_sigterm_aborts_the_multipart_upload_and_exits_143(self) -> None:
        path, _ = self.make_file("big.bin", 1 * MiB)
        self.fake.inject("storage", delay=30)   # part 1 stalls: the upload cannot end by itself
        proc = subprocess.Popen([sys.executable, "-m", "fileslink", "upload", path, "--threshold",
                                 "256K", "--workers", "2"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE,
                                env=dict(os.environ, PYTHONPATH=""))
        self.once_answered("storage", proc.terminate)       # part 2 is in: the upload is open
        try:
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.assertEqual(proc.returncode, 143, err)
        self.assertEqual(err.decode(), "fileslink: terminated; 1 unfinished multipart upload "
                         "aborted\n")
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"])

    @unittest.skipUnless(os.name == "posix", "sends SIGINT")
    def test_a_stop_with_nothing_to_abort_does_not_claim_an_abort(self) -> None:
        self.need_sigint()
        path, _ = self.make_file("small.txt", 1000)
        self.fake.inject("storage", delay=30)               # its PUT stalls
        self.once_answered("api", self.interrupt)           # presigned: a single-part upload
        status, out, err = self.cli(*["upload", path])
        self.assertEqual((status, out, err), (130, "", "fileslink: interrupted\n"))

    @unittest.skipUnless(os.name == "posix", "sends SIGINT")
    def test_an_abort_that_fails_is_said_to_have_failed(self) -> None:
        self.need_sigint()
        path, _ = self.make_file("big.bin", 1 * MiB)
        self.fake.inject("storage", delay=30)
        self.fake.inject("api", status=500, times=20, path_contains="abort")
        self.once_answered("storage", self.interrupt)
        status, out, err = self.cli(*["upload", path, "--threshold", "256K", "--workers", "2"])
        self.assertEqual(status, 130, err)
        self.assertNotIn("aborted\n", err)
        self.assertRegex(err.splitlines()[-1],
                         r"^fileslink: interrupted; 1 could not be aborted \(see above\)$")
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["open"])

    def test_main_puts_the_sigterm_handler_back(self) -> None:
        before = signal.getsignal(signal.SIGTERM)
        self.cli(*["ls"])
        self.assertIs(signal.getsignal(signal.SIGTERM), before)

    def test_main_leaves_an_ignored_sigint_ignored_and_puts_the_default_back(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.skipTest("signal handlers are set in the main thread")
        previous = signal.getsignal(signal.SIGINT)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        for handler in (signal.SIG_IGN, signal.default_int_handler):   # nohup; a shell
            signal.signal(signal.SIGINT, handler)
            with mock.patch("signal.signal", wraps=signal.signal) as spy:
                self.assertEqual(self.cli(*["ls"])[0], 0)
            set_to = [args[1] for args, _ in spy.call_args_list if args[0] == signal.SIGINT]
            self.assertIs(signal.getsignal(signal.SIGINT), handler)
            if handler is signal.SIG_IGN:
                self.assertEqual(set_to, [])                 # never turned back on
            else:
                self.assertEqual(len(set_to), 2, set_to)     # trapped, then put back
                self.assertIs(set_to[-1], handler)


class TestCliResume(CliCase):
    """--resume, pending and abort (issue 11's commands)."""

    fake_options = {"min_part_size": 64 * 1024, "part_size": 64 * 1024}

    def kept_upload(self, name: str, seed: int) -> Tuple[str, bytes]:
        """A 1 MiB file (16 parts) whose --resume upload failed after part 1."""
        path, data = self.make_file(name, 1 * MiB, seed=seed)
        self.once_answered("storage", lambda: self.fake.inject("storage", status=400))
        status, out, err = self.cli(*["upload", path, "--resume", "--threshold", "256K",
                                    "--workers", "1"])
        self.assertEqual((status, out), (1, ""), err)
        return path, data

    def test_a_kept_upload_is_pending_and_the_same_command_finishes_it(self) -> None:
        path, data = self.kept_upload("big.bin", seed=1)
        (up,) = self.fake.multipart.values()
        self.assertEqual((up.state, sorted(up.parts)), ("open", [1]))
        status, out, err = self.cli(*["pending"])
        self.assertEqual(status, 0, err)
        self.assertRegex(out, r"^%s  1/16 parts  1\.0 MiB  expires \d{4}-\d\d-\d\d \d\d:\d\d UTC  "
                         r"big\.bin\n$" % up.file_id)
        status, out, err = self.cli(*["pending", "--json"])
        record = json.loads(out)
        self.assertEqual((record["id"], record["name"], record["size"], record["partsDone"],
                          record["partsTotal"]), (up.file_id, "big.bin", 1 * MiB, 1, 16))
        mark = len(self.fake.log)
        status, out, err = self.cli(*["upload", path, "--resume", "--threshold", "256K"])
        self.assertEqual(status, 0, err)
        self.assertEqual(sum(r.plane == "storage" for r in self.fake.log[mark:]), 15)
        self.assertEqual(self.stored(), {"big.bin": data})
        self.assertEqual(self.cli(*["pending"])[1], "")

    def test_abort_takes_ids_or_all_and_says_which_it_did_not_find(self) -> None:
        self.kept_upload("one.bin", seed=1)
        self.kept_upload("two.bin", seed=2)
        ids = {up.file_id: up for up in self.fake.multipart.values()}
        first, second = sorted(ids)
        status, out, err = self.cli(*["abort", first, "no-such-id"])
        self.assertEqual((status, out), (1, "aborted %s\n" % first))
        self.assertRegex(err, r"^fileslink: error: no-such-id: no such pending upload")
        self.assertEqual(ids[first].state, "aborted")
        status, out, err = self.cli(*["abort", "--all", "--json"])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out), {"id": second, "aborted": True})
        self.assertEqual(ids[second].state, "aborted")
        self.assertEqual(self.cli(*["pending"])[1], "")

    def test_abort_of_an_upload_files_link_no_longer_has_open_drops_its_journal(self) -> None:
        # Completed (its answer lost), or expired, meanwhile: storage says
        # NoSuchUpload. Kept, the journal would fail every `abort --all`.
        self.kept_upload("a.bin", seed=61)
        self.fake.inject("api", status=404, body={"success": False, "message": "NoSuchUpload"},
                         path_contains="/multipart/abort")
        status, out, err = self.cli(*["abort", "--all"])
        self.assertEqual(status, 1)
        self.assertRegex(err, r"NoSuchUpload \(nothing is open under that id: its journal was "
                         r"removed\)\n$")
        self.assertEqual(self.cli(*["pending"])[1], "")
        self.assertEqual(self.cli(*["abort", "--all"])[0], 0)

    def test_abort_that_fails_for_now_keeps_the_journal(self) -> None:
        self.kept_upload("a.bin", seed=62)
        self.fake.inject("api", status=503, times=10, path_contains="/multipart/abort",
                         headers={"Retry-After": "0"})          # the tries come at once
        self.assertEqual(self.cli(*["abort", "--all"])[0], 1)
        self.assertIn("a.bin", self.cli(*["pending"])[1])

    @unittest.skipUnless(os.name == "posix", "sends SIGINT")
    def test_ctrl_c_with_resume_keeps_the_upload_and_says_how_to_go_on(self) -> None:
        self.need_sigint()
        path, _ = self.make_file("big.bin", 1 * MiB)
        self.fake.inject("storage", delay=30)               # part 1 stalls
        self.once_answered("storage", self.interrupt)       # part 2 is in
        status, out, err = self.cli(*["upload", path, "--resume", "--threshold", "256K",
                                    "--workers", "2"])
        self.assertEqual(status, 130, err)
        self.assertEqual(err.splitlines()[-1], "fileslink: interrupted; the same command "
                         "continues what was kept (`fileslink pending` lists it)")
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["open"])
        self.assertIn("big.bin", self.cli(*["pending"])[1])

    def test_ctrl_c_inside_initiate_does_not_claim_anything_was_kept(self) -> None:
        # Nothing was journaled: `pending` would list nothing to continue.
        path, _ = self.make_file("big.bin", 1 * MiB)
        with mock.patch.object(fileslink._API, "initiate", side_effect=KeyboardInterrupt):
            status, out, err = self.cli(*["upload", path, "--resume", "--threshold", "256K"])
        self.assertEqual((status, out, err), (130, "", "fileslink: interrupted\n"))
        self.assertEqual(self.cli(*["pending"])[1], "")

    @unittest.skipUnless(os.name == "posix", "sends SIGINT")
    def test_ctrl_c_with_resume_on_a_directory_says_to_skip_what_is_finished(self) -> None:
        # The same command alone would upload the finished small files again.
        self.need_sigint()
        top = self.tree("a.txt", "b.txt")
        with open(os.path.join(top, "big.bin"), "wb") as f:
            f.write(os.urandom(1 * MiB))
        self.fake.inject("storage", delay=30, path_contains="big.bin")      # a part stalls
        self.once_answered("storage", self.interrupt)                       # a small file is in
        status, out, err = self.cli(*["upload", top, "--resume", "--threshold", "256K",
                                    "--workers", "2"])
        self.assertEqual(status, 130, err)
        self.assertEqual(err.splitlines()[-1], "fileslink: interrupted; the same command with "
                         "--skip-existing continues what was kept (`fileslink pending` lists it)")


class TestCliEncoding(CliCase):
    """A name stdout cannot encode is escaped (issue 9 item 10)."""

    @unittest.skipUnless(sys.platform.startswith("linux"), "names of undecodable bytes")
    def test_names_a_cp1252_stdout_cannot_hold_are_escaped_and_the_next_file_reported(self) -> None:
        top = self.tree("日本.txt", "z.txt")
        with open(os.path.join(os.fsencode(top), b"caf\xff.txt"), "wb") as f:
            f.write(b"bytes")
        child = self.child("upload", top, "-v", PYTHONIOENCODING="cp1252")
        self.assertEqual(child.returncode, 0, child.stderr)
        self.assertNotIn(b"Traceback", child.stderr)
        names = sorted(line.split(" -> ")[0] for line in child.stdout.decode("cp1252").splitlines())
        self.assertEqual(names, ["\\u65e5\\u672c.txt", "caf\\ufffd.txt", "z.txt"])
        self.assertEqual(sorted(self.stored()), ["caf\ufffd.txt", "z.txt", "日本.txt"])


# ---------------------------------------------------------------------------
# The environment: proxies, HTTPS and CAs, threads, logging, asyncio, vendoring
# ---------------------------------------------------------------------------

class TestProxies(FakeTestCase):

    def setUp(self) -> None:
        super().setUp()
        self.proxy = _Proxy()
        self.addCleanup(self.proxy.stop)

    def upload(self) -> None:
        data = pseudo_random_bytes(70000, seed=9)
        client = self.client()
        f = client.upload(data, self.fake.folder_id, name="p.bin")
        client.close()
        self.assertEqual(self.fake.files[f.id].data, data)

    def test_http_proxy_carries_api_and_storage_requests_in_absolute_form(self) -> None:
        host = self.proxy.url.split("//")[1]
        for name, value in (("HTTP_PROXY", self.proxy.url), ("http_proxy", self.proxy.url),
                            ("http_proxy", host), ("HTTP_PROXY", "http://me:s%40cret@" + host)):
            with self.subTest(name=name, value=value):
                os.environ[name] = value
                self.addCleanup(os.environ.pop, name, None)
                del self.proxy.seen[:]
                self.upload()
                os.environ.pop(name)
                targets = [(method, target) for method, target, _ in self.proxy.seen]
                api = [t for t in targets if t[1].startswith(self.fake.base_url + "/v1/")]
                storage = [t for t in targets if t[1].startswith(self.fake.storage_url + "/")]
                self.assertEqual(len(api) + len(storage), len(targets), targets)
                self.assertEqual([m for m, _ in api], ["POST", "POST"])      # presign, confirm
                self.assertEqual([m for m, _ in storage], ["PUT"])
                self.assertIn("X-Amz-Signature=", storage[0][1])
                for _method, target, headers in self.proxy.seen:
                    if target.startswith(self.fake.storage_url):
                        self.assertNotIn("authorization", headers)
                    if "@" in value:
                        self.assertEqual(headers.get("proxy-authorization"),
                                         "Basic bWU6c0BjcmV0")   # me:s@cret
                    else:
                        self.assertNotIn("proxy-authorization", headers)
                # And the fake got them from the proxy, in origin form.
                self.assertTrue(all(r.path.startswith("/") for r in self.fake.log))

    def test_no_proxy_bypasses_the_proxy_for_the_hosts_it_names(self) -> None:
        for name in ("NO_PROXY", "no_proxy"):
            with self.subTest(name=name):
                os.environ.update({"HTTP_PROXY": self.proxy.url, name: "localhost,127.0.0.1"})
                self.addCleanup(os.environ.pop, name, None)
                self.upload()
                os.environ.pop(name)
                self.assertEqual(self.proxy.seen, [])

    def test_https_proxy_is_not_used_for_plain_http(self) -> None:
        os.environ["HTTPS_PROXY"] = self.proxy.url
        self.upload()
        self.assertEqual(self.proxy.seen, [])


class TestHttps(FakeTestCase):
    """HTTPS in front of the fake (a TLS relay per plane) with a certificate
    from a CA made for the test."""

    certs = ""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        if shutil.which("openssl") is None:
            raise unittest.SkipTest("no openssl command to make a test certificate")
        cls.certs = tempfile.mkdtemp(prefix="fileslink-ca-")
        try:
            cls._make_certificates(cls.certs)
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(cls.certs, True)
            raise unittest.SkipTest("openssl could not make a test certificate: %s" % exc) from None

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.certs, True)
        super().tearDownClass()

    @staticmethod
    def _make_certificates(d: str) -> None:
        """ca.pem (a CA), server.pem + server.key (for IP 127.0.0.1, signed by
        the CA), with the extensions that 3.13's VERIFY_X509_STRICT wants."""
        def write(name: str, text: str) -> str:
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(text)
            return path

        ca_cnf = write("ca.cnf", "[req]\ndistinguished_name = dn\nprompt = no\n"
                       "x509_extensions = ext\n[dn]\nCN = fileslink test CA\n[ext]\n"
                       "basicConstraints = critical, CA:TRUE\n"
                       "keyUsage = critical, keyCertSign, cRLSign\n"
                       "subjectKeyIdentifier = hash\n")
        leaf_cnf = write("leaf.cnf", "[req]\ndistinguished_name = dn\nprompt = no\n"
                         "[dn]\nCN = 127.0.0.1\n[ext]\nbasicConstraints = critical, CA:FALSE\n"
                         "keyUsage = critical, digitalSignature, keyEncipherment\n"
                         "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n"
                         "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n")
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for cmd in (["req", "-x509", "-new", "-config", ca_cnf] + key
                    + ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
                    ["req", "-new", "-config", leaf_cnf] + key
                    + ["-keyout", "server.key", "-out", "server.csr"],
                    ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                     "-set_serial", "4660", "-days", "2", "-extfile", leaf_cnf, "-extensions",
                     "ext", "-out", "server.pem"]):
            subprocess.run(["openssl"] + cmd, cwd=d, check=True, timeout=30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def setUp(self) -> None:
        super().setUp()
        self.ca = os.path.join(self.certs, "ca.pem")
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(os.path.join(self.certs, "server.pem"),
                               os.path.join(self.certs, "server.key"))
        api_port = int(self.fake.base_url.rsplit(":", 1)[1])
        storage_port = int(self.fake.storage_url.rsplit(":", 1)[1])
        self.api = _TlsRelay(server, api_port)
        self.addCleanup(self.api.stop)
        self.storage = _TlsRelay(server, storage_port)
        self.addCleanup(self.storage.stop)
        self.base_url = "https://127.0.0.1:%d" % self.api.port
        self.fake.storage_url = "https://127.0.0.1:%d" % self.storage.port  # presigned URLs
        self.data = pseudo_random_bytes(50000, seed=11)

    def trusting(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def test_default_context_refuses_the_server_with_a_certificate_error(self) -> None:
        client = self.client(base_url=self.base_url)
        with self.assertRaises(fileslink.FilesLinkError) as caught:
            client.upload(self.data, self.fake.folder_id, name="x.bin")
        self.assertIn("certificate", str(caught.exception).lower())
        self.assertEqual(self.fake.log, [])

    def test_certificate_error_is_not_retried(self) -> None:
        # A certificate the client refuses will be refused again: retrying only
        # delays the message (several seconds with the default Retry).
        client = self.client(base_url=self.base_url,
                             retry=fileslink.Retry(attempts=4, backoff=0.01, max_backoff=0.01))
        with self.assertRaises(fileslink.FilesLinkError):
            client.list_files(self.fake.folder_id)
        self.assertEqual(self.api.handshakes, 1)

    def test_client_with_a_context_trusting_the_ca_uploads(self) -> None:
        client = self.client(base_url=self.base_url, ssl_context=self.trusting(),
                             multipart_threshold=6 * MiB)
        small = client.upload(self.data, self.fake.folder_id, name="s.bin")
        big_data = pseudo_random_bytes(7 * MiB, seed=12)
        big = client.upload(big_data, self.fake.folder_id, name="b.bin")
        self.assertEqual(self.fake.files[small.id].data, self.data)
        self.assertEqual(self.fake.files[big.id].data, big_data)
        self.assertTrue(big.multipart)
        self.assertEqual(self.api.refused + self.storage.refused, 0)
        self.assertGreater(self.storage.handshakes, 0)   # the bytes went through TLS too

    def test_plain_http_presigned_url_is_refused_under_an_https_base(self) -> None:
        # Even to loopback: the base is https, so file bytes go encrypted or
        # not at all (https presigned URLs are taken: the test above). The URL
        # points at a listener nothing may reach.
        port, was_connected = self.listener()
        url = "http://127.0.0.1:%d/bucket/key?X-Amz-Signature=abc" % port
        self.fake.inject("api", status=200, path_contains=self.presign_path(), body={
            "success": True, "urls": [{"id": "file-1", "url": url, "s3Key": "k/file-1"}]})
        client = self.client(base_url=self.base_url, ssl_context=self.trusting())
        with self.assertRaises(fileslink.ProtocolError) as cm:
            client.upload(self.data, self.fake.folder_id, name="x.bin")
        self.assertIn("unencrypted", str(cm.exception))
        self.assertNotIn("abc", str(cm.exception))
        self.assertFalse(was_connected())
        self.assertEqual(self.storage.handshakes, 0)
        self.assertEqual([r.path for r in self.fake.log], [self.presign_path()])

    def test_cli_ca_bundle_adds_the_ca_to_the_trust_store(self) -> None:
        os.environ.update(FILESLINK_KEY=self.fake.api_key, FILESLINK_BASE_URL=self.base_url)
        path = os.path.join(self.tmp, "c.bin")
        with open(path, "wb") as f:
            f.write(self.data)
        code, out, err = self.cli("upload", path, "--quiet", "--ca-bundle", self.ca, "--json",
                                  "--folder", self.fake.folder_id)
        self.assertEqual(code, 0, err)
        (record,) = self.json_lines(out)
        self.assertEqual(self.fake.files[record["id"]].data, self.data)

    def test_ssl_cert_file_in_the_environment_is_honoured(self) -> None:
        code = ("import sys, fileslink; c = fileslink.Client(api_key=sys.argv[1], "
                "base_url=sys.argv[2]); print(c.upload(sys.argv[3].encode(), sys.argv[4], "
                "name='e.txt').id)")
        child = self.run_child("-c", code, self.fake.api_key, self.base_url, "via SSL_CERT_FILE",
                               self.fake.folder_id, env=self.child_env(SSL_CERT_FILE=self.ca))
        self.assertEqual(child.returncode, 0, child.stderr)
        file_id = child.stdout.decode().strip()
        self.assertEqual(self.fake.files[file_id].data, b"via SSL_CERT_FILE")

    def test_https_goes_through_a_connect_proxy_as_an_opaque_tunnel(self) -> None:
        proxy = _Proxy()
        self.addCleanup(proxy.stop)
        os.environ["HTTPS_PROXY"] = proxy.url
        client = self.client(base_url=self.base_url, ssl_context=self.trusting())
        f = client.upload(self.data, self.fake.folder_id, name="t.bin")
        client.close()
        self.assertEqual(self.fake.files[f.id].data, self.data)
        self.assertEqual({(m, t) for m, t, _ in proxy.seen},
                         {("CONNECT", "127.0.0.1:%d" % self.api.port),
                          ("CONNECT", "127.0.0.1:%d" % self.storage.port)})
        for _, _, headers in proxy.seen:
            self.assertNotIn("authorization", headers)


class TestLibraryInAProgram(FakeTestCase):

    def test_one_client_shared_by_four_threads_uploads_every_file_intact(self) -> None:
        client = self.client(max_workers=4)
        start = threading.Barrier(4)
        errors: List[BaseException] = []
        sent: Dict[str, bytes] = {}

        def work(t: int) -> None:
            try:
                start.wait(5)
                for i in range(5):
                    name, data = "t%d-%d.bin" % (t, i), pseudo_random_bytes(20000 + 1000 * i, t * 10 + i)
                    sent[name] = data
                    if i % 2:
                        path = os.path.join(self.tmp, name)
                        with open(path, "wb") as f:
                            f.write(data)
                        client.upload(path, self.fake.folder_id)
                    else:
                        client.upload(data, self.fake.folder_id, name=name)
            except BaseException as exc:   # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        got = {f.name: f.data for f in self.fake.files.values() if f.uploaded}
        self.assertEqual(len(got), 20)
        self.assertEqual(got, sent)

    def test_library_adds_no_handler_and_prints_nothing(self) -> None:
        logger = logging.getLogger("fileslink")
        root_handlers = list(logging.getLogger().handlers)
        self.fake.inject("storage", status=503, headers={"Retry-After": "0"})  # logs a retry
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            client = self.client(multipart_threshold=6 * MiB)
            client.upload(b"x" * 1000, self.fake.folder_id, name="a.txt")
            client.upload(pseudo_random_bytes(7 * MiB), self.fake.folder_id, name="b.bin")
            client.upload_many([("c.txt", b"c"), ("d.txt", b"d")], self.fake.folder_id)
            with self.assertRaises(fileslink.UploadManyError):   # failures are raised, not printed
                client.upload_many([os.path.join(self.tmp, "missing")], self.fake.folder_id)
        self.assertEqual((out.getvalue(), err.getvalue()), ("", ""))
        self.assertEqual(logger.handlers, [])
        self.assertEqual(logging.getLogger().handlers, root_handlers)

    def test_debug_log_shows_each_call_with_the_key_redacted(self) -> None:
        self.fake.inject("api", status=503, headers={"Retry-After": "0"},
                         body={"success": False, "message": "busy; key=%s" % self.fake.api_key})
        with self.assertLogs("fileslink", logging.DEBUG) as logs:
            self.client().upload(b"hello", self.fake.folder_id, name="h.txt")
        text = "\n".join(logs.output)
        self.assertNotIn(self.fake.api_key, text)
        self.assertRegex(text, r"POST /v1/files/%s: .*503.*; try 2 of 3 in \d" % self.fake.folder_id)
        self.assertRegex(text, r"POST /v1/files/%s -> 200 \(try 2" % self.fake.folder_id)
        self.assertRegex(text, r"PUT h\.txt to http://127\.0\.0\.1:\d+/\S+\?\.\.\. -> 200 \(try 1")
        self.assertRegex(text, r"POST /v1/files/confirm-upload -> 200 \(try 1")
        self.assertNotIn("X-Amz-Signature", text)

    def test_a_rejected_key_leaves_no_file_open(self) -> None:
        paths = [self.make_file("k%d.txt" % i, 2048)[0] for i in range(3)]
        client = self.client(api_key="fl_wrong_key")
        multipart = self.client(api_key="fl_wrong_key", multipart_threshold=1024)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for call in (lambda: client.upload_many(paths, self.fake.folder_id),      # presign
                         lambda: multipart.upload_many(paths, self.fake.folder_id),   # initiate
                         lambda: client.upload(paths[0], self.fake.folder_id)):
                try:
                    call()
                except fileslink.AuthError:
                    pass
            gc.collect()
        self.assertEqual([str(w.message) for w in caught
                          if issubclass(w.category, ResourceWarning)], [])

    def test_upload_can_be_awaited_from_asyncio_in_a_thread(self) -> None:
        client = self.client()
        paths = [self.make_file("as%d.bin" % i, 30000, seed=i)[0] for i in range(2)]

        async def both() -> List[Any]:
            if hasattr(asyncio, "to_thread"):
                return list(await asyncio.gather(*[
                    asyncio.to_thread(client.upload, p, self.fake.folder_id) for p in paths]))
            from concurrent.futures import ThreadPoolExecutor   # 3.8: no to_thread
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(2) as pool:
                return list(await asyncio.gather(*[
                    loop.run_in_executor(pool, client.upload, p, self.fake.folder_id)
                    for p in paths]))

        results = asyncio.run(both())
        self.assertEqual([r.name for r in results], ["as0.bin", "as1.bin"])
        for r in results:
            self.assertEqual(self.fake.files[r.id].data, pseudo_random_bytes(30000, seed=int(r.name[2])))


class TestVendoring(FakeTestCase):

    def test_fileslink_py_alone_runs_in_isolated_mode_without_site_packages(self) -> None:
        source = os.path.abspath(fileslink.__file__)
        vendor = os.path.join(self.tmp, "vendor")
        os.mkdir(vendor)
        shutil.copy(source, vendor)
        code = "\n".join([
            "import sys",
            "sys.path.insert(0, sys.argv[1])",
            "import fileslink, os",
            "assert os.path.dirname(fileslink.__file__) == sys.argv[1], fileslink.__file__",
            "assert sys.flags.isolated and sys.flags.no_site",
            "c = fileslink.Client(api_key=sys.argv[2], base_url=sys.argv[3])",
            "print(c.upload(b'vendored bytes', sys.argv[4], name='v.txt').id)",
            "print(sorted(m for m, mod in sys.modules.items()",
            "             if 'site-packages' in (getattr(mod, '__file__', None) or '')))",
        ])
        child = self.run_child("-I", "-S", "-c", code, vendor, self.fake.api_key,
                               self.fake.base_url, self.fake.folder_id, cwd=vendor)
        self.assertEqual(child.returncode, 0, child.stderr)
        file_id, third_party = child.stdout.decode().splitlines()
        self.assertEqual(self.fake.files[file_id].data, b"vendored bytes")
        self.assertEqual(third_party, "[]")

    def test_the_licence_text_is_inside_the_file(self) -> None:
        with open(fileslink.__file__, encoding="utf-8") as f:
            head = f.read(4000)
        self.assertIn("MIT License", head)
        self.assertIn("Permission is hereby granted, free of charge", head)
        self.assertIn('THE SOFTWARE IS PROVIDED "AS IS"', head)


class TestProcessesAndNetworks(PartsCase):
    """fork(), few descriptors, slow callbacks, NO_PROXY networks."""

    def test_a_forked_child_never_uses_the_parents_connections(self) -> None:
        accepted: List[int] = []
        real = _Handler.setup

        def counting(handler: Any) -> None:
            accepted.append(handler.server.server_address[1])
            real(handler)

        client = self.client()
        client.upload(b"warm", self.fake.folder_id, name="warm.txt")  # pools two connections
        child_data, parent_data = pseudo_random_bytes(4096, 71), pseudo_random_bytes(4096, 72)
        with mock.patch.object(_Handler, "setup", counting), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12: fork with threads
            pid = os.fork()
            if pid == 0:  # the child: one upload through the inherited Client
                code = 1
                try:
                    client.upload(child_data, self.fake.folder_id, name="child.bin")
                    code = 0
                finally:
                    os._exit(code)
            parent = client.upload(parent_data, self.fake.folder_id, name="parent.bin")
            _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode")
                         else status >> 8, 0)
        self.assertEqual(len(accepted), 2)  # the child's own: API and storage; the parent reused
        self.assert_stored(parent, parent_data)
        (child,) = [f for f in self.fake.files.values() if f.name == "child.bin"]
        self.assertEqual(child.data, child_data)

    def test_workers_beyond_the_open_file_limit_are_capped_not_failed(self) -> None:
        folder = os.path.join(self.tmp, "many")
        os.mkdir(folder)
        for i in range(300):
            with open(os.path.join(folder, "f%03d" % i), "wb") as f:
                f.write(b"%d" % i)
        script = _CHILD_UPLOAD.replace(
            "result = fileslink.Client(**options).upload(sys.argv[1], **kwargs)",
            "import os; result = fileslink.Client(**options).upload_many(sorted("
            "os.path.join(sys.argv[1], n) for n in os.listdir(sys.argv[1])), **kwargs)[0]")

        def low_limit() -> None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

        child = subprocess.run(
            [sys.executable, "-c", script, folder, json.dumps({
                "api_key": self.fake.api_key, "base_url": self.fake.base_url,
                "max_workers": 2000}), json.dumps({"folder_id": self.fake.folder_id})],
            capture_output=True, text=True, timeout=60, preexec_fn=low_limit)
        self.assertEqual(child.returncode, 0, child.stdout + child.stderr)
        self.assertEqual(sum(f.uploaded for f in self.fake.files.values()), 300)

    def test_a_slow_progress_callback_does_not_hold_the_other_workers(self) -> None:
        path, data = self.make_file("two.bin", 2 * MiB, seed=73)
        second = threading.Event()
        calls: List[int] = []

        def progress(name: str, sent: int, total: int) -> None:
            calls.append(sent)
            if len(calls) == 1:  # block the first report until another one arrives
                self.assertTrue(second.wait(10), "progress reports are serialized")
            else:
                second.set()

        client = self.client(multipart_threshold=MiB, max_workers=2)
        self.assert_stored(client.upload(path, self.fake.folder_id, progress=progress), data)

    def test_no_proxy_networks_bypass_the_proxy_and_a_refusing_proxy_is_named(self) -> None:
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        dead = port.getsockname()[1]
        port.close()  # nothing listens there: a proxy that refuses connections
        os.environ["HTTP_PROXY"] = "http://127.0.0.1:%d" % dead
        os.environ["NO_PROXY"] = "10.0.0.0/8,127.0.0.0/8"
        result = self.client().upload(b"direct", self.fake.folder_id, name="d.txt")
        self.assert_stored(result, b"direct")
        os.environ["NO_PROXY"] = "10.0.0.0/8"
        with self.assertRaises(fileslink.APIError) as caught:
            self.client(retry=fileslink.Retry(attempts=1)).upload(b"x", self.fake.folder_id,
                                                                  name="p.txt")
        self.assertIn("cannot connect to the proxy 127.0.0.1:%d" % dead, str(caught.exception))


HERE = os.path.dirname(os.path.abspath(fileslink.__file__))


# ---------------------------------------------------------------------------
# README.md: every code block runs against the fake, so the docs cannot rot
# ---------------------------------------------------------------------------

_README_FENCE = re.compile(
    r"(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```",
    re.DOTALL)


def readme_blocks():
    """(language, code, marker) for each fenced block of README.md."""
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return [(m.group("lang"), m.group("code"), m.group("marker") or "")
            for m in _README_FENCE.finditer(text)]


class TestHostileEnvironments(CliCase):
    """Environments a hostile tester met outside the suite's paths: each test
    failed on the client it was written against (helper-break, 2026-12-02)."""

    fake_options = {"min_part_size": 64 * 1024, "part_size": 64 * 1024}

    def run_cli(self, *argv: str, preexec_fn: Optional[Callable[[], None]] = None,
                stderr: Any = subprocess.PIPE) -> "subprocess.CompletedProcess[bytes]":
        """`python -m fileslink ARGV` in a child set up by preexec_fn (30 s bound)."""
        return subprocess.run([sys.executable, "-m", "fileslink"] + list(argv),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                              cwd=HERE, env=dict(os.environ, PYTHONPATH=""), timeout=30,
                              preexec_fn=preexec_fn)

    @unittest.skipUnless(sys.platform.startswith("linux"), "RLIMIT_NOFILE and /proc/self/fd")
    def test_sixty_files_upload_under_an_open_file_limit_of_40(self) -> None:
        # `ulimit -n 40`: the workers are capped, but a batch of 50 files is
        # held open while it is presigned, and then no socket can be opened.
        top = self.tree(*["f%02d.bin" % i for i in range(60)], size=100)

        def low_limit() -> None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

        proc = self.run_cli("upload", top, preexec_fn=low_limit)
        self.assertEqual(proc.returncode, 0, proc.stderr.decode()[-500:])
        self.assertEqual(len(self.stored()), 60)

    def test_a_retry_after_date_past_year_9999_fails_no_other_file(self) -> None:
        # One storage answer with a Retry-After date datetime cannot hold
        # (ValueError from calendar.timegm) must not crash the whole run.
        top = self.tree("a.txt", "b.txt", "c.txt")
        self.fake.inject("storage", status=503,
                         headers={"Retry-After": "Fri, 01 Jan 10000 00:00:00 GMT"})
        proc = self.run_cli("upload", top, "--workers", "1")
        self.assertNotIn(b"Traceback", proc.stderr, proc.stderr.decode()[-500:])
        self.assertGreaterEqual(len(self.stored()), 2)
        for value in ("Fri, 01 Jan 10000 00:00:00 GMT", "Mon, 01 Jan 99999999999 00:00:00 GMT"):
            fileslink._parse_retry_after(value)  # a number or None, never an exception

    def test_a_journal_of_an_upload_the_service_completed_is_not_pending_for_ever(self) -> None:
        # complete is carried out but its answer lost, then 500s: the service
        # holds the file, the journal stays. (A SIGTERM that lands as complete
        # answers leaves the same journal.) Nothing is left to abort.
        path, data = self.make_file("big.bin", 320 * 1024)
        self.fake.inject("api", lost=True, path_contains="/multipart/complete")
        self.fake.inject("api", status=500, times=10, path_contains="/multipart/complete",
                         headers={"Retry-After": "0"})          # the tries come at once
        proc = self.run_cli("upload", path, "--resume", "--threshold", "128K")
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertEqual(self.stored(), {"big.bin": data})
        self.fake.clear_faults()
        skip = self.run_cli("upload", path, "--resume", "--threshold", "128K", "--skip-existing")
        self.assertEqual(skip.returncode, 0, skip.stderr)
        abort = self.run_cli("abort", "--all")
        self.assertEqual(abort.returncode, 0, abort.stderr)
        self.assertEqual(self.run_cli("pending").stdout, b"")

    def test_a_kept_upload_is_aborted_when_the_rerun_sends_the_file_in_one_put(self) -> None:
        # `upload big --resume --threshold 128K` fails and keeps its upload;
        # the same file again with the default threshold goes in one PUT.
        # README: a journal that is not continued is aborted and dropped.
        path, data = self.make_file("big.bin", 320 * 1024)
        self.once_answered("storage", lambda: self.fake.inject("storage", status=400))
        proc = self.run_cli("upload", path, "--resume", "--threshold", "128K", "--workers", "1")
        self.fake.on_request = None
        self.assertEqual(proc.returncode, 1, proc.stderr)
        (kept,) = self.fake.multipart.values()
        proc = self.run_cli("upload", path, "--resume")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(self.stored(), {"big.bin": data})
        self.assertEqual(kept.state, "aborted", "its stored parts are billed, unlisted by ls")
        self.assertEqual(self.run_cli("pending").stdout, b"")

    @unittest.skipUnless(hasattr(signal, "SIGXFSZ"), "RLIMIT_FSIZE")
    def test_a_journal_that_cannot_be_written_after_initiate_leaves_nothing_open(self) -> None:
        # A full disk under FILESLINK_STATE_DIR, met once initiate answered:
        # the upload is neither journaled (pending is empty) nor aborted.
        path, _ = self.make_file("big.bin", 320 * 1024)

        def small_files() -> None:
            import resource
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as ENOSPC would be
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

        proc = self.run_cli("upload", path, "--resume", "--threshold", "128K",
                            preexec_fn=small_files)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertEqual([u.state for u in self.fake.multipart.values()], ["aborted"],
                         "an open upload that `fileslink pending` does not list")
        self.assertRegex(proc.stderr.decode(), r"big\.bin: File too large \(writing the resume "
                         r"journal in .*state.*\)")

    @unittest.skipUnless(os.name == "posix", "closes a file descriptor")
    def test_a_closed_stderr_does_not_stop_the_other_files(self) -> None:
        # `2>&-` (some daemons): the error line for the missing path must not
        # end the run before any upload.
        top = self.tree("a.txt", "b.txt")
        missing = os.path.join(self.tmp, "missing.txt")
        proc = self.run_cli("upload", top, missing, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.close(2))
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(sorted(self.stored()), ["a.txt", "b.txt"])

    @unittest.skipUnless(os.name == "posix", "closes a file descriptor")
    def test_a_stdout_closed_from_the_start_ends_quietly_with_status_0(self) -> None:
        # `>&-`: README says a closed stdout ends the run quietly, status 0.
        top = self.tree("a.txt", "b.txt")
        proc = self.run_cli("upload", top, preexec_fn=lambda: os.close(1))
        self.assertNotIn(b"Traceback", proc.stderr, proc.stderr.decode()[-500:])
        self.assertEqual(proc.returncode, 0)

    def test_no_escape_sequence_from_an_argument_reaches_the_terminal(self) -> None:
        status, out, err = self.cli(*["rm", "x\x1b[31m", "\u202egnp"])
        self.assertEqual(status, 1)
        self.assertEqual(len(err.splitlines()), 2, err)
        self.assertNotRegex(err, "[\x1b\u202e]")

    @unittest.skipUnless(os.path.isdir("/dev/fd"), "/dev/fd")
    def test_process_substitution_needs_a_name_and_is_stored_whole_with_one(self) -> None:
        # `upload <(pg_dump db)` hands fileslink /dev/fd/63.
        read_end, write_end = os.pipe()
        with os.fdopen(write_end, "wb") as w:
            w.write(b"dump")
        self.addCleanup(os.close, read_end)
        path = "/dev/fd/%d" % read_end
        status, out, err = self.cli(*["upload", path])
        self.assertEqual((status, err), (1, "fileslink: error: %s: a pipe with a number for a "
                                            "name: give --name\n" % path))
        self.assertEqual(self.fake.log, [])
        status, out, err = self.cli(*["upload", path, "--name", "db.sql"])
        self.assertEqual(status, 0, err)
        self.assertEqual(self.stored(), {"db.sql": b"dump"})

    @unittest.skipUnless(os.path.exists("/proc/self/status"), "procfs")
    def test_a_proc_file_is_read_to_its_end_not_stored_empty(self) -> None:
        # procfs says size 0 and refuses to seek to the end.
        status, out, err = self.cli(*["upload", "/proc/self/status"])
        self.assertEqual(status, 0, err)
        self.assertTrue(self.stored()["status"].startswith(b"Name:"))

    @unittest.skipUnless(os.path.exists("/dev/full"), "/dev/full")
    def test_a_full_stdout_is_an_error_that_names_it(self) -> None:
        top = self.tree("a.txt", "b.txt")
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([sys.executable, "-m", "fileslink", "upload", top],
                                  stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE,
                                  cwd=HERE, env=dict(os.environ, PYTHONPATH=""), timeout=30)
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(proc.stderr.decode(),
                         "fileslink: error: standard output: No space left on device\n")

    @unittest.skipUnless(os.name == "posix", "closes a file descriptor")
    def test_dash_with_stdin_closed_is_one_error_line(self) -> None:
        proc = self.run_cli("upload", "-", "--name", "x.txt", preexec_fn=lambda: os.close(0))
        self.assertNotIn(b"Traceback", proc.stderr, proc.stderr.decode()[-500:])
        self.assertRegex(proc.stderr.decode(), r"^fileslink: error: ")

    @unittest.skipUnless(sys.platform.startswith("linux"), "a name of arbitrary bytes")
    def test_c1_control_characters_in_a_file_name_become_underscores(self) -> None:
        # U+009B is CSI to a terminal that honours 8-bit controls: `ls` and
        # the result line would carry an escape sequence.
        folder = os.path.join(self.tmp, "c1")
        os.mkdir(folder)
        with open(os.path.join(os.fsencode(folder), b"red\xc2\x9b31m.txt"), "wb") as f:
            f.write(b"x")
        proc = self.run_cli("upload", folder)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(sorted(self.stored()), ["red_31m.txt"])

    @unittest.skipUnless(os.name == "posix", "sends SIGINT")
    def test_two_ctrl_cs_back_to_back_still_abort_and_exit(self) -> None:
        # One Ctrl-C under a launcher that forwards it (npm/poetry run, tini,
        # a wrapper script) arrives twice, microseconds apart. The second
        # lands in the stop itself, before cancel is set: the abort is never
        # sent (the upload stays open) or the CLI hangs in
        # pool.shutdown(wait=True). A race: eight tries (about 0.3 s each).
        path, _ = self.make_file("big.bin", 1 * MiB)
        for attempt in range(8):
            self.fake.clear_faults()
            self.fake.inject("storage", delay=30)  # part 1 stalls: the upload cannot end by itself
            before = set(self.fake.multipart)
            proc = subprocess.Popen([sys.executable, "-c", _WORLD_CLI, "upload", path,
                                     "--threshold", "256K", "--workers", "2"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=HERE,
                                    env=dict(os.environ, PYTHONPATH=""))

            def twice(proc: "subprocess.Popen[bytes]" = proc) -> None:
                proc.send_signal(signal.SIGINT)
                time.sleep(0.0003)
                proc.send_signal(signal.SIGINT)
            self.once_answered("storage", twice)
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                self.fail("try %d: still running 15 s after two Ctrl-Cs" % (attempt + 1))
            finally:
                self.fake.on_request = None
            self.assertIn(proc.returncode, (130, -signal.SIGINT), err)
            (new,) = set(self.fake.multipart) - before
            self.assertEqual(self.fake.multipart[new].state, "aborted",
                             "try %d left the upload open: %s" % (attempt + 1, err.decode()))


class TestReadme(FakeTestCase):
    """The README's commands and code, as a new user would run them: in a
    directory holding the files they name, with the fake's key and folder."""

    def setUp(self):
        super().setUp()
        # A journal of --resume or pending goes here, never to ~/.cache.
        os.environ["FILESLINK_STATE_DIR"] = os.path.join(self.tmp, "state")
        self.work = os.path.join(self.tmp, "work")
        os.makedirs(os.path.join(self.work, "photos", "2024"))
        samples = {"report.pdf": 12288, "notes.txt": 6, "photos/beach.jpg": 300000,
                   "photos/2024/cat.png": 120000}
        for i, (name, size) in enumerate(sorted(samples.items())):
            with open(os.path.join(self.work, name), "wb") as f:
                f.write(pseudo_random_bytes(size, i))
        for name in ("fileslink.py", "test_fileslink.py"):
            shutil.copy(os.path.join(HERE, name), self.work)
        cafile = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
        if cafile and os.path.isfile(cafile):
            shutil.copy(cafile, os.path.join(self.work, "corp-ca.pem"))
        # `fileslink` and `python` on PATH are this checkout and this interpreter.
        bindir = os.path.join(self.tmp, "bin")
        os.makedirs(bindir)
        for command, target in (("fileslink", [sys.executable, os.path.join(HERE, "fileslink.py")]),
                                ("python", [sys.executable])):
            path = os.path.join(bindir, command)
            with open(path, "w") as f:
                f.write('#!/bin/sh\nexec %s "$@"\n' % " ".join("'%s'" % t for t in target))
            os.chmod(path, 0o755)
        self.file_id = self.client().upload(b"linked", self.fake.folder_id, name="x.txt").id
        self.env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
                        FILESLINK_KEY=self.fake.api_key, FILESLINK_BASE_URL=self.fake.base_url,
                        FILESLINK_FOLDER=self.fake.folder_id, PYTHONPATH="")

    def _substitute(self, code):
        for placeholder, value in (("your-api-key", self.fake.api_key),
                                   ("PROJECT_ID", self.fake.project_id),
                                   ("FOLDER_ID", self.fake.folder_id),
                                   ("FILE_ID", self.file_id)):
            code = code.replace(placeholder, value)
        return code

    def _run(self, argv, code, what):
        done = subprocess.run(argv, input=code, cwd=self.work, env=self.env, timeout=60,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)
        self.assertEqual(done.returncode, 0, "%s failed:\n%s\n--- output ---\n%s"
                         % (what, code, done.stdout))

    def _runnable(self, marker):
        if marker.startswith("skip"):
            return False
        if marker.startswith("python>=3.9") and sys.version_info < (3, 9):
            return False
        return True

    def test_the_readme_has_code_to_check(self):
        languages = [lang for lang, _, _ in readme_blocks()]
        self.assertGreaterEqual(languages.count("python"), 5)
        self.assertGreaterEqual(languages.count("console"), 5)

    def test_every_python_block_runs(self):
        for number, (lang, code, marker) in enumerate(readme_blocks(), 1):
            if lang != "python" or not self._runnable(marker):
                continue
            if "corp-ca.pem" in code and not os.path.exists(os.path.join(self.work, "corp-ca.pem")):
                continue  # no CA bundle on this machine to stand in for a corporate one
            with self.subTest(block=number):
                self._run([sys.executable, "-"], self._substitute(code), "README block %d" % number)

    def test_every_console_command_runs(self):
        for number, (lang, code, marker) in enumerate(readme_blocks(), 1):
            if lang != "console" or not self._runnable(marker):
                continue
            commands = [line[2:] for line in code.splitlines() if line.startswith("$ ")]
            script = "set -eu -o pipefail\n" + "\n".join(self._substitute(c) for c in commands)
            if "corp-ca.pem" in script and not os.path.exists(os.path.join(self.work, "corp-ca.pem")):
                continue
            with self.subTest(block=number):
                self._run(["bash"], script, "README block %d" % number)


# ---------------------------------------------------------------------------
# Shell entry points: `serve` and `demo`
# ---------------------------------------------------------------------------

def _serve(port: int, quiet: bool) -> int:
    def echo(r: Req) -> None:
        print("%-7s %-6s %s -> %s" % (r.plane, r.method, r.path, r.status or "reset"),
              file=sys.stderr, flush=True)

    fake = FakeFilesLink.for_serve(port)
    fake.on_request = None if quiet else echo
    fake.start()
    print("# A local fake of files.link is running (Ctrl-C stops it). Paste into your shell:")
    print("export FILESLINK_BASE_URL=%s" % fake.base_url)
    print("export FILESLINK_KEY=%s" % fake.api_key)
    print("export FILESLINK_FOLDER=%s" % fake.folder_id)
    if any(name.lower().endswith("_proxy") for name in os.environ):
        print("export NO_PROXY=127.0.0.1,localhost   # a proxy is configured: keep loopback off it")
    print("# project id: %s   object storage: %s" % (fake.project_id, fake.storage_url))
    print("# it keeps sizes and MD5s, not the bytes: public links and downloads answer 404/501",
          flush=True)
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
