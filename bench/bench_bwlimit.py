#!/usr/bin/env python3
"""Does --bwlimit hold? (issue 10: within 10 % of the limit over a 10 s upload,
progress and ETA right.)

    python bench/bench_bwlimit.py [--rate 4M] [--seconds 10] [--workers 8]

Uploads rate x seconds bytes through the fake (discard mode: bodies read and
dropped) with Client(max_bandwidth=rate), as one multipart upload spread over
the workers, and prints the measured rate as a ratio of the limit: overall, and
per one-second window. At each second it also computes the ETA a progress line
shows (bytes left / average rate so far) and compares it with the time that
was really left.
"""
import argparse
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fileslink  # noqa: E402
import test_fileslink  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="4M", help="bytes per second, K/M/G suffixes (4M)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the upload (10)")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    rate = fileslink._parse_size(args.rate)
    size = int(rate * args.seconds)
    fake = test_fileslink.FakeFilesLink(discard=True, min_part_size=1 << 20).start()
    samples = []  # (monotonic, bytes sent so far)
    lock = threading.Lock()
    sent = {}

    def progress(name: str, done: int, total: int) -> None:
        with lock:
            sent[name] = done

    with tempfile.NamedTemporaryFile() as f:
        f.truncate(size)  # sparse: reading it costs nothing
        client = fileslink.Client(api_key=fake.api_key, base_url=fake.base_url,
                                  max_workers=args.workers, multipart_threshold=1 << 20,
                                  max_bandwidth=rate, checksum=False)
        done = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while not done.wait(1.0):
                with lock:
                    samples.append((time.monotonic(), sum(sent.values())))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        client.upload(f.name, fake.folder_id, progress=progress)
        end = time.monotonic()
        done.set()
        sampler.join()
    fake.stop()
    elapsed = end - start
    print("limit %s/s, %d bytes, %d workers: %.2f s" % (args.rate, size, args.workers, elapsed))
    print("overall rate / limit: %.3f" % (size / elapsed / rate))
    windows, eta_errors = [], []
    previous = (start, 0)
    for when, nbytes in samples:
        windows.append((nbytes - previous[1]) / (when - previous[0]) / rate)
        if nbytes:
            eta = (size - nbytes) / (nbytes / (when - start))
            eta_errors.append(eta - (end - when))
        previous = (when, nbytes)
    if windows:
        print("per-second rate / limit: min %.3f, max %.3f (%d windows)"
              % (min(windows[1:] or windows), max(windows[1:] or windows), len(windows)))
    if eta_errors:
        print("ETA error (shown - true): worst %+.2f s, last %+.2f s"
              % (max(eta_errors, key=abs), eta_errors[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
