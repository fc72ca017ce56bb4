#!/usr/bin/env python3
"""Plain-RTP benchmark (issue 6): send-path CPU per frame and keyframe-request → IDR latency.

    python3 bench/rtp.py [SECONDS]     # after `cargo build --release -p castline-cli`

1. Send path: castline publishes testsrc 1080p30 at 5 Mbit/s to a loopback UDP sink; the CPU of
   its output thread (packetize + send + RTCP; /proc/PID/task/TID/stat of "castline-output")
   per frame, against `ffmpeg -re -c copy -f rtp` sending the same encoded stream (a castline
   recording of the same content), whose whole process does only that job.
2. Keyframe latency: a receiver sends a PLI every 600 ms (castline answers at most one per 500 ms)
   and times the first IDR packet on the wire after each; p50/p95/max. FFmpeg has no RTCP
   feedback path, so there is no comparator.
"""
import os
import socket
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASTLINE = os.path.join(ROOT, "target/release/castline")
TICK = os.sysconf("SC_CLK_TCK")


def sink():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s


def drain(s, stop, on_packet=None):
    s.settimeout(0.1)
    while not stop.is_set():
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            continue
        if on_packet:
            on_packet(data, addr)


def thread_cpu(pid, name):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICK


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def send_path(secs):
    s = sink()
    stop = threading.Event()
    threading.Thread(target=drain, args=(s, stop), daemon=True).start()
    port = s.getsockname()[1]
    common = ["--source", "testsrc", "--size", "1920x1080", "--fps", "30", "--bitrate", "5M",
              "--audio", "none", "--stats", "off"]
    p = subprocess.Popen([CASTLINE, "publish", f"rtp://127.0.0.1:{port}?video_pt=96&video_ssrc=1",
                          "--duration", str(secs + 1)] + common,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    c0 = thread_cpu(p.pid, "castline-output")
    time.sleep(secs - 1)
    c1 = thread_cpu(p.pid, "castline-output")
    p.wait()
    castline_ms = (c1 - c0) / ((secs - 1) * 30) * 1000
    # The same job for ffmpeg: stream-copy an encoded file of the same content to RTP.
    mp4 = "/tmp/castline-rtp-bench.mp4"
    subprocess.run([CASTLINE, "record", mp4, "--duration", str(secs + 2), "--profile", "baseline"]
                   + common, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    f = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-i", mp4, "-an", "-c", "copy", "-f",
                          "rtp", "-pkt_size", "1200", f"rtp://127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    f0 = proc_cpu(f.pid)
    time.sleep(secs - 1)
    f1 = proc_cpu(f.pid)
    f.kill()
    f.wait()
    stop.set()
    ffmpeg_ms = (f1 - f0) / ((secs - 1) * 30) * 1000
    return castline_ms, ffmpeg_ms


def pli(media_ssrc):
    # RTCP PSFB (206), FMT 1 (PLI), length 2: sender SSRC 7, media SSRC.
    return struct.pack("!BBHII", 0x81, 206, 2, 7, media_ssrc)


def is_idr(data):
    if len(data) < 14 or 200 <= data[1] <= 206:
        return False
    cc = data[0] & 0x0F
    off = 12 + 4 * cc
    if data[0] & 0x10:
        off += 4 + 4 * struct.unpack("!H", data[off + 2:off + 4])[0]
    nal = data[off] & 0x1F
    if nal == 5:
        return True
    if nal == 28:
        return (data[off + 1] & 0x80) != 0 and (data[off + 1] & 0x1F) == 5
    if nal == 24:
        i = off + 1
        while i + 2 < len(data):
            n = struct.unpack("!H", data[i:i + 2])[0]
            if data[i + 2] & 0x1F == 5:
                return True
            i += 2 + n
    return False


def keyframe_latency(secs):
    s = sink()
    port = s.getsockname()[1]
    p = subprocess.Popen([CASTLINE, "publish", f"rtp://127.0.0.1:{port}?video_pt=96&video_ssrc=1",
                          "--source", "testsrc", "--size", "1920x1080", "--fps", "30",
                          "--bitrate", "5M", "--keyint", "60", "--audio", "none", "--stats",
                          "off", "--duration", str(secs + 2)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s.settimeout(0.05)
    peer = None
    pending = None
    last_pli = 0.0
    samples = []
    t0 = time.time()
    while time.time() - t0 < secs + 1:
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            data = None
        now = time.time()
        if data and pending and is_idr(data):
            samples.append((now - pending) * 1000)
            pending = None
        if peer and pending is None and now - t0 > 1 and now - last_pli > 0.6:
            s.sendto(pli(1), peer)
            pending = last_pli = now
    p.wait()
    samples.sort()
    q = lambda x: samples[min(len(samples) - 1, int(x * len(samples)))]
    return len(samples), q(0.5), q(0.95), samples[-1]


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    c, f = send_path(secs)
    print(f"### Plain RTP send path, 1080p30 5 Mbit/s, {secs} s\n")
    print("| sender | CPU per frame | ratio |\n|---|---|---|")
    print(f"| castline output thread (packetize + send + RTCP) | {c:.3f} ms | {c / f:.2f}× |")
    print(f"| ffmpeg -c copy -f rtp (whole process) | {f:.3f} ms | 1.00× |")
    n, p50, p95, mx = keyframe_latency(secs)
    print(f"\n### PLI → IDR on the wire, {n} requests over {secs} s\n")
    print(f"| p50 | p95 | max |\n|---|---|---|\n| {p50:.1f} ms | {p95:.1f} ms | {mx:.1f} ms |")


if __name__ == "__main__":
    main()
