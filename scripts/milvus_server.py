#!/usr/bin/env python3
"""Runs a real Milvus 2.3.5 standalone server (the PyPI `milvus` package embeds the server
binary, its etcd and rocksmq) in the foreground, on loopback only, until killed.

    python3 scripts/milvus_server.py --dir .cache/milvus --port 19530

Prints "milvus ready on 127.0.0.1:PORT" once the server answers its health check. The data
stays in --dir, so a server started again on the same folder finds its collections. Kill the
whole process group to stop it (the server is a child of this script).
"""
import argparse
import signal
import socket
import sys

from milvus import MilvusServer, MilvusServerConfig

COMPONENTS = ["rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode",
              "dataCoord", "dataNode"]


def try_bind_port(self, port):
    # The package probes ports without SO_REUSEADDR, so after a kill the old connections in
    # TIME_WAIT make it move the server to another port; the server itself can reuse them.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


MilvusServerConfig.try_bind_port = try_bind_port


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True, help="data, logs and configuration")
    p.add_argument("--port", type=int, default=19530, help="gRPC port of the proxy")
    a = p.parse_args()
    server = MilvusServer()
    server.set_base_dir(a.dir)
    # In `configs`, not only the template's items: a port in use is then an error, never a
    # silent move to the next free one (clients reconnect to the address they know).
    server.config.configs["proxy_port"] = a.port
    server.config.set("proxy_port", a.port)
    # Every component registers the machine's first non-loopback address by default.
    for c in COMPONENTS:
        server.config.set(f"{c}.ip", "127.0.0.1")

    def stop(*_):
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    print(f"milvus ready on 127.0.0.1:{a.port}", flush=True)
    server.wait()
    # The server process ended by itself.
    sys.exit(1)


if __name__ == "__main__":
    main()
