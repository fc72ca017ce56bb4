#!/usr/bin/env python3
"""Zero-hertz benchmark (issue 15): what a still or nearly still screen costs.

    python3 bench/zero_hertz.py [SECONDS]   # after `cargo build --release -p castline-cli`

A 1920x1080 Xvfb screen with textured content (castline-testkit `content --static`), shared at
30 fps for SECONDS (default 20), in two cases:
- still: nothing changes;
- typing: a 400x60 text line into which 10 characters a second are typed (`typing`), the rest
  still.
Each case runs, one after the other on the same screen:
- castline `serve` with one headless Chromium viewer (WebRTC: zero-hertz applies; the browser's
  CPU is not counted), and castline `record --vfr` (a zero-hertz recording);
- castline `record` (constant frame rate, as before zero-hertz);
- ffmpeg x11grab → libx264 → MP4 and GStreamer ximagesrc → x264enc → MP4, the tools a user would
  pick instead (both constant rate: neither has a zero-hertz mode).
CPU is user+sys of the capturing process over the run (castline serve: from /proc over the
measured window). All encode libx264 veryfast, zerolatency, 5 Mbit/s. Prints a markdown table.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target/release")
CASTLINE = os.environ.get("CASTLINE", os.path.join(REL, "castline"))
TESTKIT = os.environ.get("TESTKIT", os.path.join(REL, "castline-testkit"))
PEER = os.path.join(ROOT, "crates/castline-cli/tests/browser/peer.mjs")
TICK = os.sysconf("SC_CLK_TCK")
W, H, FPS = 1920, 1080, 30


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def timed(cmd, env):
    """Run to the end; user+sys CPU seconds from /usr/bin/time."""
    out = tempfile.mktemp()
    subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", out] + cmd, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    u, s = open(out).read().split()[-2:]
    return float(u) + float(s)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def serve_cpu(env, secs):
    port = free_port()
    p = subprocess.Popen([CASTLINE, "serve", "--listen", f"127.0.0.1:{port}", "--fps", str(FPS),
                          "--bitrate", "5M", "--preset", "veryfast", "--audio", "none",
                          "--no-cursor", "--encoder", "x264", "--stats", "off"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = next(m.group(1) for m in (re.match(r"castline: viewer URL (\S+)", l) for l in p.stdout)
               if m)
    plan = {"steps": [
        {"op": "open", "id": "a", "url": url},
        {"op": "wait_frames", "id": "a", "n": 10, "timeout_ms": 15000},
        {"op": "sleep", "ms": (secs + 8) * 1000},
        {"op": "stats", "id": "a"},
    ]}
    node = subprocess.Popen(["node", PEER, json.dumps(plan)], stdout=subprocess.PIPE, text=True,
                            env=env)
    node.stdout.readline()
    node.stdout.readline()  # the viewer decodes
    time.sleep(3)
    c0 = cpu_seconds(p.pid)
    time.sleep(secs)
    cpu = cpu_seconds(p.pid) - c0
    node.kill()
    p.send_signal(2)
    p.wait(20)
    return cpu


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    disp = f":{150 + os.getpid() % 100}"
    xvfb = subprocess.Popen(["Xvfb", disp, "-screen", "0", f"{W}x{H}x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    env = dict(os.environ, DISPLAY=disp)
    out = tempfile.mkdtemp(prefix="castline-zh-")
    procs = [subprocess.Popen([TESTKIT, "content", "--static"], env=env)]
    time.sleep(1.5)
    rows = []
    try:
        for case in ["still", "typing"]:
            if case == "typing":
                procs.append(subprocess.Popen([TESTKIT, "typing", "--at", "300,300", "--cps", "10"],
                                              env=env))
                time.sleep(1)
            rec = [CASTLINE, "record", "--fps", str(FPS), "--bitrate", "5M", "--preset",
                   "veryfast", "--duration", str(secs), "--no-cursor", "--audio", "none",
                   "--encoder", "x264", "--stats", "off"]
            r = {"case": case}
            r["serve"] = serve_cpu(env, secs)
            r["vfr"] = timed(rec[:2] + [f"{out}/{case}-vfr.mp4", "--vfr"] + rec[2:], env)
            r["cfr"] = timed(rec[:2] + [f"{out}/{case}-cfr.mp4"] + rec[2:], env)
            r["ffmpeg"] = timed(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "x11grab",
                                 "-framerate", str(FPS), "-video_size", f"{W}x{H}", "-draw_mouse",
                                 "0", "-i", disp, "-t", str(secs), "-c:v", "libx264", "-preset",
                                 "veryfast", "-tune", "zerolatency", "-b:v", "5M", "-maxrate",
                                 "5M", "-bufsize", "5M", "-pix_fmt", "yuv420p",
                                 f"{out}/{case}-ffmpeg.mp4"], env)
            r["gst"] = timed(["timeout", "-s", "INT", str(secs * 3), "gst-launch-1.0", "-q", "-e",
                              "ximagesrc", "use-damage=false", "show-pointer=false",
                              f"num-buffers={FPS * secs}", "!", f"video/x-raw,framerate={FPS}/1",
                              "!", "videoconvert", "!", "video/x-raw,format=I420", "!", "x264enc",
                              "speed-preset=veryfast", "tune=zerolatency", "bitrate=5000", "!",
                              "mp4mux", "!", "filesink", f"location={out}/{case}-gst.mp4"], env)
            frames = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams",
                                     "v:0", "-show_entries", "stream=nb_read_frames", "-of",
                                     "csv=p=0", f"{out}/{case}-vfr.mp4"], capture_output=True,
                                    text=True).stdout.strip()
            r["vfr_frames"] = frames
            rows.append(r)
    finally:
        for p in procs:
            p.kill()
        xvfb.kill()
    print(f"### 1920x1080 at {FPS} fps, {secs} s, libx264 veryfast 5 Mbit/s: CPU seconds "
          "(ratio to ffmpeg)\n")
    print("| screen | castline serve + 1 viewer (zero-hertz) | castline record --vfr (frames) | "
          "castline record (CFR) | ffmpeg | GStreamer | serve vs ffmpeg | serve vs GStreamer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, g = r["ffmpeg"], r["gst"]
        print(f"| {r['case']} | {r['serve']:.2f} s | {r['vfr']:.2f} s ({r['vfr_frames']}) | "
              f"{r['cfr']:.2f} s | {f:.2f} s | {g:.2f} s | {r['serve'] / f:.3f}× | "
              f"{r['serve'] / g:.3f}× |")


if __name__ == "__main__":
    main()
