#!/usr/bin/env python3
"""The floor under write-c1 on this machine: one replicated, fsynced write
with no consensus, no serialization and no RPC framework, only what any
system at this durability must do.

A client sends 128 bytes to a leader; the leader sends them to two
followers and writes and fdatasyncs them itself; each follower writes and
fdatasyncs them and answers; the leader answers the client once its own
sync and the first follower's answer are in (a quorum of three). Four
processes on loopback, like the benchmark's clusters, files preallocated
like Herald's log segments.

    python3 bench/floor.py        # prints p50 / p99 and writes/s at 1 in flight

BENCHMARKS.md compares Herald's and etcd's write-c1 with it.
"""
import os
import select
import socket
import sys
import tempfile
import time

PORT = 41000
WRITES = 5000


def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def accept(s):
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def connect(port):
    for _ in range(100):
        try:
            c = socket.create_connection(("127.0.0.1", port))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return c
        except ConnectionRefusedError:
            time.sleep(0.01)
    sys.exit(f"could not connect to port {port}")


def log_file(dir, name):
    fd = os.open(os.path.join(dir, name), os.O_WRONLY | os.O_CREAT)
    os.ftruncate(fd, 64 << 20)
    os.fsync(fd)
    return fd


def durable_append(fd, data, off):
    """Writes at `off` and fdatasyncs, as a log append must; the next offset."""
    os.pwrite(fd, data, off)
    os.fdatasync(fd)
    return off + len(data)


def follower(dir, i, ready):
    fd = log_file(dir, f"follower{i}")
    s = listen(PORT + 1 + i)
    os.write(ready, b"r")
    c = accept(s)
    off = 0
    while True:
        d = c.recv(256)
        if not d:
            return
        off = durable_append(fd, d, off)
        c.sendall(b"k")


def leader(dir, ready):
    fd = log_file(dir, "leader")
    followers = [connect(PORT + 1 + i) for i in range(2)]
    s = listen(PORT)
    os.write(ready, b"r")
    c = accept(s)
    off = 0
    while True:
        d = c.recv(256)
        if not d:
            return
        for f in followers:
            f.sendall(d)
        off = durable_append(fd, d, off)
        first, _, _ = select.select(followers, [], [])
        first[0].recv(1)
        c.sendall(b"k")
        other = followers[1] if first[0] is followers[0] else followers[0]
        other.recv(1)


def main():
    with tempfile.TemporaryDirectory(prefix="herald-floor-") as dir:
        r, w = os.pipe()
        kids = []
        for i in range(2):
            pid = os.fork()
            if pid == 0:
                follower(dir, i, w)
                os._exit(0)
            kids.append(pid)
        os.read(r, 2)
        pid = os.fork()
        if pid == 0:
            leader(dir, w)
            os._exit(0)
        kids.append(pid)
        os.read(r, 1)
        c = connect(PORT)
        times = []
        for _ in range(WRITES):
            t = time.perf_counter()
            c.sendall(b"x" * 128)
            c.recv(1)
            times.append(time.perf_counter() - t)
        c.close()
        for pid in kids:
            os.waitpid(pid, 0)
    times.sort()
    p50 = times[len(times) // 2] * 1e6
    p99 = times[int(len(times) * 0.99)] * 1e6
    print(
        f"floor of one replicated, fdatasynced write at 1 in flight: "
        f"p50 {p50:.0f} us, p99 {p99:.0f} us, {len(times) / sum(times):.0f} writes/s"
    )


if __name__ == "__main__":
    main()
