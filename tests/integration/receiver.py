#!/usr/bin/env python3
"""A webhook receiver for the integration tests of cairnloop.webhook.

It checks what a real receiver checks, on its own (Python's hmac, not the
engine's code): the Standard Webhooks signature of every request under the
secrets it was given, and that the timestamp is within the tolerance.  It
records each request and answers as scripted.

    receiver.py --port-file F [--secret whsec_...]... [--delay-ms N]
                [--delay-max-ms N] [--status N] [--parent-pid PID]
                [--max-lifetime S] [--tolerance S]
    receiver.py --self-test      checks the verification against the
                                 specification's test vector, then exits

It listens on 127.0.0.1 (port 0 unless --port), writes the port to the
port file once it accepts connections, and exits when --parent-pid is gone
or after --max-lifetime seconds, whichever comes first.

Endpoints (anything else is a delivery):
    GET  /_stats     counts, as one JSON object (see Receiver.stats)
    GET  /_ids       per webhook-id: requests, attempts, statuses, arrival times
    GET  /_requests  every request recorded, in arrival order
    POST /_control   JSON changing the behaviour; keys (all optional):
        delay_ms, delay_max_ms   answer after a delay (uniform in the range)
        status                   the status to answer (default 200)
        retry_after              a Retry-After header to send with it
        hang                     true: never answer (until the client leaves)
        by_template              { template_id: [step, ...] }
        by_id                    { webhook_id: [step, ...] }
        reset                    true: forget every request recorded
    A step is { "status": N, "retry_after": "2" | "<HTTP date>",
    "retry_after_in": S (an HTTP date S seconds from now), "delay_ms": N,
    "hang": true }; the n-th request for a webhook-id takes step n (the last
    step repeats).  by_id wins over by_template, which wins over the default.

A request whose signature does not verify is answered 401 (and recorded as
invalid), as a receiver following the specification would.
"""
import argparse
import base64
import email.utils
import hashlib
import hmac
import json
import os
import random
import select
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The Standard Webhooks specification's own example.
VECTOR = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "timestamp": "1614265330",
    "body": b'{"test": 2432232314}',
    "signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}

# How long a hung request waits for its client to leave before giving up.
MAX_HANG_S = 120


def decode_secret(secret):
    if not secret.startswith("whsec_"):
        raise ValueError("secret must start with whsec_")
    return base64.b64decode(secret[len("whsec_"):], validate=True)


def sign(key, msg_id, timestamp, body):
    mac = hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def verify(keys, msg_id, timestamp, signature_header, body, tolerance, now=None):
    """Returns None when the request verifies, else why not."""
    if not msg_id or not timestamp or not signature_header:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    try:
        ts = int(timestamp)
    except ValueError:
        return "webhook-timestamp is not an integer"
    if now is not None and abs(now - ts) > tolerance:
        return "webhook-timestamp %d is %d s away from now" % (ts, now - ts)
    expected = [sign(k, msg_id, timestamp, body) for k in keys]
    for entry in signature_header.split(" "):
        version, _, sig = entry.partition(",")
        if version != "v1":
            continue
        for e in expected:
            if hmac.compare_digest(e, sig):
                return None
    return "no signature matches"


def self_test():
    key = decode_secret(VECTOR["secret"])
    got = "v1," + sign(key, VECTOR["id"], VECTOR["timestamp"], VECTOR["body"])
    ok = got == VECTOR["signature"]
    ok = ok and verify([key], VECTOR["id"], VECTOR["timestamp"], "v1,bm9wZQ== " + VECTOR["signature"],
                       VECTOR["body"], 300, now=int(VECTOR["timestamp"]) + 10) is None
    # Each of these must fail: a changed body, a wrong key, a stale timestamp.
    ok = ok and verify([key], VECTOR["id"], VECTOR["timestamp"], VECTOR["signature"],
                       b'{"test": 2432232315}', 300) is not None
    ok = ok and verify([b"other key"], VECTOR["id"], VECTOR["timestamp"], VECTOR["signature"],
                       VECTOR["body"], 300) is not None
    ok = ok and verify([key], VECTOR["id"], VECTOR["timestamp"], VECTOR["signature"],
                       VECTOR["body"], 300, now=int(VECTOR["timestamp"]) + 301) is not None
    print("signature of the test vector: %s (%s)" % (got, "ok" if ok else "MISMATCH"))
    return 0 if ok else 1


