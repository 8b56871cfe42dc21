#!/usr/bin/env python3
"""Slow clients for bench/load.sh: holds N connections to the server, each of which sends half
a request line and then nothing (a slowloris). When the server drops one, another takes its
place at once, so N are held open for as long as the server allows. Standard library only.

    python3 bench/slow_clients.py HOST PORT N SECONDS

Prints one JSON line at the end: how many were held, how many the server dropped, how long a
dropped one had been held (median and max, seconds), and connect errors.
"""

import json
import selectors
import socket
import sys
import time

PARTIAL = b"GET /api/v1/settings HTTP/1.1\r\nHost: x\r\nX-Slow: "


def main():
    host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    sel = selectors.DefaultSelector()
    opened = {}
    lifetimes = []
    connect_errors = 0
    peak = 0

    def open_one():
        nonlocal connect_errors
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(5)
        try:
            s.connect((host, port))
            s.sendall(PARTIAL)
        except OSError:
            connect_errors += 1
            s.close()
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        opened[s] = time.monotonic()

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while len(opened) < n and time.monotonic() < end:
            before = connect_errors
            open_one()
            if connect_errors > before:
                time.sleep(0.05)
                break
        peak = max(peak, len(opened))
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                lifetimes.append(time.monotonic() - opened.pop(s))
                sel.unregister(s)
                s.close()
    held_at_end = len(opened)
    for s in list(opened):
        sel.unregister(s)
        s.close()
    lifetimes.sort()
    print(
        json.dumps(
            {
                "slow_clients": n,
                "peak_held": peak,
                "held_at_end": held_at_end,
                "dropped_by_server": len(lifetimes),
                "held_s_median": round(lifetimes[len(lifetimes) // 2], 2) if lifetimes else None,
                "held_s_max": round(lifetimes[-1], 2) if lifetimes else None,
                "connect_errors": connect_errors,
            }
        )
    )


if __name__ == "__main__":
    main()
