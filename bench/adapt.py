#!/usr/bin/env python3
"""Adaptive-quality benchmark (issue 13): a viewer behind a link capped mid-run.

    sudo python3 bench/adapt.py [CAP_SECONDS]    # after `cargo build --release -p castline-cli`

`castline serve` (testsrc:noise 640x360 at 30 fps, 5 Mbit/s, ultrafast) runs in one network
namespace, headless Chromium in another; after 10 s the link between them is capped at 1.5 Mbit/s
with `tc tbf` for CAP_SECONDS (default 20), then lifted for 25 s. Second by second: what castline
sent the viewer (kbit/s, from its JSON stats), the viewer's decoded fps and size (getStats) and
the glass-to-glass latency p95 (testsrc's embedded capture time, read from each displayed frame).
Reports time to adapt (sent rate under the cap), time to recover (sent ≥ 4 Mbit/s), fps, longest
stall and latency p95 while capped.

Not measured yet: libwebrtc doing the same job side by side (Chromium sending a canvas
captureStream() through the same capped link) — see bench/RESULTS.md.
"""
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASTLINE = os.environ.get("CASTLINE", os.path.join(ROOT, "target/release/castline"))
PEER = os.path.join(ROOT, "crates/castline-cli/tests/browser/peer.mjs")
A, B = "clb-adapt-a", "clb-adapt-b"
IP_A, IP_B = "10.203.1.1", "10.203.1.2"


def sh(*args):
    subprocess.run(args, check=True)


def netns_up():
    for ns in (A, B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", A, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", B)
    sh("ip", "-n", A, "addr", "add", IP_A + "/24", "dev", "va")
    sh("ip", "-n", B, "addr", "add", IP_B + "/24", "dev", "vb")
    sh("ip", "-n", A, "link", "set", "va", "up")
    sh("ip", "-n", B, "link", "set", "vb", "up")


def netns_down():
    for ns in (A, B):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for p in pids.split():
            subprocess.run(["kill", "-9", p])
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def tc(*args):
    sh("ip", "netns", "exec", A, "tc", "qdisc", *args)


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))] if xs else None


def main():
    cap_s = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    before, after = 10.0, 25.0
    netns_up()
    try:
        log = open("/tmp/castline-adapt-bench.log", "w+")
        srv = subprocess.Popen(
            ["ip", "netns", "exec", A, CASTLINE, "serve", "--listen", IP_A + ":8080",
             "--token", "benchtoken", "--source", "testsrc:noise", "--size", "640x360",
             "--fps", "30", "--bitrate", "5M", "--preset", "ultrafast", "--audio", "none",
             "--stats", "json"],
            stdout=subprocess.PIPE, stderr=log, text=True)
        srv.stdout.readline()  # the viewer URL: the pipeline clock's zero
        t0 = time.time()
        plan = {"steps": [
            {"op": "open", "id": "v", "url": f"http://{IP_A}:8080/?token=benchtoken"},
            {"op": "wait_frames", "id": "v", "n": 30, "timeout_ms": 15000},
            {"op": "monitor", "id": "v", "seconds": before + cap_s + after, "latency": True},
        ]}
        out = {}

        def viewer():
            r = subprocess.run(["ip", "netns", "exec", B, "node", PEER, json.dumps(plan)],
                               capture_output=True, text=True)
            out["lines"] = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]

        th = threading.Thread(target=viewer)
        th.start()
        time.sleep(before + 3)
        cap_at = time.time()
        tc("replace", "dev", "va", "root", "tbf", "rate", "1.5mbit", "burst", "20kb",
           "latency", "100ms")
        time.sleep(cap_s)
        lift_at = time.time()
        tc("del", "dev", "va", "root")
        th.join()
        srv.send_signal(2)
        srv.wait(timeout=20)
        log.seek(0)
        stats = [json.loads(l) for l in log if l.startswith("{")]
    finally:
        netns_down()

    mon = next(l for l in out["lines"] if l.get("op") == "monitor")
    series, lat = mon["series"], mon.get("latency") or []

    def sent(s):
        peers = s["outputs"][0].get("peers") or []
        return peers[0]["bitrate_kbps"] if peers else 0.0

    rows = []
    for s in stats:
        t = t0 + s["time_s"]
        win = [x for x in series if t - 1 <= x[0] / 1000 < t]
        fps = (win[-1][1] - win[0][1]) if len(win) > 1 else 0
        size = f"{win[-1][2]}x{win[-1][3]}" if win else "-"
        l95 = p95([ms for (u, ms) in lat if t - 1 <= u / 1000 < t])
        phase = "capped" if cap_at <= t < lift_at else ("after" if t >= lift_at else "before")
        rows.append((s["time_s"], phase, sent(s), fps, size, l95))
    print("| t (s) | link | sent kbit/s | viewer fps | size | latency p95 ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]:.0f} | {r[1]} | {r[2]:.0f} | {r[3]} | {r[4]} | {r[5] if r[5] is not None else '-'} |")
    adapted = next((t for (t, ph, k, *_r) in rows if ph == "capped" and k < 1500), None)
    recovered = next((t for (t, ph, k, *_r) in rows if ph == "after" and k >= 4000), None)
    cap_rel, lift_rel = cap_at - t0, lift_at - t0
    capped_frames = [x for x in series if cap_at + 5 <= x[0] / 1000 < lift_at]
    stall, last_t, last_n = 0, None, None
    for (u, n, _w, _h) in capped_frames:
        if n != last_n:
            last_t, last_n = u, n
        stall = max(stall, u - last_t)
    fps_capped = ((capped_frames[-1][1] - capped_frames[0][1]) / (lift_at - cap_at - 5)
                  if capped_frames else 0)
    lat_capped = p95([ms for (u, ms) in lat if cap_at + 5 <= u / 1000 < lift_at])
    print()
    print(f"time to adapt (sent < 1.5 Mbit/s): "
          f"{(adapted - cap_rel) if adapted else float('nan'):.1f} s; "
          f"time to recover (sent >= 4 Mbit/s): "
          f"{(recovered - lift_rel) if recovered else float('nan'):.1f} s; "
          f"while capped (from cap + 5 s): {fps_capped:.1f} fps, longest stall {stall} ms, "
          f"latency p95 {lat_capped} ms")


if __name__ == "__main__":
    main()