class Receiver:
    """The shared state of the handlers, under one lock."""

    def __init__(self, args):
        self.lock = threading.Lock()
        self.keys = [decode_secret(s) for s in args.secret]
        self.tolerance = args.tolerance
        self.behaviour = {
            "delay_ms": args.delay_ms, "delay_max_ms": args.delay_max_ms, "status": args.status,
            "retry_after": None, "hang": False, "by_template": {}, "by_id": {},
        }
        self.reset()

    def reset(self):
        self.requests = []
        self.ids = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def control(self, change):
        with self.lock:
            if change.pop("reset", False):
                self.reset()
            for k, v in change.items():
                if k not in self.behaviour:
                    raise ValueError("unknown control key %r" % k)
                self.behaviour[k] = v

    def enter(self):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self):
        with self.lock:
            self.in_flight -= 1

    def step_for(self, msg_id, template_id):
        """What to answer the request for msg_id, counting it."""
        with self.lock:
            b = self.behaviour
            entry = self.ids.setdefault(msg_id, {"requests": 0, "ok": 0, "attempts": [],
                                                 "statuses": [], "at": [], "valid": []})
            n = entry["requests"]
            entry["requests"] += 1
            script = b["by_id"].get(msg_id) or b["by_template"].get(template_id or "")
            if script:
                step = dict(script[min(n, len(script) - 1)])
            else:
                step = {"status": b["status"], "retry_after": b["retry_after"], "hang": b["hang"]}
            if "delay_ms" not in step:
                lo = b["delay_ms"]
                hi = max(lo, b["delay_max_ms"] or 0)
                step["delay_ms"] = random.uniform(lo, hi) if hi > lo else lo
            return step

    def record(self, rec):
        with self.lock:
            self.requests.append(rec)
            entry = self.ids.get(rec["webhook_id"])
            if entry is not None:
                entry["attempts"].append(rec["attempt"])
                entry["statuses"].append(rec["status"])
                entry["at"].append(rec["at"])
                entry["valid"].append(rec["valid"])
                if rec["answered"] and 200 <= rec["status"] < 300:
                    entry["ok"] += 1

    def stats(self):
        with self.lock:
            by_status = {}
            for r in self.requests:
                key = str(r["status"]) if r["answered"] else "unanswered"
                by_status[key] = by_status.get(key, 0) + 1
            ok_counts = [e["ok"] for e in self.ids.values()]
            return {
                "requests": len(self.requests),
                "valid": sum(1 for r in self.requests if r["valid"]),
                "invalid": sum(1 for r in self.requests if not r["valid"]),
                "invalid_reasons": sorted({r["invalid"] for r in self.requests if r["invalid"]}),
                "bad_body": sum(1 for r in self.requests if r["bad_body"]),
                "by_status": by_status,
                "ids": len(self.ids),
                "ids_ok": sum(1 for n in ok_counts if n > 0),
                # Ids answered 2xx more than once: deliveries the receiver
                # had to drop as repeats.
                "duplicates": sum(1 for n in ok_counts if n > 1),
                "max_requests_per_id": max((e["requests"] for e in self.ids.values()), default=0),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "abandoned": sum(1 for r in self.requests if r["abandoned"]),
            }


