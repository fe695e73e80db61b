#!/usr/bin/env python3
"""Benchmark fileslink against curl, requests, httpx, urllib and boto3 (issue 3).

    python bench/bench_fileslink.py [--quick] [--only big,many,import,memory,huge]
                                    [--size 1G] [--rounds N] [--huge] [--wait-quiet S] [--json-out FILE]

Servers: the fake from ../test_fileslink.py in discard mode (bodies read and
dropped), over HTTP and, with a certificate made for the run by `openssl`, over
HTTPS. Every contestant runs in a child process of its own (bench/_child.py, or
curl), the contestants of a scenario alternate round by round (A B C, B C A, ...),
and the tables show medians. Per run: wall and CPU seconds of the transfer, the
whole child's CPU (os.wait4 rusage), its peak RSS, MiB/s, and the CPU the fake
spent meanwhile (this process's rusage: the sink's side). fileslink's side uses
the standard library only; each peer runs only if installed, and the output
says what was skipped.
"""
import argparse
import atexit
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import _child     # bench/_child.py: what runs in the children

MiB = 1024 * 1024
GiB = 1024 * MiB
HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_child.py")
CTYPE = "application/octet-stream"

# The target table: key -> (figure, target text, threshold, "min"|"max").
TARGETS = {
    "http_tput": ("big, HTTP, single-part throughput", ">= 0.9 x curl", 0.9, "min"),
    "https_tput": ("big, HTTPS, single-part throughput", ">= 0.85 x curl", 0.85, "min"),
    "multipart": ("big, multipart (8 workers) throughput", ">= 0.9 x fileslink single-part", 0.9, "min"),
    "cpu": ("big, single-part, client CPU s per GiB", "<= 1.5 x curl", 1.5, "max"),
    "many_seq": ("many: wall time", ">= 20 x faster than seed loop", 20.0, "min"),
    "many_thr": ("many: wall time", ">= 3 x faster than seed loop, 8 threads", 3.0, "min"),
    "many_calls": ("many: API calls for 300 files", "<= 12", 12, "max"),
    "imp_http": ("import fileslink", "<= 1.15 x import http.client", 1.15, "max"),
    "imp_req": ("import fileslink", "<= 0.35 x import requests", 0.35, "max"),
    "rss": ("peak RSS, 1 GiB multipart, 8 workers", "<= 40 MiB", 40.0, "max"),
    "rss_boto": ("peak RSS, 1 GiB multipart, 8 workers", "<= 0.5 x boto3", 0.5, "max"),
    # Not in the table; its Scale section asks for flat memory on the 20 GiB upload.
    "flat": ("peak RSS, huge multipart, checksum=False", "flat: <= 1.1 x the 1 GiB run's", 1.1, "max"),
}


def log(msg=""):
    print(msg, flush=True)


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError("size like 1G, 256M, 1GiB: %r" % text)
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def have(module):
    return importlib.util.find_spec(module) is not None


def version_of(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


# -- child processes -----------------------------------------------------------

class Child:
    """Runs one child to completion, bounded in time, and reads its rusage.

    os.wait4 gives this child's own CPU time; stdout goes to a file, not a
    pipe, so reaping with wait4 cannot deadlock on a full pipe. Peak RSS needs
    care: Linux carries the parent's high-water mark across fork/vfork + exec
    into the child's ru_maxrss, so every child would read as big as this
    process (~40 MiB). Python children report their own VmHWM; for the others
    (curl) a thread samples /proc/PID/status VmHWM, a monotonic high-water
    mark, until the child exits."""

    def __init__(self, tmp):
        self.out_path = os.path.join(tmp, "child.out")
        self.err_path = os.path.join(tmp, "child.err")

    def run(self, argv, timeout, env=None, cwd=None):
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            s0 = _self_cpu()
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd,
                                 stdin=subprocess.DEVNULL)
            timer = threading.Timer(timeout, p.kill)
            timer.start()
            done, hwm = threading.Event(), [None]
            sampler = threading.Thread(target=_sample_hwm, args=(p.pid, done, hwm))
            sampler.start()
            try:
                _, status, ru = os.wait4(p.pid, 0)
            except BaseException:          # Ctrl-C, SIGTERM: no child outlives the bench
                p.kill()
                os.waitpid(p.pid, 0)
                p.returncode = -9
                raise
            finally:
                done.set()
                timer.cancel()
            sampler.join()
            proc_wall = time.perf_counter() - t0
            sink_cpu = _self_cpu() - s0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        p.returncode = code          # reaped by wait4: stop Popen from waiting again
        with open(self.out_path, "rb") as f:
            stdout = f.read().decode("utf-8", "replace")
        with open(self.err_path, "rb") as f:
            stderr = f.read().decode("utf-8", "replace")
        res = {"ok": code == 0, "proc_wall": proc_wall, "sink_cpu": sink_cpu,
               "proc_cpu": ru.ru_utime + ru.ru_stime, "rss_mib": hwm[0],
               "stdout": stdout, "stderr": stderr}
        if code != 0:
            why = "timeout after %ss" % timeout if proc_wall >= timeout else "exit %s" % code
            res["error"] = "%s: %s" % (why, (stderr.strip().splitlines() or [""])[-1][:300])
        return res


