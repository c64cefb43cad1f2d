#!/usr/bin/env python3
"""A webhook receiver for Petrel's tests, with its own signature check (Python's hmac).

It verifies every POST the way docs/webhooks.md tells receivers to: the timestamp within the
tolerance, then `v1=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>` compared in constant
time (hmac.compare_digest) against each secret it knows. It appends one JSON line per request it
answered to --out:

  {"status": 200, "received_unix_ms": .., "webhook_id": .., "delivery_id": .., "timestamp": .., "signatures": n,
   "matched": [indexes of the --secret-file arguments whose signature is present],
   "body": <the parsed JSON body>}

With --summary (benchmarks), "body" is left out and "events" (how many) and "event_ts_ms" (each
event's timestamp_ms, in order) are written instead: the receiver's own cost stays small.

status is 401 (and body null) when no signature matches or the timestamp is out of tolerance.
A valid request is answered 200, unless the --mode-file says otherwise (read on every request):
"ok" (or no file) 200, "500" answers 500 (still logged, with status 500), "odd500" answers
500 to every second valid request it gets in that mode (the 2nd, 4th, ..: some deliveries of a
window accepted and some refused), "close" closes the
connection without an answer (not logged), "hold" logs the request with status 0, then keeps
the connection open without answering for HOLD_SECS and closes it (a sender that dies
meanwhile never learns the outcome).

Secrets come from files (one secret per file, re-read on every request, so a test can add the
new secret after a rotation), never from argv or the environment. TLS when --cert and --key are
given, else plain HTTP. With --port 0 the bound port is written to --port-file.

Usage: webhook_receiver.py --port-file F [--port 0] [--cert C --key K] --secret-file S
       [--secret-file S2] --out O [--mode-file M] [--tolerance-secs 300] [--summary]
"""

import argparse
import hashlib
import hmac
import http.server
import json
import os
import ssl
import sys
import threading
import time

BODY_MAX_BYTES = 16 << 20
HOLD_SECS = 20
LISTEN_BACKLOG = 128
TOLERANCE_SECS_DEFAULT = 300


def read_secret(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def verify(secrets, timestamp, body, header, tolerance_secs, now=None):
    """Returns the indexes of the secrets with a matching signature (empty: refuse)."""
    now = time.time() if now is None else now
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return []
    if abs(now - ts) > tolerance_secs:
        return []
    given = [p.strip()[3:] for p in (header or "").split(",") if p.strip().startswith("v1=")]
    signed = timestamp.encode() + b"." + body
    matched = []
    for i, secret in enumerate(secrets):
        if not secret:
            continue
        want = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(want, g) for g in given):
            matched.append(i)
    return matched


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the JSON lines are the log
        pass

    def do_POST(self):
        received_unix_ms = int(time.time() * 1000)
        cfg = self.server.cfg
        length = int(self.headers.get("Content-Length", "0"))
        if length < 0 or length > BODY_MAX_BYTES:
            self.answer(413)
            return
        body = self.rfile.read(length)
        mode = "ok"
        if cfg.mode_file:
            try:
                with open(cfg.mode_file, "r", encoding="utf-8") as f:
                    mode = f.read().strip() or "ok"
            except FileNotFoundError:
                pass
        if mode == "close":
            self.close_connection = True
            self.connection.close()
            return
        secrets = [read_secret(p) for p in cfg.secret_file]
        header = self.headers.get("X-Petrel-Signature", "")
        matched = verify(
            secrets, self.headers.get("X-Petrel-Timestamp", ""), body, header, cfg.tolerance_secs
        )
        if not matched:
            status = 401
        elif mode == "odd500":
            with self.server.lock:
                self.server.odd_count += 1
                status = 500 if self.server.odd_count % 2 == 0 else 200
        else:
            status = {"500": 500, "hold": 0}.get(mode, 200)
        record = {
            "status": status,
            "received_unix_ms": received_unix_ms,
            "webhook_id": self.headers.get("X-Petrel-Webhook-Id"),
            "delivery_id": self.headers.get("X-Petrel-Delivery-Id"),
            "timestamp": self.headers.get("X-Petrel-Timestamp"),
            "content_type": self.headers.get("Content-Type"),
            "signatures": len([p for p in header.split(",") if p.strip()]),
            "matched": matched,
        }
        parsed = json.loads(body) if matched else None
        if cfg.summary:
            events = (parsed or {}).get("events", [])
            record["events"] = len(events)
            record["event_ts_ms"] = [e.get("timestamp_ms") for e in events]
        else:
            record["body"] = parsed
        with self.server.lock:
            with open(cfg.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if status == 0:
            time.sleep(HOLD_SECS)
            self.close_connection = True
            return
        self.answer(status)

    def answer(self, status):
        payload = b'{"ok": true}' if status == 200 else b'{"ok": false}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", help="where the bound port is written")
    p.add_argument("--cert", help="PEM certificate chain (TLS)")
    p.add_argument("--key", help="PEM private key (TLS)")
    p.add_argument("--secret-file", action="append", required=True)
    p.add_argument("--out", required=True, help="JSON lines, one per answered request")
    p.add_argument("--mode-file", help='"ok", "500", "close" or "hold", read on every request')
    p.add_argument("--tolerance-secs", type=int, default=TOLERANCE_SECS_DEFAULT)
    p.add_argument("--summary", action="store_true", help="log event counts and timestamps, not bodies")
    cfg = p.parse_args()
    # The listen backlog: socketserver's default (5) drops the SYNs of a burst of concurrent
    # deliveries, which the sender's TCP then retries only after a second.
    http.server.ThreadingHTTPServer.request_queue_size = LISTEN_BACKLOG
    server = http.server.ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    server.daemon_threads = True
    server.cfg = cfg
    server.lock = threading.Lock()
    server.odd_count = 0
    if cfg.cert and cfg.key:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cfg.cert, cfg.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    elif cfg.cert or cfg.key:
        sys.exit("--cert and --key go together")
    port = server.server_address[1]
    if cfg.port_file:
        tmp = cfg.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(port))
        os.replace(tmp, cfg.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
