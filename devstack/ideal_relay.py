"""The least a relay hop can cost on this machine: a floor for benchmarks of relayed paths.

Each hop is its own process that accepts loopback TCP connections and moves their bytes to an
upstream with ``splice(2)``, one blocking thread per direction: no event loop, no Python per
byte, no copy into user space. A chain of N such hops in front of a Dask worker's own listener
is what any N-relay path (an ingress, the broker, another ingress) costs at best here, measured in
the same run as the path itself, so a benchmark can tell the relays' own cost from its code's.

``python -m devstack.ideal_relay <upstream host:port>`` listens on a free loopback port and prints
``listening <port>``; :func:`start_relay_chain` starts a chain of them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
from contextlib import suppress

#: Bytes one ``splice`` call may move (the pipe is grown to this where the kernel allows).
CHUNK = 1024 * 1024


def pump(source: socket.socket, sink: socket.socket) -> None:
    """One direction, until EOF (passed on as a half-close) or a reset (which ends both directions)."""
    read_end, write_end = os.pipe()
    with suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, CHUNK)
    try:
        while moved := os.splice(source.fileno(), write_end, CHUNK):
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):  # wakes the other direction's blocked splice
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(read_end)
        os.close(write_end)


def relay(near: socket.socket, far: socket.socket) -> None:
    """Both directions of one connection; the sockets are closed once both have ended."""
    with near, far:
        back = threading.Thread(target=pump, args=(far, near), daemon=True)
        back.start()
        pump(near, far)
        back.join()


def serve(upstream: tuple[str, int]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        print(f"listening {server.getsockname()[1]}", flush=True)
        while True:
            near, _ = server.accept()
            far = socket.create_connection(upstream)
            for sock in (near, far):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=relay, args=(near, far), daemon=True).start()


def start_relay_chain(upstream: str, hops: int) -> tuple[list[subprocess.Popen], list[int]]:
    """``hops`` relays in a row in front of ``host:port``; the processes, and the port of each hop
    (the last one is the chain's entry). Stop them with :func:`stop_relays`."""
    processes: list[subprocess.Popen] = []
    ports: list[int] = []
    try:
        for _ in range(hops):
            process = subprocess.Popen([sys.executable, "-m", "devstack.ideal_relay", upstream],
                                       stdout=subprocess.PIPE, text=True)
            processes.append(process)
            line = process.stdout.readline() if process.stdout else ""
            if not line.startswith("listening "):
                raise RuntimeError(f"ideal relay in front of {upstream} did not start")
            ports.append(int(line.split()[1]))
            upstream = f"127.0.0.1:{ports[-1]}"
    except BaseException:
        stop_relays(processes)
        raise
    return processes, ports


def stop_relays(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


if __name__ == "__main__":
    host, _, port = sys.argv[1].rpartition(":")
    serve((host, int(port)))
