#!/usr/bin/env python3
"""Times GET PATH on a new connection each time, at a steady rate.

    probe.py HOST PORT PATH --rate N --start S --duration D

Probes start at S, S + 1/N, S + 2/N, ... seconds after launch (an absolute
schedule: a slow probe delays the next one, it does not shift the rest),
until S + D.  Each probe connects, sends one HTTP/1.1 request with
`Connection: close`, and reads the response to its end; its time runs from
before connect() to the last byte.  Prints one line per probe,
`<milliseconds> <status>` (status 0: no HTTP answer, e.g. refused or timed
out after 10 s), and exits 0.  Used by bench/nonblocking.sh while wrk
writes on the same server.
"""
import argparse
import socket
import sys
import time


def probe(host, port, request):
    t0 = time.perf_counter()
    status = 0
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(request)
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        head = b"".join(chunks).split(b"\r\n", 1)[0].split()
        if len(head) >= 2 and head[0].startswith(b"HTTP/") and head[1].isdigit():
            status = int(head[1])
    except OSError:
        status = 0
    return (time.perf_counter() - t0) * 1000.0, status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("path")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--start", type=float, default=0.0)
    ap.add_argument("--duration", type=float, required=True)
    a = ap.parse_args()
    request = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
               % (a.path, a.host, a.port)).encode()
    begin = time.monotonic() + a.start
    end = begin + a.duration
    interval = 1.0 / a.rate
    out = []
    i = 0
    while True:
        due = begin + i * interval
        if due >= end:
            break
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # pacing the probes, not waiting for a condition
        out.append("%.3f %d" % probe(a.host, a.port, request))
        i += 1
    sys.stdout.write("\n".join(out) + ("\n" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
