#!/usr/bin/env python3
"""LiveKit benchmark (issue 14): glass-to-glass latency through a LiveKit room, beside `castline
serve` direct, and castline's CPU while publishing.

    python3 bench/livekit.py [SECONDS]   # after `cargo build --release -p castline-cli` and
                                         # scripts/setup.sh (LiveKit server + Python client)

Both runs send `testsrc` 1280x720@30, 3 Mbit/s, veryfast, on loopback, for SECONDS (default 20):
- publish → LiveKit server → LiveKit's Python client (its Rust core and libwebrtc decode): the
  testsrc stamp read from each decoded frame (every third), against this machine's clock;
- serve → headless Chromium (libwebrtc), the stamp read from each presented frame.
The two receivers differ (Chromium adds its render/present step), so the LiveKit hop's cost is
bounded by the difference, not equal to it. CPU: castline's utime+stime from /proc over the
measured window. Prints markdown tables.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASTLINE = os.environ.get("CASTLINE", os.path.join(ROOT, "target/release/castline"))
PEER = os.path.join(ROOT, "crates/castline-cli/tests/browser/peer.mjs")
SUB = os.path.join(ROOT, "crates/castline-cli/tests/livekit/subscriber.py")
LK = os.environ.get("CASTLINE_LIVEKIT_SERVER",
                    os.path.expanduser("~/.cache/castline/livekit-bin/server"))
KEY, SECRET = "benchkey", "bench-secret-0123456789abcdefghijkl"
TICK = os.sysconf("SC_CLK_TCK")
SRC = ["--source", "testsrc", "--size", "1280x720", "--fps", "30", "--bitrate", "3M",
       "--preset", "veryfast", "--audio", "none", "--stats", "off"]


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def stop(p):
    p.send_signal(2)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()


def start_livekit():
    port, udp = free_port(), free_port(socket.SOCK_DGRAM)
    d = tempfile.mkdtemp(prefix="castline-lk-bench-")
    conf = os.path.join(d, "livekit.yaml")
    with open(conf, "w") as f:
        f.write(f"port: {port}\nbind_addresses: [127.0.0.1]\nlog_level: warn\nrtc:\n"
                f"  node_ip: 127.0.0.1\n  udp_port: {udp}\n  tcp_port: 0\n"
                "  use_external_ip: false\n  enable_loopback_candidate: true\n"
                "  stun_servers: [\"127.0.0.1:3478\"]\n  ips:\n    includes: [127.0.0.1/32]\n"
                f"keys:\n  {KEY}: {SECRET}\n")
    p = subprocess.Popen([LK, "--config", conf], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("LiveKit did not start")


def via_livekit(secs):
    lk, port = start_livekit()
    env = dict(os.environ, LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET)
    pub = subprocess.Popen([CASTLINE, "publish", f"livekit://127.0.0.1:{port}", "--room", "bench"]
                           + SRC, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        cpu = {}

        def measure():
            time.sleep(2)
            c0, t0 = cpu_seconds(pub.pid), time.time()
            time.sleep(secs - 3)
            cpu["pct"] = (cpu_seconds(pub.pid) - c0) / (time.time() - t0) * 100

        th = threading.Thread(target=measure)
        th.start()
        out = subprocess.run(["python3", SUB, "--url", f"ws://127.0.0.1:{port}", "--api-key", KEY,
                              "--api-secret", SECRET, "--room", "bench", "--seconds", str(secs),
                              "--stamps"], capture_output=True, text=True, timeout=secs + 60)
        th.join()
        s = next(json.loads(l) for l in out.stdout.splitlines() if '"summary"' in l)
        return s, cpu["pct"]
    finally:
        stop(pub)
        lk.kill()


def direct(secs):
    port = free_port()
    p = subprocess.Popen([CASTLINE, "serve", "--listen", f"127.0.0.1:{port}"] + SRC,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = next(m.group(1) for m in (re.match(r"castline: viewer URL (\S+)", l) for l in p.stdout)
                   if m)
        plan = {"steps": [
            {"op": "open", "id": "a", "url": url},
            {"op": "wait_frames", "id": "a", "n": 30, "timeout_ms": 15000},
            {"op": "sleep", "ms": 2000},
            {"op": "latency", "id": "a", "seconds": secs},
            {"op": "stats", "id": "a"},
        ]}
        cpu = {}

        def measure():
            time.sleep(6)
            c0, t0 = cpu_seconds(p.pid), time.time()
            time.sleep(secs - 3)
            cpu["pct"] = (cpu_seconds(p.pid) - c0) / (time.time() - t0) * 100

        th = threading.Thread(target=measure)
        th.start()
        out = subprocess.run(["node", PEER, json.dumps(plan)], capture_output=True, text=True,
                             timeout=secs + 90)
        th.join()
        res = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
        lat = next(r for r in res if r["op"] == "latency")
        st = next(r for r in res if r["op"] == "stats")
        return lat, st, cpu["pct"]
    finally:
        stop(p)


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    s, lk_cpu = via_livekit(secs)
    lat, st, d_cpu = direct(secs)
    print(f"### Glass-to-glass latency, testsrc 720p30 3 Mbit/s veryfast, {secs} s, loopback\n")
    print("| path | receiver | samples | p50 | p95 | frames | castline CPU (% of a core) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| publish → LiveKit 1.13.5 → subscriber | LiveKit Python client (libwebrtc) | "
          f"{s['latency_samples']} | {s.get('latency_p50_ms', '-')} ms | "
          f"{s.get('latency_p95_ms', '-')} ms | {s['frames']} | {lk_cpu:.1f} |")
    print(f"| serve → viewer (direct) | headless Chromium | {lat['samples']} | {lat['p50']:.1f} ms | "
          f"{lat['p95']:.1f} ms | {st['framesDecoded']} | {d_cpu:.1f} |")


if __name__ == "__main__":
    main()
