#!/usr/bin/env python3
"""Soak benchmark (issue 19): every output at once for a long run.

    python3 bench/soak.py [SECONDS]     # default 900; after `cargo build --release -p castline-cli`

`castline serve` (testsrc 1280x720@30, system audio from a private PulseAudio daemon playing a
tone) with `-o soak.mp4` and `-o rtmp://…` to a loopback nginx-rtmp, one Chromium viewer that
watches throughout and, beside it, viewers that join, decode and leave every few seconds. Every
30 s: castline's RSS and open descriptors (from /proc). At the end: the recording's video frames
and audio length against the run's length (ffprobe), and the long-lived viewer's longest gap
between decoded frames. Prints markdown.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CASTLINE_BIN: another build (e.g. target/debug/castline: same RSS and fd figures, more CPU).
CASTLINE = os.environ.get("CASTLINE_BIN") or os.path.join(ROOT, "target/release/castline")
PEER = os.path.join(ROOT, "crates/castline-cli/tests/browser/peer.mjs")
# The viewers (Node + headless Chromium, two browsers decoding on the same 2 cores) run at a
# lower priority: the figures are castline's, and an app's viewers are on other machines.
# SOAK_VIEWER_NICE=0 puts them on an equal footing.
# x264 preset: veryfast is castline's default; SOAK_PRESET=ultrafast leaves the 2 cores room for
# the two browsers, so the CPU ladder (issue 13) does not halve the frame rate.
PRESET = os.environ.get("SOAK_PRESET", "veryfast")
VIEWER = ["nice", "-n", os.environ.get("SOAK_VIEWER_NICE", "10"), "node"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_resources(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return rss, fds, threads


def probe(path, select, entries):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", select, "-count_packets",
                          "-show_entries", entries, "-of", "json", path],
                         capture_output=True, text=True).stdout
    return json.loads(out)["streams"][0]


def ladder_frames(log_lines, duration):
    """The main tier's frame-rate changes (`degraded`/`recovered` lines, seconds from the first
    log line) and the frames a recording at those rates holds."""
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT(\d\d):(\d\d):(\d\d(?:\.\d+)?)")
    t0, changes = None, []
    for line in log_lines:
        m = stamp.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        if t0 is None:
            t0 = t
        if ("degraded" in line or "recovered" in line) and re.search(r'tier="?main', line):
            fps = re.search(r"\bfps=(\d+)", line)
            why = re.search(r'reason="?(\w+)', line)
            if fps:
                changes.append((t - t0, int(fps.group(1)), why.group(1) if why else "?"))
    frames, at, fps = 0.0, 0.0, 30
    for t, new_fps, _ in changes:
        frames += (min(t, duration) - at) * fps
        at, fps = min(t, duration), new_fps
    frames += (duration - at) * fps
    return changes, frames


def last_stats(log_lines):
    """The last `--stats json` line castline wrote (its stderr is the log)."""
    for line in reversed(log_lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def longest_frame_gap(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "packet=pts_time", "-of", "csv=p=0", path],
                         capture_output=True, text=True).stdout.split()
    pts = sorted(float(x) for x in out if x.strip() and x != "N/A")
    return max(((b - a, a) for a, b in zip(pts, pts[1:])), default=(0.0, 0.0))


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 900
    tmp = tempfile.mkdtemp(prefix="castline-soak-")
    procs = []
    try:
        # PulseAudio with a tone on the default sink (its monitor is "system audio").
        pa = os.path.join(tmp, "pulse")
        os.makedirs(pa)
        sock = os.path.join(pa, "native")
        with open(os.path.join(pa, "default.pa"), "w") as f:
            f.write(f"load-module module-native-protocol-unix auth-anonymous=1 socket={sock}\n"
                    "load-module module-null-sink sink_name=speakers\nset-default-sink speakers\n")
        env = dict(os.environ, PULSE_SERVER=f"unix:{sock}", XDG_RUNTIME_DIR=pa, HOME=pa)
        procs.append(subprocess.Popen(["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1",
                                       "--disallow-exit", "--use-pid-file=no", "-F",
                                       os.path.join(pa, "default.pa")], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        procs.append(subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f",
                                       "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-f",
                                       "pulse", "-device", "speakers", "tone"], env=env,
                                      stdin=subprocess.DEVNULL))
        # nginx-rtmp on loopback.
        rtmp_port = free_port()
        ng = os.path.join(tmp, "nginx")
        os.makedirs(ng)
        with open(os.path.join(ng, "nginx.conf"), "w") as f:
            f.write("load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n"
                    f"daemon off; master_process off; pid {ng}/nginx.pid; error_log {ng}/error.log;\n"
                    "events { worker_connections 64; }\n"
                    f"rtmp {{ server {{ listen 127.0.0.1:{rtmp_port}; access_log off;\n"
                    "  application live { live on; } } }\n")
        procs.append(subprocess.Popen(["nginx", "-p", ng, "-e", f"{ng}/error.log", "-c",
                                       f"{ng}/nginx.conf"]))
        time.sleep(2)
        time.sleep(1)
        rec = os.path.join(tmp, "soak.mp4")
        port = free_port()
        log = open(os.path.join(tmp, "castline.log"), "w")
        cl = subprocess.Popen([CASTLINE, "serve", "--listen", f"127.0.0.1:{port}", "--source",
                               "testsrc", "--size", "1280x720", "--fps", "30",
                               "--preset", PRESET, "--audio", "system",
                               "-o", rec, "-o", f"rtmp://127.0.0.1:{rtmp_port}/live/soak",
                               "--stats", "json", "--duration", str(secs)],
                              env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        url = None
        for line in cl.stdout:
            m = re.match(r"castline: viewer URL (\S+)", line)
            if m:
                url = m.group(1)
                break
        if not url:
            raise RuntimeError("castline serve printed no URL")
        t_start = time.time()
        watch = secs - 20
        steady = subprocess.Popen(VIEWER + [PEER, json.dumps({"steps": [
            {"op": "open", "id": "a", "url": url},
            {"op": "wait_frames", "id": "a", "n": 30, "timeout_ms": 20000},
            {"op": "monitor", "id": "a", "seconds": watch}]})],
            stdout=subprocess.PIPE, text=True)
        procs.append(steady)
        # Read the viewers' results as they come: Node drops what is left in a full pipe when
        # it exits (a 15-minute monitor series is far over the pipe's 64 KiB).
        steady_lines = []
        reader = threading.Thread(target=lambda: steady_lines.extend(steady.stdout), daemon=True)
        reader.start()
        # Viewers that come and go: open, decode 30 frames, stay 2 s, close; again.
        rounds = max(1, (secs - 40) // 6)
        steps = []
        for i in range(rounds):
            steps += [{"op": "open", "id": f"b{i}", "url": url, "shared": True},
                      {"op": "wait_frames", "id": f"b{i}", "n": 30, "timeout_ms": 15000},
                      {"op": "sleep", "ms": 2000},
                      {"op": "close", "id": f"b{i}"}]
        churn = subprocess.Popen(VIEWER + [PEER, json.dumps({"steps": steps})],
                                 stdout=subprocess.PIPE, text=True)
        procs.append(churn)
        churn_lines = []
        churn_reader = threading.Thread(target=lambda: churn_lines.extend(churn.stdout), daemon=True)
        churn_reader.start()
        samples = []
        while cl.poll() is None:
            el = time.time() - t_start
            if not samples or el - samples[-1][0] >= 30:
                try:
                    samples.append((round(el), *proc_resources(cl.pid)))
                except FileNotFoundError:
                    break
            time.sleep(1)
        run_s = time.time() - t_start
        churn.kill()
        churn_reader.join(timeout=10)
        res = [json.loads(l) for l in churn_lines if l.startswith("{")]
        joined = sum(1 for r in res if r.get("op") == "wait_frames" and r.get("ok"))
        tried = sum(1 for r in res if r.get("op") == "wait_frames")
        steady.wait(timeout=60)
        reader.join(timeout=10)
        mon = None
        for l in steady_lines:
            try:
                r = json.loads(l)
            except ValueError:
                continue
            if r.get("op") == "monitor":
                mon = r
        gap, decoded = 0, 0
        if mon:
            s = mon["series"]
            last_t, last_n = s[0][0], s[0][1]
            for t, n, _, _ in s:
                if n != last_n:
                    gap = max(gap, t - last_t)
                    last_t, last_n = t, n
            decoded = s[-1][1] - s[0][1]
        v = probe(rec, "v:0", "stream=nb_read_packets,duration")
        a = probe(rec, "a:0", "stream=duration")
        log.close()
        with open(os.path.join(tmp, "castline.log")) as f:
            log_lines = f.readlines()
        changes, expected = ladder_frames(log_lines, float(v["duration"]))
        rec_gap = longest_frame_gap(rec)
        last = last_stats(log_lines)
        tier_starts = sum(1 for line in log_lines if "tier_started" in line)

        print(f"### Soak, {secs} s: serve + recording + RTMP, viewers joining and leaving "
              f"(x264 {PRESET})\n")
        print("| t (s) | RSS (MiB) | open fds | threads |")
        print("|---|---|---|---|")
        for t, rss, fds, th in samples:
            print(f"| {t} | {rss} | {fds} | {th} |")
        print()
        print(f"- recording: {v['nb_read_packets']} video frames, video "
              f"{float(v['duration']):.3f} s, audio {float(a['duration']):.3f} s; "
              f"{secs * 30} frames at a constant 30 fps, {expected:.0f} at the frame rates the "
              f"main tier's ladder set ({len(changes)} changes: "
              f"{', '.join(f'{t:.0f} s → {fps} fps ({why})' for t, fps, why in changes[:8])}"
              f"{' …' if len(changes) > 8 else ''}); longest gap between recorded frames "
              f"{rec_gap[0] * 1000:.0f} ms (at {rec_gap[1]:.1f} s)")
        if last:
            d = last["drops"]
            rec_out = next((o for o in last["outputs"] if o["name"].endswith("soak.mp4")), {})
            print(f"- castline's own count (last stats line): {last['frames_captured']} frames "
                  f"captured, {d['capture']} capture ticks missed, {d['encode_queue']} raw frames "
                  f"evicted before the encoder, {rec_out.get('dropped', '?')} packets dropped "
                  f"before the recording; {tier_starts} tier starts (`tier_started`)")
        print(f"- churning viewers: {joined} of {tried} joined and decoded; the steady viewer "
              f"decoded {decoded} frames over {watch} s, longest gap {gap} ms")
        print(f"- castline exited {cl.returncode} after {run_s:.0f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if os.environ.get("SOAK_KEEP"):
            print(f"(kept {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
