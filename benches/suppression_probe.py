#!/usr/bin/env python3
"""Time from a hard bounce at the sink to the refusal of that address at RCPT (bench-suppression.sh).

For each sample: relay one message from the trusted network to u<i>@bounce.test (the sink answers
550 5.1.1), wait for the engine's `bounced` event at the control plane, then probe RCPT every
10 ms until it is refused with 550 5.7.1. Prints "median max" in ms, measured from the event's
timestamp_ms (the engine's clock, the same machine) to the refusal. Bounded: 60 s per sample.
"""
import argparse, json, smtplib, statistics, sys, time, urllib.request

p = argparse.ArgumentParser()
p.add_argument("--smtp"); p.add_argument("--api"); p.add_argument("--key")
p.add_argument("--samples", type=int, default=20); p.add_argument("--tag", default="x")
p.add_argument("--delivered", type=int, default=0,
               help="first wait until the control plane counts this many delivered (the run's events)")
a = p.parse_args()
host, port = a.smtp.rsplit(":", 1)
FROM = "bench@petrel-load.test"

def event_ts(rcpt):
    q = f"{a.api}/v1/events?type=bounced&recipient={rcpt}&limit=1"
    req = urllib.request.Request(q, headers={"Authorization": f"Bearer {a.key}"})
    ev = json.load(urllib.request.urlopen(req, timeout=10))["events"]
    return ev[0]["timestamp_ms"] if ev else None

def rcpt_code(rcpt):
    with smtplib.SMTP(host, int(port), timeout=10) as s:
        s.ehlo("probe.test"); s.mail(FROM)
        code, _ = s.rcpt(rcpt)
        return code

def delivered():
    req = urllib.request.Request(f"{a.api}/v1/stats", headers={"Authorization": f"Bearer {a.key}"})
    return json.load(urllib.request.urlopen(req, timeout=10))["totals"]["counts"]["delivered"]

# The load run's events may still be on their way to the control plane: a bounce now would wait
# behind them. Say how long they took, then sample on the drained path (the first sample is
# also taken without waiting, below, when --delivered is 0).
if a.delivered:
    t0 = time.time()
    while delivered() < a.delivered:
        if time.time() - t0 > 120:
            sys.exit("the run's events never all arrived")
        time.sleep(0.01)
    print("the run's events at the control plane %.0f ms after the last delivery" % ((time.time() - t0) * 1000),
          file=sys.stderr)

out = []
for i in range(a.samples):
    rcpt = f"u{a.tag}-{i}@bounce.test"
    with smtplib.SMTP(host, int(port), timeout=10) as s:
        s.sendmail(FROM, [rcpt], f"From: <{FROM}>\r\nSubject: probe\r\n\r\nbody\r\n")
    deadline = time.time() + 60
    while True:
        if rcpt_code(rcpt) == 550:
            refused_ms = time.time() * 1000
            break
        if time.time() > deadline:
            sys.exit(f"{rcpt} never refused")
        time.sleep(0.01)
    ts = None
    while ts is None and time.time() < deadline:
        ts = event_ts(rcpt)
        if ts is None:
            time.sleep(0.05)
    if ts is None:
        sys.exit(f"no bounced event for {rcpt}")
    out.append(refused_ms - ts)
# Every sample, in order, on stderr (the bench log): which one is slow says why.
print("samples ms: " + " ".join("%.0f" % x for x in out), file=sys.stderr)
print("%.0f %.0f" % (statistics.median(out), max(out)))