def _sample_hwm(pid, done, out):
    """Keep the last VmHWM (KiB -> MiB) read from /proc/PID/status until done."""
    path = "/proc/%d/status" % pid
    while not done.wait(0.005):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[0] = int(line.split()[1]) / 1024.0
        except OSError:
            return


def _self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def py_child(kind, **params):
    return [sys.executable, CHILD, kind, json.dumps(params)]


def parse_py(res):
    out = json.loads(res["stdout"].strip().splitlines()[-1])
    res.update((k, v) for k, v in out.items() if v is not None)


def parse_curl(res):
    # -w '%{http_code} %{time_total} %{size_upload}'; curl's own CPU is the process's.
    code, total, size = res["stdout"].split()
    if code != "200":
        raise RuntimeError("curl got HTTP %s" % code)
    res.update(wall=float(total), cpu=res["proc_cpu"], bytes=int(float(size)))


class Contestant:
    """argv() is called before each run, so the parent can presign a fresh URL
    outside the child's timing; parse(res) reads the child's output into res."""

    def __init__(self, label, argv, parse=parse_py, env=None, cwd=None):
        self.label, self.argv, self.parse, self.env, self.cwd = label, argv, parse, env, cwd


def py(kind, **params):
    """A Contestant.argv for a bench/_child.py function."""
    return lambda: py_child(kind, **params)


def run_rounds(bench, contestants, rounds, timeout, fake=None):
    """A B C, then B C A, ...: each contestant meets every position, so drift
    (page cache, thermal, the fake's state) does not favour one of them."""
    runs = {c.label: [] for c in contestants}
    n = len(contestants)
    for r in range(rounds):
        for c in contestants[r % n:] + contestants[:r % n]:
            argv = c.argv()
            n_api = len(fake.api_calls()) if fake else 0
            n_log = len(fake.log) if fake else 0
            res = bench.child.run(argv, timeout, env=c.env, cwd=c.cwd)
            if fake:
                res["api_calls"] = len(fake.api_calls()) - n_api
                res["storage_reqs"] = (len(fake.log) - n_log) - res["api_calls"]
            if res["ok"]:
                try:
                    c.parse(res)
                except Exception as e:
                    res.update(ok=False, error="bad child output: %s: %r" % (e, res["stdout"][-200:]))
            res.pop("stdout", None)
            res.pop("stderr", None)
            if res["ok"] and res.get("bytes"):
                res["mibps"] = res["bytes"] / MiB / res["wall"]
            runs[c.label].append(res)
            log("  round %d  %-44s %s" % (r + 1, c.label, _brief(res)))
    return runs


def _brief(res):
    if not res["ok"]:
        return "FAILED: " + res.get("error", "?")
    s = "%.3f s" % res["wall"]
    if res.get("mibps"):
        s += "  %7.1f MiB/s" % res["mibps"]
    return s + "  cpu %.2f s  rss %.1f MiB" % (res["cpu"], res["rss_mib"])


def medians(runs):
    """label -> {field: median over the successful runs} (None when all failed)."""
    out = {}
    for label, rs in runs.items():
        ok = [r for r in rs if r["ok"]]
        if not ok:
            out[label] = {"error": rs[0].get("error") if rs else "not run"}
            continue
        m = {"n": len(ok)}
        for k in ("wall", "cpu", "proc_cpu", "rss_mib", "sink_cpu", "mibps", "bytes",
                  "api_calls", "storage_reqs", "proc_wall", "files"):
            vals = [r[k] for r in ok if r.get(k) is not None]
            if vals:
                m[k] = statistics.median(vals)
        out[label] = m
    return out


