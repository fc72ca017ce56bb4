#!/usr/bin/env python3
"""WebRTC benchmark (issue 4): glass-to-glass latency and CPU per added viewer.

    python3 bench/webrtc.py [SECONDS]      # after `cargo build --release -p castline-cli`

Latency: `castline serve --source testsrc` → headless Chromium on loopback; the page reads the
capture time testsrc embeds in each displayed frame (requestVideoFrameCallback + canvas) and
subtracts it from the presentation time: capture → convert → encode → packetize → UDP → jitter
buffer → decode → present. p50/p95/max over SECONDS (default 30) at 1080p30 and 720p60.
CPU per viewer: castline's own CPU (utime+stime from /proc) while 0, 1, 2 and 4 Chromium viewers
watch a 720p30 stream; the browser's CPU is not counted. Prints markdown tables.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASTLINE = os.path.join(ROOT, "target/release/castline")
PEER = os.path.join(ROOT, "crates/castline-cli/tests/browser/peer.mjs")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def serve(args):
    port = free_port()
    p = subprocess.Popen(
        [CASTLINE, "serve", "--listen", f"127.0.0.1:{port}", "--audio", "none", "--stats", "off"]
        + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in p.stdout:
        m = re.match(r"castline: viewer URL (\S+)", line)
        if m:
            return p, m.group(1)
    raise RuntimeError("castline serve printed no URL")


def stop(p):
    p.send_signal(2)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def latency(size, fps, preset, secs):
    p, url = serve(["--source", "testsrc", "--size", size, "--fps", str(fps), "--preset", preset])
    try:
        plan = {"steps": [
            {"op": "open", "id": "a", "url": url},
            {"op": "wait_frames", "id": "a", "n": 30, "timeout_ms": 15000},
            {"op": "sleep", "ms": 2000},
            {"op": "latency", "id": "a", "seconds": secs},
            {"op": "stats", "id": "a"},
        ]}
        out = subprocess.run(["node", PEER, json.dumps(plan)], capture_output=True, text=True,
                             timeout=secs + 90)
        res = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
        lat = next(r for r in res if r["op"] == "latency")
        st = next(r for r in res if r["op"] == "stats")
        return lat, st
    finally:
        stop(p)


def cpu_per_viewer(secs):
    p, url = serve(["--source", "testsrc", "--size", "1280x720", "--fps", "30"])
    rows = []
    node = None
    try:
        for n in [0, 1, 2, 4]:
            if node:
                node.kill()
                node.wait()
                node = None
            if n:
                steps = [{"op": "open", "id": f"v{i}", "url": url, "shared": True} for i in range(n)]
                steps += [{"op": "wait_frames", "id": f"v{i}", "n": 30, "timeout_ms": 20000}
                          for i in range(n)]
                steps += [{"op": "sleep", "ms": (secs + 30) * 1000}]
                node = subprocess.Popen(["node", PEER, json.dumps({"steps": steps})],
                                        stdout=subprocess.PIPE, text=True)
                ok = 0
                for line in node.stdout:
                    r = json.loads(line)
                    if r["op"] == "wait_frames":
                        ok += 1 if r.get("ok") else 0
                        if ok == n or not r.get("ok"):
                            break
                if ok != n:
                    raise RuntimeError(f"only {ok} of {n} viewers decoded")
            time.sleep(2)
            c0, t0 = cpu_seconds(p.pid), time.time()
            time.sleep(secs)
            c1, t1 = cpu_seconds(p.pid), time.time()
            rows.append((n, (c1 - c0) / (t1 - t0) * 100))
    finally:
        if node:
            node.kill()
        stop(p)
    return rows


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    print(f"### WebRTC glass-to-glass latency, {secs} s per run (loopback, headless Chromium)\n")
    print("| stream | preset | samples | p50 | p95 | max | frames decoded | lost |")
    print("|---|---|---|---|---|---|---|---|")
    for size, fps in [("1920x1080", 30), ("1280x720", 60)]:
        for preset in ["veryfast", "ultrafast"]:
            lat, st = latency(size, fps, preset, secs)
            print(f"| {size}@{fps} | {preset} | {lat['samples']} | {lat['p50']:.1f} ms | "
                  f"{lat['p95']:.1f} ms | {lat['max']:.1f} ms | {st['framesDecoded']} | "
                  f"{st['packetsLost']} |", flush=True)
    print(f"\n### castline CPU per viewer, 720p30 veryfast, {min(secs, 20)} s per step\n")
    print("| viewers | castline CPU (% of one core) | added per viewer vs 0 |")
    print("|---|---|---|")
    rows = cpu_per_viewer(min(secs, 20))
    base = rows[0][1]
    for n, pct in rows:
        per = "" if n == 0 else f"{(pct - base) / n:+.2f} %"
        print(f"| {n} | {pct:.1f} % | {per} |", flush=True)


if __name__ == "__main__":
    main()
