#!/usr/bin/env python3
"""Concurrency benchmark client for a running `kadr serve` (standard library only).

Phases, against BASE (http://127.0.0.1:PORT):
  1. contention: the latency of `GET /api/v1/analysis?hash=H` for an analysis that is already
     stored (a pure search), first with the server idle, then while UPLOADERS clients upload
     unseen 400x400 PNGs as fast as they can;
  2. throughput: uploads per second with each of CLIENTS concurrent clients (one unseen image
     per request), and the mean forward-pass batch size over that phase from /metrics
     (kadr_batch_size_sum / kadr_batch_size_count).
Prints one JSON object per measurement, and a table at the end.
"""
import http.client
import json
import os
import statistics
import struct
import sys
import threading
import time
import zlib

BASE_HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "3079"))
UPLOADERS = int(os.environ.get("UPLOADERS", "8"))
GETS = int(os.environ.get("GETS", "200"))
CLIENTS = [int(c) for c in os.environ.get("CLIENTS", "1,8,32").split(",")]
SECONDS = float(os.environ.get("PHASE_SECONDS", "15"))
LABEL = os.environ.get("LABEL", "")
SIDE = 400

_seq = 0
_seq_lock = threading.Lock()
_base_rows = None


def _png(seed: int) -> bytes:
    """A 400x400 RGB PNG, different bytes for every seed (so every upload is embedded)."""
    global _base_rows
    if _base_rows is None:
        _base_rows = [
            b"\x00" + bytes(((x * 3 + y * 5) ^ (x * y)) & 0xFF for x in range(SIDE * 3))
            for y in range(SIDE)
        ]
    mark = seed.to_bytes(8, "little") * (SIDE * 3 // 8)
    rows = list(_base_rows)
    rows[0] = b"\x00" + mark
    rows[SIDE // 2] = b"\x00" + mark[::-1]
    raw = zlib.compress(b"".join(rows), 1)

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def next_image() -> bytes:
    global _seq
    with _seq_lock:
        _seq += 1
        n = _seq
    return _png(n + os.getpid() * 1_000_000 + int(time.time()) * 1000)


def upload(conn: http.client.HTTPConnection, png: bytes):
    boundary = "kadrbench7d3f"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"b.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png + f"\r\n--{boundary}--\r\n".encode()
    conn.request(
        "POST",
        "/api/v1/analyse",
        body=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def metrics_batch():
    conn = http.client.HTTPConnection(BASE_HOST, PORT, timeout=60)
    _, text = get(conn, "/metrics")
    s = c = 0.0
    for line in text.decode().splitlines():
        if line.startswith("kadr_batch_size_sum"):
            s = float(line.split()[-1])
        elif line.startswith("kadr_batch_size_count"):
            c = float(line.split()[-1])
    return s, c


def uploader(stop: threading.Event, counts: dict, lock: threading.Lock):
    conn = http.client.HTTPConnection(BASE_HOST, PORT, timeout=300)
    while not stop.is_set():
        png = next_image()
        try:
            status, _ = upload(conn, png)
        except (OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(BASE_HOST, PORT, timeout=300)
            status = "error"
        with lock:
            counts[status] = counts.get(status, 0) + 1
            if status == 200:
                counts["done_at"] = time.monotonic()


def cached_latency(hash_: str, n: int):
    conn = http.client.HTTPConnection(BASE_HOST, PORT, timeout=60)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, _ = get(conn, f"/api/v1/analysis?hash={hash_}")
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, status
    return statistics.median(times), max(times)


def main():
    results = []
    conn = http.client.HTTPConnection(BASE_HOST, PORT, timeout=300)
    status, data = upload(conn, next_image())
    assert status == 200, (status, data[:300])
    hash_ = json.loads(data)[0]["analysis"]["hash"]

    # 1. contention
    p50, mx = cached_latency(hash_, GETS)
    results.append({"phase": "cached analysis, idle", "p50_ms": round(p50, 2), "max_ms": round(mx, 2)})
    print(json.dumps(results[-1]), flush=True)
    stop, counts, lock = threading.Event(), {}, threading.Lock()
    threads = [threading.Thread(target=uploader, args=(stop, counts, lock)) for _ in range(UPLOADERS)]
    for t in threads:
        t.start()
    time.sleep(3)  # the uploads are under way
    p50, mx = cached_latency(hash_, GETS)
    stop.set()
    for t in threads:
        t.join()
    results.append({
        "phase": f"cached analysis, {UPLOADERS} uploaders",
        "p50_ms": round(p50, 2),
        "max_ms": round(mx, 2),
        "uploads": counts.get(200, 0),
    })
    print(json.dumps(results[-1]), flush=True)

    # 2. throughput
    for clients in CLIENTS:
        s0, c0 = metrics_batch()
        stop, counts, lock = threading.Event(), {}, threading.Lock()
        threads = [threading.Thread(target=uploader, args=(stop, counts, lock)) for _ in range(clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(SECONDS)
        stop.set()
        for t in threads:
            t.join()
        elapsed = counts.get("done_at", time.monotonic()) - t0
        s1, c1 = metrics_batch()
        ok = counts.get(200, 0)
        other = {str(k): v for k, v in counts.items() if k not in (200, "done_at")}
        results.append({
            "phase": f"uploads, {clients} clients",
            "clients": clients,
            "uploads_per_s": round(ok / elapsed, 2),
            "ok": ok,
            "other_statuses": other,
            "mean_batch": round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None,
        })
        print(json.dumps(results[-1]), flush=True)

    print(f"\n{LABEL}")
    for r in results:
        if "p50_ms" in r:
            print(f"  {r['phase']:<34} p50 {r['p50_ms']:>8.2f} ms   max {r['max_ms']:>8.2f} ms")
        else:
            print(f"  {r['phase']:<34} {r['uploads_per_s']:>7.2f} uploads/s   mean batch {r['mean_batch']}")


if __name__ == "__main__":
    sys.exit(main())