# -- the bench: temp files, servers, cleanup -----------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.repo = os.path.abspath(args.repo)
        self.tmp = tempfile.mkdtemp(prefix="fileslink-bench-")
        self.child = Child(self.tmp)
        self.fakes = []
        self.moto = None
        self.skipped = []        # what did not run, and why: printed at the end
        self.results = {}        # scenario -> {"medians": ..., "runs": ...}
        self.cafile = None
        self._big = None
        self.busy = {}           # scenario -> share of the CPUs others used just before

    def cleanup(self):
        for fake in self.fakes:
            try:
                fake.stop()
            except Exception:
                pass
        self.fakes = []
        if self.moto is not None and self.moto.poll() is None:
            self.moto.kill()
            self.moto.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)   # the 1 GiB and 20 GiB files

    def skip(self, what, why):
        self.skipped.append((what, why))
        log("  skipped: %s (%s)" % (what, why))

    # files

    def big_file(self):
        """One file of --size random bytes, made once; fsync'd so no writeback
        runs under the first contestants, and left in the page cache for all."""
        if self._big is None:
            path = os.path.join(self.tmp, "big.bin")
            log("making %s of random bytes ..." % human(self.args.size))
            with open(path, "wb") as f:
                left = self.args.size
                while left:
                    n = min(left, 4 * MiB)
                    f.write(os.urandom(n))
                    left -= n
                f.flush()
                os.fsync(f.fileno())
            self._big = path
        return self._big

    # servers

    @contextlib.contextmanager
    def fake(self, tls=False, **kw):
        """The fake of ../test_fileslink.py in discard mode, for one scenario."""
        sys.path.insert(0, self.repo)
        from test_fileslink import FakeFilesLink
        fake = FakeFilesLink(discard=True, keep_bytes=False, **kw)
        if tls:
            enable_tls(fake, self.server_tls())
        fake.start()
        self.fakes.append(fake)
        try:
            yield fake
        finally:
            fake.stop()
            self.fakes.remove(fake)

    def server_tls(self):
        """A CA and a leaf for 127.0.0.1 made for this run. The CA carries
        keyUsage and the leaf an AKI, so Python 3.13's VERIFY_X509_STRICT accepts them."""
        d = os.path.join(self.tmp, "tls")
        os.makedirs(d, exist_ok=True)
        ca, leaf = os.path.join(d, "ca.pem"), os.path.join(d, "leaf.pem")
        if self.cafile is None:
            def ossl(*a):
                subprocess.run(("openssl",) + a, cwd=d, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
                 "-out", "ca.pem", "-days", "2", "-subj", "/CN=fileslink bench CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
            ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key",
                 "-out", "leaf.csr", "-subj", "/CN=127.0.0.1")
            with open(os.path.join(d, "leaf.ext"), "w") as f:
                f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                        "keyUsage=critical,digitalSignature,keyEncipherment\n"
                        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
                        "authorityKeyIdentifier=keyid:always\n")
            ossl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext")
            self.cafile = ca
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf, os.path.join(d, "leaf.key"))
        return ctx

    def start_moto(self):
        """moto's S3 server in a process of its own, so its memory and CPU stay
        out of this one (which hosts the fake)."""
        if self.moto is None:
            import socket
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            logf = open(os.path.join(self.tmp, "moto.log"), "wb")
            self.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                          "-p", str(port)], stdout=logf, stderr=logf)
            self.moto_url = "http://127.0.0.1:%d" % port
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(self.moto_url + "/moto-api/", timeout=2).read()
                    break
                except Exception:
                    if time.monotonic() > deadline or self.moto.poll() is not None:
                        raise RuntimeError("moto server did not start; see moto.log") from None
                    time.sleep(0.2)
            res = self.child.run(py_child("boto3_setup", endpoint=self.moto_url, bucket="bench"), 120)
            if not res["ok"]:
                raise RuntimeError("boto3 create_bucket on moto failed: " + res["error"])
        return self.moto_url


def enable_tls(fake, ctx):
    """Serve the fake's API and storage planes over TLS.

    The fake has no TLS switch of its own, so wrap the listening sockets of
    its http.server instances after they bind; accepted connections inherit
    the context, and do_handshake_on_connect=False moves each handshake to the
    handler thread instead of the accept loop. URLs the fake builds from
    base_url / storage_url then read https."""
    import socketserver
    orig_start = fake.start

    def start():
        orig_start()
        servers = [x for v in vars(fake).values() for x in (v if isinstance(v, list) else [v])
                   if isinstance(x, socketserver.BaseServer)]
        if len(servers) != 2:
            raise RuntimeError("cannot find the fake's two servers to wrap in TLS")
        for srv in servers:
            srv.socket = ctx.wrap_socket(srv.socket, server_side=True,
                                         do_handshake_on_connect=False)
        for name in ("base_url", "storage_url"):
            setattr(fake, name, getattr(fake, name).replace("http://", "https://", 1))
        return fake
    fake.start = start


