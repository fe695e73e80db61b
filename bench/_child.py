"""One contestant of bench_fileslink.py, run in a child process of its own.

    python bench/_child.py KIND 'JSON params'

Prints one JSON line: {"wall": s, "cpu": s, "bytes": n, ...}. "wall" and "cpu"
cover the transfer only (after the imports), "cpu" being this process's user +
system time over all its threads; the parent adds the whole process's rusage
(os.wait4) around it. Only the standard library is imported at module level,
so each contestant's peak RSS carries its own library and nothing else.
"""
import json
import os
import resource
import sys
import time

MiB = 1024 * 1024
CTYPE = "application/octet-stream"   # declared at presign by the parent; the fake checks it


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _ssl_context(p):
    if not p.get("cafile"):
        return None
    import ssl
    return ssl.create_default_context(cafile=p["cafile"])


def peak_rss_mib():
    """This process's own high-water RSS. ru_maxrss cannot tell it: Linux carries
    the parent's peak across fork/vfork + exec into the child's ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None


def _check(status, what):
    if status != 200:
        raise SystemExit("%s answered HTTP %s" % (what, status))


# -- fileslink: the whole upload, presign + PUT(s) + confirm/complete ---------

def fileslink_upload(p):
    sys.path.insert(0, p["repo"])
    import fileslink
    client = fileslink.Client(api_key=p["api_key"], base_url=p["base_url"],
                              max_workers=p.get("workers", 8),
                              multipart_threshold=p["threshold"],
                              ssl_context=_ssl_context(p), checksum=p["checksum"])
    t0, c0 = time.perf_counter(), _cpu()
    f = client.upload(p["path"], p["folder"])
    t1, c1 = time.perf_counter(), _cpu()
    client.close()
    return {"wall": t1 - t0, "cpu": c1 - c0, "bytes": f.size, "multipart": getattr(f, "multipart", None)}


def fileslink_many(p):
    sys.path.insert(0, p["repo"])
    import fileslink
    paths = sorted(os.path.join(p["dir"], n) for n in os.listdir(p["dir"]))
    client = fileslink.Client(api_key=p["api_key"], base_url=p["base_url"],
                              max_workers=p.get("workers", 8))
    t0, c0 = time.perf_counter(), _cpu()
    done = client.upload_many(paths, p["folder"])
    t1, c1 = time.perf_counter(), _cpu()
    client.close()
    return {"wall": t1 - t0, "cpu": c1 - c0, "bytes": sum(f.size for f in done),
            "files": len(done)}


def fileslink_tiny(p):
    """upload_many over a generator of tiny in-memory files: nothing about the
    files not reached yet may be held, so peak RSS must not grow with their number."""
    sys.path.insert(0, p["repo"])
    import fileslink
    client = fileslink.Client(api_key=p["api_key"], base_url=p["base_url"],
                              max_workers=p.get("workers", 8))
    sources = (("t%05d.bin" % i, b"%05d" % i * 20) for i in range(p["n"]))
    t0, c0 = time.perf_counter(), _cpu()
    done = client.upload_many(sources, p["folder"])
    t1, c1 = time.perf_counter(), _cpu()
    client.close()
    return {"wall": t1 - t0, "cpu": c1 - c0, "files": len(done)}


# -- single PUTs to a URL the parent presigned --------------------------------

def put_requests(p):
    import requests          # the seed: requests.put(url, data=f)
    t0, c0 = time.perf_counter(), _cpu()
    with open(p["path"], "rb") as f:
        r = requests.put(p["url"], data=f, headers={"Content-Type": CTYPE},
                         verify=p.get("cafile") or True)
    _check(r.status_code, "requests PUT")
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": p["size"]}


def put_httpx(p):
    import httpx             # content=<file> streams 64 KiB reads with Content-Length
    ctx = _ssl_context(p)
    t0, c0 = time.perf_counter(), _cpu()
    with open(p["path"], "rb") as f:
        r = httpx.put(p["url"], content=f, headers={"Content-Type": CTYPE},
                      verify=ctx if ctx else True, timeout=120)
    _check(r.status_code, "httpx PUT")
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": p["size"]}


def put_urllib(p):
    import urllib.request    # a file body goes out in http.client's 8 KiB blocks
    ctx = _ssl_context(p)
    t0, c0 = time.perf_counter(), _cpu()
    with open(p["path"], "rb") as f:
        req = urllib.request.Request(p["url"], data=f, method="PUT", headers={
            "Content-Length": str(p["size"]), "Content-Type": CTYPE})
        with urllib.request.urlopen(req, context=ctx, timeout=120) as r:
            r.read()
            status = r.status
    _check(status, "urllib PUT")
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": p["size"]}


def put_httpclient(p):
    """http.client with 1 MiB writes: what the standard library can do."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(p["url"])
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=_ssl_context(p))
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port)
    buf = bytearray(p.get("block", MiB))
    t0, c0 = time.perf_counter(), _cpu()
    conn.putrequest("PUT", u.path + "?" + u.query, skip_accept_encoding=True)
    conn.putheader("Content-Length", str(p["size"]))
    conn.putheader("Content-Type", CTYPE)
    conn.endheaders()
    with open(p["path"], "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            conn.sock.sendall(memoryview(buf)[:n])
    r = conn.getresponse()
    r.read()
    _check(r.status, "http.client PUT")
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": p["size"]}


def put_streams(p):
    """put_httpclient's loop in N threads, each PUTting its own slice of the
    file to its own URL: what N parallel streams cost this machine, the raw
    counterpart of a multipart upload with N workers."""
    import http.client
    import threading
    from urllib.parse import urlsplit
    urls, n = p["urls"], len(p["urls"])
    step = -(-p["size"] // n)
    errors = []

    def stream(i):
        u = urlsplit(urls[i])
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(u.hostname, u.port, context=_ssl_context(p))
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port)
        start, stop = i * step, min(p["size"], (i + 1) * step)
        conn.putrequest("PUT", u.path + "?" + u.query, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(stop - start))
        conn.putheader("Content-Type", CTYPE)
        conn.endheaders()
        buf = memoryview(bytearray(MiB))
        fd = os.open(p["path"], os.O_RDONLY)
        try:
            while start < stop:
                k = os.preadv(fd, [buf[:min(MiB, stop - start)]], start)
                conn.sock.sendall(buf[:k])
                start += k
        finally:
            os.close(fd)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            errors.append(r.status)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
    t0, c0 = time.perf_counter(), _cpu()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors or len(threads) != n:
        raise SystemExit("parallel PUTs failed: %s" % errors)
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": p["size"]}


def put_sendfile(p):
    """Hand-written request head, then socket.sendfile: the wire ceiling."""
    import http.client
    import socket
    from urllib.parse import urlsplit
    u = urlsplit(p["url"])
    t0, c0 = time.perf_counter(), _cpu()
    sock = socket.create_connection((u.hostname, u.port))
    head = ("PUT %s?%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n"
            "Content-Type: %s\r\nConnection: close\r\n\r\n"
            % (u.path, u.query, u.netloc, p["size"], CTYPE))
    sock.sendall(head.encode("ascii"))
    with open(p["path"], "rb") as f:
        sock.sendfile(f)
    r = http.client.HTTPResponse(sock, method="PUT")
    r.begin()
    r.read()
    sock.close()
    _check(r.status, "sendfile PUT")
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": p["size"]}


# -- the seed's three-call loop (many files) ----------------------------------

def seed_loop(p):
    """The blog post's upload(path), verbatim in shape: no session, three calls.

    With requests as the seed has it; with urllib when requests is missing."""
    base, key, folder = p["base_url"], p["api_key"], p["folder"]
    if p["lib"] == "requests":
        import requests

        def upload(path):
            meta_res = requests.post(f"{base}/v1/files/{folder}", headers={"Authorization": key},
                                     json={"filesMetadata": [{"name": os.path.basename(path),
                                                              "size": os.path.getsize(path)}]})
            meta_res.raise_for_status()
            entry = meta_res.json()["urls"][0]
            with open(path, "rb") as f:
                put_res = requests.put(entry["url"], data=f)
            put_res.raise_for_status()
            confirm_res = requests.post(f"{base}/v1/files/confirm-upload",
                                        headers={"Authorization": key}, json={"ids": [entry["id"]]})
            confirm_res.raise_for_status()
            return os.path.getsize(path)
    else:
        import urllib.request

        def call(url, obj):
            req = urllib.request.Request(url, data=json.dumps(obj).encode(), method="POST", headers={
                "Authorization": key, "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())

        def upload(path):
            size = os.path.getsize(path)
            entry = call(f"{base}/v1/files/{folder}",
                         {"filesMetadata": [{"name": os.path.basename(path), "size": size}]})["urls"][0]
            with open(path, "rb") as f:
                req = urllib.request.Request(entry["url"], data=f.read(), method="PUT",
                                             headers={"Content-Type": CTYPE})
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
            call(f"{base}/v1/files/confirm-upload", {"ids": [entry["id"]]})
            return size

    paths = sorted(os.path.join(p["dir"], n) for n in os.listdir(p["dir"]))
    t0, c0 = time.perf_counter(), _cpu()
    if p["threads"] > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(p["threads"]) as ex:
            sizes = list(ex.map(upload, paths))
    else:
        sizes = [upload(path) for path in paths]
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": sum(sizes),
            "files": len(sizes)}


def read_file(p):
    """Read a file once into a reused buffer (the huge scenario's warm-up)."""
    buf = bytearray(4 * MiB)
    n = 0
    t0, c0 = time.perf_counter(), _cpu()
    with open(p["path"], "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            n += k
    return {"wall": time.perf_counter() - t0, "cpu": _cpu() - c0, "bytes": n}


# -- boto3 against moto's S3 server (memory scenario) -------------------------

def _s3(p):
    import boto3
    return boto3.client("s3", endpoint_url=p["endpoint"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def boto3_setup(p):
    _s3(p).create_bucket(Bucket=p["bucket"])
    return {"wall": 0.0, "cpu": 0.0, "bytes": 0}


def boto3_upload(p):
    from boto3.s3.transfer import TransferConfig
    s3 = _s3(p)
    cfg = TransferConfig(max_concurrency=p["workers"], multipart_threshold=8 * MiB)
    t0, c0 = time.perf_counter(), _cpu()
    s3.upload_file(p["path"], p["bucket"], p["key"], Config=cfg)
    t1, c1 = time.perf_counter(), _cpu()
    s3.delete_object(Bucket=p["bucket"], Key=p["key"])   # moto keeps objects in memory
    return {"wall": t1 - t0, "cpu": c1 - c0, "bytes": p["size"]}


# -- cold start: whole programs for `python -c`, so nothing but their own imports load

SEED_REQUESTS = """
import os, requests
BASE, KEY, FOLDER = os.environ["FILESLINK_BASE_URL"], os.environ["FILESLINK_KEY"], os.environ["FILESLINK_FOLDER"]
path = os.environ["BENCH_PATH"]
r = requests.post(f"{BASE}/v1/files/{FOLDER}", headers={"Authorization": KEY},
                  json={"filesMetadata": [{"name": os.path.basename(path), "size": os.path.getsize(path)}]})
r.raise_for_status()
entry = r.json()["urls"][0]
with open(path, "rb") as f:
    requests.put(entry["url"], data=f).raise_for_status()
requests.post(f"{BASE}/v1/files/confirm-upload", headers={"Authorization": KEY},
              json={"ids": [entry["id"]]}).raise_for_status()
"""
SEED_URLLIB = """
import json, os, urllib.request
BASE, KEY, FOLDER = os.environ["FILESLINK_BASE_URL"], os.environ["FILESLINK_KEY"], os.environ["FILESLINK_FOLDER"]
path = os.environ["BENCH_PATH"]
def call(url, obj):
    req = urllib.request.Request(url, json.dumps(obj).encode(), {"Authorization": KEY, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())
entry = call(f"{BASE}/v1/files/{FOLDER}", {"filesMetadata": [{"name": os.path.basename(path), "size": os.path.getsize(path)}]})["urls"][0]
with open(path, "rb") as f:
    urllib.request.urlopen(urllib.request.Request(entry["url"], f.read(), {"Content-Type": "application/octet-stream"}, method="PUT")).read()
call(f"{BASE}/v1/files/confirm-upload", {"ids": [entry["id"]]})
"""
COLD_FILESLINK = "import fileslink, os; fileslink.upload(os.environ['BENCH_PATH'])"
COLD_BOTO3 = """
import boto3, os
s3 = boto3.client("s3", endpoint_url=os.environ["BENCH_S3"], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.upload_file(os.environ["BENCH_PATH"], "bench", "cold.bin")
"""


if __name__ == "__main__":
    out = globals()[sys.argv[1]](json.loads(sys.argv[2]))
    out["rss_mib"] = peak_rss_mib()
    sys.stdout.write(json.dumps(out) + "\n")
