#!/usr/bin/env python3
"""Samples a process's memory every 10 ms until SIGTERM, then writes its peaks in KiB:
`<anonymous> <resident incl. mapped file pages> <file pages> <anonymous at the start>`
(RssAnon, VmRSS, RssFile of /proc/PID/status). Usage: memwatch.py PID OUT"""
import signal, sys, time

pid, out = sys.argv[1], sys.argv[2]
peak = {"RssAnon": 0, "VmRSS": 0, "RssFile": 0}
start = None

def done(*_):
    with open(out, "w") as f:
        f.write("%d %d %d %d\n" % (peak["RssAnon"], peak["VmRSS"], peak["RssFile"], start or 0))
    sys.exit(0)

signal.signal(signal.SIGTERM, done)
while True:
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in peak:
                    peak[key] = max(peak[key], int(value.split()[0]))
                    if key == "RssAnon" and start is None:
                        start = peak[key]
    except OSError:
        done()
    time.sleep(0.01)