def presign(fake, path, cafile=None, pieces=1):
    """The presign call the PUT-only baselines skip: made here, untimed. With
    pieces > 1, one URL for each of that many slices of the file."""
    size = os.path.getsize(path)
    step = -(-size // pieces)
    meta = [{"name": "%s.%d" % (os.path.basename(path), i), "mimeType": CTYPE,
             "size": min(size, (i + 1) * step) - i * step} for i in range(pieces)]
    req = urllib.request.Request(fake.base_url + "/v1/files/" + fake.folder_id, method="POST",
                                 data=json.dumps({"filesMetadata": meta}).encode(),
                                 headers={"Authorization": fake.api_key,
                                          "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        urls = [u["url"] for u in json.loads(r.read())["urls"]]
    return urls if pieces > 1 else urls[0]


def human(n):
    return "%d GiB" % (n // GiB) if n % GiB == 0 else "%d MiB" % (n // MiB) if n % MiB == 0 else "%d B" % n


# -- scenarios --------------------------------------------------------------------

def print_table(med, cols, first="contestant"):
    """One Markdown row per contestant; cols: [(header, fn(medians) -> text)]."""
    rows = [[label, "FAILED: " + m["error"][:80]] + [""] * (len(cols) - 1) if "error" in m
            else [label] + [fn(m) for _, fn in cols] for label, m in med.items()]
    log()
    log(md_table([first] + [h for h, _ in cols], rows))


def scenario_big(bench):
    args = bench.args
    bench.big_file()             # made once, before any timing
    size = args.size
    for tls in (False, True):
        name = "big_https" if tls else "big_http"
        log("\n## %s: one %s file, %s" % (name, human(size), "HTTPS" if tls else "HTTP"))
        if tls and not shutil.which("openssl"):
            bench.skip("big over HTTPS", "openssl not found to make a certificate")
            continue
        with bench.fake(tls=tls) as fake:
            runs = run_rounds(bench, big_contestants(bench, fake, name, tls), args.rounds,
                              max(120, size // (5 * MiB)), fake=fake)
        med = medians(runs)
        bench.results[name] = {"runs": runs, "medians": med}
        curl = med.get("curl -T", {}).get("mibps")
        print_table(med, [
            ("wall s", lambda m: f3(m["wall"])), ("MiB/s", lambda m: f1(m["mibps"])),
            ("x curl", lambda m, curl=curl: f2(m["mibps"] / curl) if curl else "-"),
            ("CPU s", lambda m: f2(m["cpu"])), ("CPU s/GiB", lambda m: f2(m["cpu"] * GiB / m["bytes"])),
            ("proc CPU s", lambda m: f2(m["proc_cpu"])), ("peak RSS MiB", lambda m: f1(m["rss_mib"])),
            ("sink CPU s", lambda m: f2(m["sink_cpu"])),
            ("sink busy", lambda m: "%.0f %%" % (100 * m["sink_cpu"] / m["wall"])),
            ("API calls", lambda m: "%d" % m["api_calls"])])
        log("\n* fileslink times its whole upload (presign + PUT + confirm; multipart: initiate +"
            " parts + complete); the others time one PUT to a URL presigned beforehand.\n"
            "CPU s: the transfer only (curl: whole process); proc CPU s: the whole child with"
            " interpreter start and imports. sink CPU s: the fake's CPU meanwhile; sink busy: that"
            " over wall time (one connection is one sink thread, so under 100 % it was not the"
            " bottleneck). The raw rows (http.client with 1 MiB writes, socket.sendfile) use no"
            " HTTP library: the fastest is what this sink and the loopback wire take; the 8-stream"
            " row is that for 8 parallel PUTs of 1/8 each, the raw twin of multipart x8.")


def big_contestants(bench, fake, name, tls):
    path, size = bench.big_file(), bench.args.size
    cafile = bench.cafile if tls else None
    common = {"repo": bench.repo, "base_url": fake.base_url, "api_key": fake.api_key,
              "folder": fake.folder_id, "path": path, "cafile": cafile, "workers": 8}

    def put_only(kind):
        return lambda: py_child(kind, url=presign(fake, path, cafile), path=path, size=size,
                                cafile=cafile)

    def curl():
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{size_upload}",
                "-T", path, "-H", "Content-Type: " + CTYPE,
                "-H", "Expect:"]       # no 100-continue round trip (curl waits up to 1 s for it)
        return argv + (["--cacert", cafile] if cafile else []) + [presign(fake, path, cafile)]

    cs = []
    for mp in (False, True):
        for ck in (True, False):
            cs.append(Contestant("fileslink%s, checksum=%s *" % (" multipart x8" if mp else "", ck),
                                 py("fileslink_upload", checksum=ck,
                                    threshold=8 * MiB if mp else size + 1, **common)))
    if shutil.which("curl"):
        cs.append(Contestant("curl -T", curl, parse_curl))
    else:
        bench.skip("curl -T (%s)" % name, "curl not on PATH")
    for mod, kind, label in (("requests", "put_requests", "requests.put(url, data=f) (seed)"),
                             ("httpx", "put_httpx", "httpx.put(url, content=f)")):
        if have(mod):
            cs.append(Contestant(label, put_only(kind)))
        else:
            bench.skip("%s (%s)" % (label, name), "%s not installed" % mod)
    cs.append(Contestant("urllib.request PUT", put_only("put_urllib")))
    cs.append(Contestant("http.client, 1 MiB writes", put_only("put_httpclient")))
    cs.append(Contestant("http.client, 1 MiB writes, 8 streams", lambda: py_child(
        "put_streams", urls=presign(fake, path, cafile, 8), path=path, size=size, cafile=cafile)))
    if not tls:       # TLS has no sendfile: there http.client's 1 MiB writes are the raw row
        cs.append(Contestant("raw socket.sendfile, no HTTP lib", put_only("put_sendfile")))
    return cs


def scenario_many(bench):
    args = bench.args
    log("\n## many: %d files of 16 KiB, 20 ms latency per request and per new connection"
        % args.files)
    d = os.path.join(bench.tmp, "many")
    os.makedirs(d, exist_ok=True)
    for i in range(args.files):
        with open(os.path.join(d, "f%04d.bin" % i), "wb") as f:
            f.write(os.urandom(16 * 1024))
    lib = "requests" if have("requests") else "urllib"
    if lib == "urllib":
        bench.skip("seed loop with requests", "requests not installed; the loop uses urllib")
    with bench.fake(latency=0.02) as fake:
        common = {"repo": bench.repo, "base_url": fake.base_url, "api_key": fake.api_key,
                  "folder": fake.folder_id, "dir": d}
        cs = [Contestant("fileslink upload_many", py("fileslink_many", workers=8, **common)),
              Contestant("seed loop, sequential (%s)" % lib, py("seed_loop", lib=lib, threads=1, **common)),
              Contestant("seed loop, 8 threads (%s)" % lib, py("seed_loop", lib=lib, threads=8, **common))]
        # At most 3 rounds: the sequential seed loop takes ~38 s a run, and these
        # figures are latency-bound (20 ms a request), so they hardly vary.
        runs = run_rounds(bench, cs, min(args.rounds, 3), 600, fake=fake)
    med = medians(runs)
    bench.results["many"] = {"runs": runs, "medians": med, "lib": lib}
    fl = med[cs[0].label].get("wall")
    print_table(med, [
        ("wall s", lambda m: f3(m["wall"])), ("files/s", lambda m: f1(args.files / m["wall"])),
        ("wall / fileslink's", lambda m: f1(m["wall"] / fl) if fl else "-"),
        ("API calls", lambda m: "%d" % m["api_calls"]),
        ("storage PUTs", lambda m: "%d" % m["storage_reqs"]),
        ("CPU s", lambda m: f2(m["cpu"])), ("peak RSS MiB", lambda m: f1(m["rss_mib"]))])


def scenario_import(bench):
    """Net import time = median wall of `python -c "import X"` minus that of
    `python -c pass`; -X importtime (the cumulative time of the top-level
    imports a `pass` run does not make) is shown beside it as a cross-check."""
    n = bench.args.import_runs
    log("\n## import: a fresh `python -c \"import X\"`, %d runs each, alternating" % n)
    mods = [("python -c pass", "pass"), ("http.client", "import http.client"),
            ("fileslink", "import fileslink")]
    for mod in ("requests", "boto3"):
        if have(mod):
            mods.append((mod, "import " + mod))
        else:
            bench.skip("import " + mod, "not installed")
    wall = {m: [] for m, _ in mods}
    itime = {m: [] for m, _ in mods}
    def run(*argv):
        return bench.child.run([sys.executable] + list(argv), 60, cwd=bench.repo)

    for _m, code in mods:         # warm-up: write .pyc files, fill the page cache
        run("-c", code)
    for i in range(n):
        order = mods[i % len(mods):] + mods[:i % len(mods)]
        for m, code in order:
            wall[m].append(run("-c", code)["proc_wall"])
        for m, code in order:
            itime[m].append(run("-X", "importtime", "-c", code)["stderr"])
    startup = set(_importtime(itime["python -c pass"][0]))
    base = statistics.median(wall["python -c pass"])
    med = {}
    for m, _ in mods:
        us = [sum(v for k, v in _importtime(t).items() if k not in startup) for t in itime[m]]
        med[m] = {"wall": statistics.median(wall[m]), "net": statistics.median(wall[m]) - base,
                  "importtime": statistics.median(us) / 1e6}
    bench.results["import"] = {"medians": med, "runs": wall}
    fl = med["fileslink"]["net"]
    print_table(med, [
        ("process wall ms", lambda m: f1(1000 * m["wall"])),
        ("minus `pass` ms", lambda m: f1(1000 * m["net"])),
        ("-X importtime ms", lambda m: f1(1000 * m["importtime"])),
        ("fileslink / this", lambda m: f2(fl / m["net"]) if m["net"] > 0 else "-")], "import")
    scenario_cold(bench)


def _importtime(text):
    """-X importtime lines -> {top-level module: cumulative us}."""
    out, depth = {}, None
    for line in text.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cum, name = line[len("import time:"):].split("|")
        d = len(name) - len(name.lstrip())
        if depth is None or d < depth:
            depth, out = d, {}
        if d == depth:
            out[name.strip()] = int(cum)
    return out


def scenario_cold(bench):
    log("\n## cold upload: a fresh process imports, builds a client, uploads one 16 KiB file")
    path = os.path.join(bench.tmp, "cold.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(16 * 1024))
    with bench.fake() as fake:
        env = dict(os.environ, FILESLINK_BASE_URL=fake.base_url, FILESLINK_KEY=fake.api_key,
                   FILESLINK_FOLDER=fake.folder_id, BENCH_PATH=path)

        def code(label, c, e=env):
            return Contestant(label, lambda: [sys.executable, "-c", c], _cold_parse, e, bench.repo)

        cs = [code("fileslink.upload(path)", _child.COLD_FILESLINK)]
        if have("requests"):
            cs.append(code("seed three calls (requests)", _child.SEED_REQUESTS))
        else:
            bench.skip("cold seed with requests", "requests not installed")
        cs.append(code("seed three calls (urllib)", _child.SEED_URLLIB))
        if have("boto3") and have("moto"):
            try:
                cs.append(code("boto3 upload_file (moto)", _child.COLD_BOTO3,
                               dict(env, BENCH_S3=bench.start_moto())))
            except Exception as e:
                bench.skip("cold boto3 upload_file", str(e))
        else:
            bench.skip("cold boto3 upload_file", "boto3 or moto not installed")
        runs = run_rounds(bench, cs, bench.args.import_runs // 2 + 1, 120, fake=fake)
    med = medians(runs)
    bench.results["cold"] = {"runs": runs, "medians": med}
    print_table(med, [
        ("process wall ms", lambda m: f1(1000 * m["proc_wall"])),
        ("process CPU ms", lambda m: f1(1000 * m["proc_cpu"])),
        ("peak RSS MiB", lambda m: f1(m["rss_mib"])),
        ("API calls", lambda m: "%d" % m["api_calls"])], "cold upload")


def _cold_parse(res):
    res.update(wall=res["proc_wall"], cpu=res["proc_cpu"])


def scenario_memory(bench):
    path, size = bench.big_file(), bench.args.size
    log("\n## memory: peak RSS of a process uploading %s multipart, 8 workers" % human(size))
    with bench.fake() as fake:
        cs = [Contestant("fileslink multipart x8 (checksum=True)", py(
            "fileslink_upload", repo=bench.repo, base_url=fake.base_url, api_key=fake.api_key,
            folder=fake.folder_id, path=path, workers=8, threshold=8 * MiB, checksum=True))]
        if have("boto3") and have("moto"):
            try:
                cs.append(Contestant("boto3 upload_file x8 (moto server)", py(
                    "boto3_upload", endpoint=bench.start_moto(), bucket="bench", key="big.bin",
                    path=path, size=size, workers=8)))
            except Exception as e:
                bench.skip("boto3 upload_file", str(e))
        else:
            bench.skip("boto3 upload_file against moto", "boto3 or moto not installed")
        runs = run_rounds(bench, cs, bench.args.rounds, max(300, size // MiB), fake=fake)
    med = medians(runs)
    bench.results["memory"] = {"runs": runs, "medians": med}
    print_table(med, [
        ("peak RSS MiB", lambda m: f1(m["rss_mib"])), ("wall s", lambda m: f3(m["wall"])),
        ("MiB/s", lambda m: f1(m["mibps"])), ("CPU s", lambda m: f2(m["cpu"])),
        ("proc CPU s", lambda m: f2(m["proc_cpu"]))])
    log("\nboto3's wall time is moto's (a Python S3 emulator), not boto3's: compare memory here.")


def scenario_scale(bench):
    """upload_many of 10,000 tiny files from a generator: memory stays flat
    (compared with 1,000) and the API calls stay at 2 per 50 files."""
    log("\n## scale: upload_many of 1,000 and 10,000 tiny files from a generator")
    with bench.fake() as fake:
        common = {"repo": bench.repo, "base_url": fake.base_url, "api_key": fake.api_key,
                  "folder": fake.folder_id}
        cs = [Contestant("upload_many, %d tiny files" % n, py("fileslink_tiny", n=n, **common))
              for n in (1000, 10000)]
        runs = run_rounds(bench, cs, 1, 600, fake=fake)
    med = medians(runs)
    bench.results["scale"] = {"runs": runs, "medians": med}
    print_table(med, [
        ("wall s", lambda m: f3(m["wall"])), ("files/s", lambda m: f1(m["files"] / m["wall"])),
        ("API calls", lambda m: "%d" % m["api_calls"]), ("peak RSS MiB", lambda m: f1(m["rss_mib"]))])


def scenario_huge(bench):
    """The first read of a hole costs the kernel a zero-filled page-cache page:
    about 2 s of system CPU per GiB on this VM, more than the upload itself.
    So a row of its own reads the file once first: when the page cache can hold
    the file, the upload then measures fileslink and the wire; when it cannot,
    the upload pays that cost again, and the read row says how much of it."""
    size = bench.args.huge_size
    log("\n## huge: one %s sparse file, multipart x8, checksum=False, once" % human(size))
    path = os.path.join(bench.tmp, "huge.bin")
    with open(path, "wb"):
        pass
    os.truncate(path, size)      # a hole: no disk used, reads are zeros
    cached = mem_total() > size + 2 * GiB     # the cache evicts older files to make room
    log("  the page cache %s: the upload %s" % (
        ("can hold the file", "reads it from memory") if cached else
        ("is too small for the file", "pays the hole reads again")))
    with bench.fake() as fake:
        cs = [Contestant("read the file once (kernel fills holes)", py("read_file", path=path)),
              Contestant("fileslink multipart x8, checksum=False", py(
                  "fileslink_upload", repo=bench.repo, base_url=fake.base_url, api_key=fake.api_key,
                  folder=fake.folder_id, path=path, workers=8, threshold=8 * MiB, checksum=False))]
        try:
            runs = run_rounds(bench, cs, 1, 900, fake=fake)
        finally:
            os.unlink(path)      # also drops its page cache
    med = medians(runs)
    bench.results["huge"] = {"runs": runs, "medians": med, "cached": cached}
    print_table(med, [
        ("wall s", lambda m: f3(m["wall"])), ("MiB/s", lambda m: f1(m["mibps"])),
        ("CPU s", lambda m: f2(m["cpu"])), ("peak RSS MiB", lambda m: f1(m["rss_mib"])),
        ("sink CPU s", lambda m: f2(m["sink_cpu"])),
        ("storage PUTs (parts)", lambda m: "%d" % m["storage_reqs"])])


def mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def busy_fraction(seconds=1.0):
    """Share of all CPUs busy over `seconds` while this bench sits idle: other
    processes on the machine make every figure noisy, so the output says so."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]          # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
        return 1 - (i1 - i0) / max(1, t1 - t0)
    except (OSError, ValueError, IndexError):
        return None


def check_quiet(bench, scenario):
    deadline = time.monotonic() + bench.args.wait_quiet
    busy = busy_fraction()
    while busy is not None and busy > 0.15 and time.monotonic() < deadline:
        busy = busy_fraction(5.0)
    bench.busy[scenario] = busy
    if busy is not None and busy > 0.15:
        log("  note: other processes kept the CPUs %.0f %% busy just before this scenario: "
            "figures will be noisy" % (100 * busy))


# -- targets ---------------------------------------------------------------------

def evaluate_targets(bench):
    """Every row of the issue's target table that this run measured.

    Throughput and CPU targets get one row per checksum mode: checksum=True
    hashes every byte (MD5, about 1.1 s of CPU per GiB here), which the
    targets are not expected to absorb; checksum=False is the wire-speed mode."""
    rows = []

    def add(key, note, value, text):
        figure, target, limit, kind = TARGETS[key]
        if (value >= limit) if kind == "min" else (value <= limit):
            verdict = "PASS"
        else:
            verdict = "MISS by %.1f %%" % (100 * ((1 - value / limit) if kind == "min" else (value / limit - 1)))
        rows.append({"figure": figure + (" (%s)" % note if note else ""), "target": target,
                     "value": value, "measured": text, "verdict": verdict})

    def med(scen, label):
        m = bench.results.get(scen, {}).get("medians", {}).get(label)
        return m if m and "error" not in m else None

    def ratio(key, note, a, b, field, unit, fmt="%.0f"):
        r = a[field] / b[field]
        add(key, note, r, ("%.2f x (" + fmt + " vs " + fmt + " %s)") % (r, a[field], b[field], unit))

    for scen, key, proto in (("big_http", "http_tput", "HTTP"), ("big_https", "https_tput", "HTTPS")):
        curl = med(scen, "curl -T")
        for ck in (False, True):
            tag = "%s, checksum=%s" % (proto, ck)
            single = med(scen, "fileslink, checksum=%s *" % ck)
            multi = med(scen, "fileslink multipart x8, checksum=%s *" % ck)
            if single and curl:
                ratio(key, "checksum=%s" % ck, single, curl, "mibps", "MiB/s")
            if single and multi:
                ratio("multipart", tag, multi, single, "mibps", "MiB/s")
                one, eight = (med(scen, "http.client, 1 MiB writes" + s) for s in ("", ", 8 streams"))
                if one and eight:    # what 8 streams cost this machine, with no client library
                    rows[-1]["measured"] += "; raw 8 streams vs 1: %.2f x" % (eight["mibps"] / one["mibps"])
            if single and curl:      # both are about one GiB: per GiB is the same ratio
                a, b = (dict(m, cpu_gib=m["cpu"] * GiB / m["bytes"]) for m in (single, curl))
                ratio("cpu", tag, a, b, "cpu_gib", "s/GiB", "%.2f")

    fl = med("many", "fileslink upload_many")
    if fl:
        lib = bench.results["many"]["lib"]
        for key, label in (("many_seq", "seed loop, sequential (%s)" % lib),
                           ("many_thr", "seed loop, 8 threads (%s)" % lib)):
            peer = med("many", label)
            if peer:
                r = peer["wall"] / fl["wall"]
                add(key, None, r, "%.1f x faster (%.2f vs %.2f s)" % (r, fl["wall"], peer["wall"]))
        add("many_calls", None, fl["api_calls"], "%d calls (%d files)" % (fl["api_calls"], bench.args.files))

    imp = bench.results.get("import", {}).get("medians")
    if imp:
        f = imp["fileslink"]
        for key, peer in (("imp_http", "http.client"), ("imp_req", "requests")):
            if peer in imp and imp[peer]["net"] > 0:
                r = f["net"] / imp[peer]["net"]
                add(key, None, r, "%.2f x (%.1f vs %.1f ms; -X importtime: %.2f x)" % (
                    r, 1000 * f["net"], 1000 * imp[peer]["net"], f["importtime"] / imp[peer]["importtime"]))

    fl = med("memory", "fileslink multipart x8 (checksum=True)")
    if fl:
        add("rss", "this run: %s" % human(bench.args.size), fl["rss_mib"], "%.1f MiB" % fl["rss_mib"])
        boto = med("memory", "boto3 upload_file x8 (moto server)")
        if boto:
            ratio("rss_boto", None, fl, boto, "rss_mib", "MiB", "%.1f")
    # Flat memory: the huge upload beside the same client settings (checksum=False) on --size.
    huge = med("huge", "fileslink multipart x8, checksum=False")
    small = med("big_http", "fileslink multipart x8, checksum=False *")
    if huge and small:
        ratio("flat", "%s vs %s" % (human(bench.args.huge_size), human(bench.args.size)),
              huge, small, "rss_mib", "MiB", "%.1f")
    return rows


# -- output ----------------------------------------------------------------------

def f1(x):
    return "-" if x is None else "%.1f" % x


def f2(x):
    return "-" if x is None else "%.2f" % x


def f3(x):
    return "-" if x is None else "%.3f" % x


def md_table(headers, rows):
    rows = [[str(c) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    def line(cells):
        return "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (n + 2) for n in w) + "|"]
                     + [line(r) for r in rows])


def machine_line(bench):
    curl = subprocess.run(["curl", "--version"], stdout=subprocess.PIPE, universal_newlines=True
                          ).stdout.split("\n")[0].split()[:2] if shutil.which("curl") else ["curl", "missing"]
    peers = ", ".join("%s %s" % (d, version_of(d)) if have(m) else "%s missing" % d
                      for d, m in (("requests", "requests"), ("httpx", "httpx"),
                                   ("boto3", "boto3"), ("moto", "moto")))
    return "%s; Python %s; %s; %d CPUs; %s; %s" % (
        time.strftime("%Y-%m-%d"), platform.python_version(), platform.platform(terse=True),
        os.cpu_count() or 0, " ".join(curl), peers)


# -- main ------------------------------------------------------------------------

SCENARIOS = ("big", "many", "import", "memory", "scale", "huge")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 round, a 256 MiB file, fewer import runs, no 20 GiB run")
    ap.add_argument("--only", default=None, help="comma list of: " + ",".join(SCENARIOS))
    ap.add_argument("--size", type=parse_size, default=None, help="big file size (default 1G)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per scenario (default 5; many: at most 3)")
    ap.add_argument("--huge", action="store_true", help="run the 20 GiB sparse upload with --quick too")
    ap.add_argument("--huge-size", type=parse_size, default=20 * GiB, help=argparse.SUPPRESS)
    ap.add_argument("--files", type=int, default=300, help="files in the many scenario (300)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each scenario, wait up to this long for other processes to leave the CPUs idle")
    ap.add_argument("--json-out", metavar="FILE", help="also write every run and median as JSON")
    ap.add_argument("--repo", default=os.path.dirname(HERE),
                    help="where fileslink.py and test_fileslink.py are (default: this checkout)")
    args = ap.parse_args(argv)
    args.size = args.size or (256 * MiB if args.quick else GiB)
    # 5 rounds: on a shared 2-core VM, whole stretches of seconds run slow for
    # every contestant alike; a median of 5 alternating runs rides them out.
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.import_runs = 7 if args.quick else 21
    only = set((args.only or ",".join(SCENARIOS)).split(","))
    if only - set(SCENARIOS):
        ap.error("--only takes: " + ",".join(SCENARIOS))
    if args.quick and not args.huge and not args.only:
        only.discard("huge")
    args.scenarios = [s for s in SCENARIOS if s in only]
    return args


def main(argv=None):
    args = parse_args(argv)
    for f in ("fileslink.py", "test_fileslink.py"):
        if not os.path.exists(os.path.join(args.repo, f)):
            sys.exit("bench: %s not found in %s (use --repo)" % (f, args.repo))
    bench = Bench(args)
    atexit.register(bench.cleanup)           # the temp files go, whatever happens
    # Children import from compiled bytecode, as an installed package does. A
    # shell with PYTHONDONTWRITEBYTECODE would make every `import fileslink`
    # compile 2,000+ lines (~25 ms) inside the import figure. The caches of
    # this run live under the temp dir, so the checkout stays clean.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = os.path.join(bench.tmp, "pycache")
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    t0 = time.monotonic()
    log("# fileslink benchmark\n\n%s" % machine_line(bench))
    log("command: python bench/bench_fileslink.py %s" % " ".join(argv if argv is not None else sys.argv[1:]))
    log("scenarios: %s; rounds: %d; big file: %s" % (",".join(args.scenarios), args.rounds, human(args.size)))
    try:
        for name in args.scenarios:
            check_quiet(bench, name)
            globals()["scenario_" + name](bench)
    except KeyboardInterrupt:
        log("\ninterrupted: cleaning up")
        bench.cleanup()
        return 130
    targets = evaluate_targets(bench)
    log("\n## targets\n")
    log(md_table(["figure", "target", "measured", "verdict"],
                 [[t["figure"], t["target"], t["measured"], t["verdict"]] for t in targets]))
    if bench.skipped:
        log("\nskipped:")
        for what, why in bench.skipped:
            log("- %s: %s" % (what, why))
    log("\ntotal %.0f s" % (time.monotonic() - t0))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"machine": machine_line(bench), "argv": argv if argv is not None else sys.argv[1:],
                       "results": bench.results, "targets": targets, "busy": bench.busy,
                       "skipped": bench.skipped}, f, indent=1, default=str)
    bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