def make_handler(rcv):
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as the engine's client reuses connections.
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def reply_json(self, value):
            self.reply(200, json.dumps(value).encode(), [("Content-Type", "application/json")])

        def do_GET(self):
            if self.path == "/_stats":
                self.reply_json(rcv.stats())
            elif self.path == "/_ids":
                with rcv.lock:
                    snapshot = json.loads(json.dumps(rcv.ids))
                self.reply_json(snapshot)
            elif self.path == "/_requests":
                with rcv.lock:
                    snapshot = list(rcv.requests)
                self.reply_json(snapshot)
            else:
                self.reply(404)

        def read_body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n > 0 else b""

        def do_POST(self):
            body = self.read_body()
            if self.path == "/_control":
                try:
                    rcv.control(json.loads(body or b"{}"))
                except (ValueError, TypeError) as e:
                    self.reply(400, str(e).encode())
                    return
                self.reply_json({"ok": True})
                return
            rcv.enter()
            try:
                self.deliver(body)
            finally:
                rcv.leave()

        # Waits until the client closes the connection (or MAX_HANG_S);
        # True when it did.
        def wait_for_close(self, limit):
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                r, _, _ = select.select([self.connection], [], [], 0.05)
                if r:
                    try:
                        if not self.connection.recv(1, 0x2):  # MSG_PEEK: EOF?
                            return True
                    except OSError:
                        return True
            return False

        def deliver(self, body):
            arrived = time.time()
            h = self.headers
            msg_id = h.get("webhook-id") or ""
            invalid = verify(rcv.keys, msg_id, h.get("webhook-timestamp"), h.get("webhook-signature"),
                             body, rcv.tolerance, now=int(arrived))
            event, data, bad_body = {}, {}, None
            try:
                event = json.loads(body)
                data = event["data"]
                if event.get("type") != "message.outbound" or not isinstance(data, dict):
                    bad_body = "not a message.outbound event"
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                bad_body = "body: %s" % e
            if not isinstance(event, dict):
                event = {}
            if not isinstance(data, dict):
                data = {}
            if h.get("Content-Type") != "application/json":
                bad_body = "Content-Type %r" % h.get("Content-Type")
            step = rcv.step_for(msg_id, data.get("template_id"))
            rec = {
                "webhook_id": msg_id, "attempt": data.get("attempt"),
                "message_id": data.get("message_id"), "template_id": data.get("template_id"),
                "content": data.get("content"), "data": data,
                "type": event.get("type"), "event_time": event.get("timestamp"),
                "timestamp": h.get("webhook-timestamp"),
                "signature": h.get("webhook-signature"), "user_agent": h.get("User-Agent"),
                "extra_header": h.get("x-test-header"),
                "valid": invalid is None, "invalid": invalid, "bad_body": bad_body,
                "at": arrived, "status": 0, "answered": False, "abandoned": False,
            }
            try:
                if step.get("hang"):
                    rec["abandoned"] = self.wait_for_close(MAX_HANG_S)
                    self.close_connection = True
                    return
                if step.get("delay_ms"):
                    time.sleep(step["delay_ms"] / 1000.0)
                headers = []
                status = step.get("status") or 200
                if invalid is not None:
                    status = 401
                elif step.get("retry_after_in") is not None:
                    headers.append(("Retry-After", email.utils.formatdate(
                        time.time() + step["retry_after_in"], usegmt=True)))
                elif step.get("retry_after") is not None:
                    headers.append(("Retry-After", str(step["retry_after"])))
                rec["status"] = status
                try:
                    text = ("%d %s" % (status, invalid or "from the test receiver")).encode()
                    self.reply(status, text, headers)
                    self.wfile.flush()
                    rec["answered"] = True
                except OSError:
                    self.close_connection = True
            finally:
                rcv.record(rec)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Up to a hundred connections open at once (two workers at
    # concurrency 50): a short backlog would drop SYNs and cost a
    # second's retransmit each.
    request_queue_size = 256
    allow_reuse_address = True


def watchdog(parent_pid, max_lifetime):
    """Ends the process when the test that started it is gone."""
    deadline = time.monotonic() + max_lifetime
    while time.monotonic() < deadline:
        if parent_pid:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
        time.sleep(0.2)
    os._exit(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--secret", action="append", default=[])
    ap.add_argument("--tolerance", type=int, default=300)
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("--delay-max-ms", type=float, default=0)
    ap.add_argument("--status", type=int, default=200)
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument("--max-lifetime", type=float, default=600)
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if not args.port_file:
        ap.error("--port-file is required")
    rcv = Receiver(args)
    server = Server(("127.0.0.1", args.port), make_handler(rcv))
    threading.Thread(target=watchdog, args=(args.parent_pid, args.max_lifetime), daemon=True).start()
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % server.server_address[1])
    os.rename(tmp, args.port_file)
    server.serve_forever(poll_interval=0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
