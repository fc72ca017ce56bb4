"""A LiveKit subscriber made of LiveKit's own client (PyPI `livekit`, its Rust core inside):
joins a room, waits for a screen-share video track, decodes frames and reads castline's
`testsrc` stamp from them (glass-to-glass latency), and measures the energy of screen-share
audio. Prints one JSON object per line: {"event": ...}; the last one is the summary.

Never contacts a public STUN server: the ICE servers given here (loopback) replace the server's.
"""
import argparse
import asyncio
import json
import math
import os
import sys
import time

from livekit import api, rtc

CELLS = 48


def crc8(data):
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def read_stamp(luma, width, height, stride):
    """castline's testsrc stamp (see capture/testsrc.rs): capture time in µs, or None."""
    c = width // CELLS
    if c == 0 or height < 2 * c:
        return None
    bits = bytearray(12)
    for i in range(96):
        col, row = i % CELLS, i // CELLS
        x, y = col * c + c // 2, row * c + c // 2
        if luma[y * stride + x] > 128:
            bits[i // 8] |= 0x80 >> (i % 8)
    if crc8(bits[:11]) != bits[11]:
        return None
    return int.from_bytes(bits[:8], "big")


def emit(**kw):
    print(json.dumps(kw), flush=True)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--api-secret", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--identity", default="subscriber")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--stamps", action="store_true", help="read testsrc stamps (latency)")
    a = ap.parse_args()

    token = (
        api.AccessToken(a.api_key, a.api_secret)
        .with_identity(a.identity)
        .with_grants(api.VideoGrants(room_join=True, room=a.room, can_publish=False))
        .to_jwt()
    )
    room = rtc.Room()
    t0 = time.monotonic()
    st = {
        "frames": 0,
        "sizes": {},
        "video_source": None,
        "first_frame_s": None,
        "audio_frames": 0,
        "audio_rms": 0.0,
        "audio_source": None,
        "latency_ms": [],
        "tracks": 0,
        "gaps": [],
    }
    tasks = []
    last_frame = [None]

    def guarded(coro):
        async def run():
            try:
                await coro
            except asyncio.CancelledError:
                pass
            except Exception as e:  # a broken reader must show, not count zero frames silently
                emit(event="error", error=repr(e))
        return asyncio.ensure_future(run())

    async def video(track):
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.I420)
        async for ev in stream:
            f = ev.frame
            now = time.monotonic()
            if st["first_frame_s"] is None:
                st["first_frame_s"] = round(now - t0, 3)
                emit(event="first_frame", t=st["first_frame_s"], width=f.width, height=f.height)
            if last_frame[0] is not None and now - last_frame[0] > 0.5:
                st["gaps"].append([round(last_frame[0] - t0, 2), round(now - last_frame[0], 2)])
                emit(event="gap", at=round(last_frame[0] - t0, 2), s=round(now - last_frame[0], 2))
            last_frame[0] = now
            st["frames"] += 1
            k = f"{f.width}x{f.height}"
            st["sizes"][k] = st["sizes"].get(k, 0) + 1
            if a.stamps and st["frames"] % 3 == 0:
                us = read_stamp(memoryview(f.data), f.width, f.height, f.width)
                if us is not None:
                    st["latency_ms"].append(round(time.time() * 1000 - us / 1000, 1))

    async def audio(track):
        stream = rtc.AudioStream(track)
        acc, n = 0.0, 0
        async for ev in stream:
            d = memoryview(ev.frame.data)
            if d.format != "h":
                d = d.cast("B").cast("h")
            acc += sum(x * x for x in d[::8])
            n += len(d[::8])
            st["audio_frames"] += 1
            st["audio_rms"] = round(math.sqrt(acc / max(n, 1)) / 32768.0, 5)

    @room.on("track_subscribed")
    def on_track(track, pub, participant):
        st["tracks"] += 1
        emit(event="track", kind=str(track.kind), source=rtc.TrackSource.Name(pub.source),
             participant=participant.identity, sid=pub.sid, t=round(time.monotonic() - t0, 3))
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            st["video_source"] = rtc.TrackSource.Name(pub.source)
            tasks.append(guarded(video(track)))
        elif track.kind == rtc.TrackKind.KIND_AUDIO:
            st["audio_source"] = rtc.TrackSource.Name(pub.source)
            tasks.append(guarded(audio(track)))

    loopback_stun = rtc.IceServer(urls=["stun:127.0.0.1:3478"])
    opts = rtc.RoomOptions(
        auto_subscribe=True,
        rtc_config=rtc.RtcConfiguration(ice_servers=[loopback_stun]),
    )
    await room.connect(a.url, token, options=opts)
    emit(event="connected", t=round(time.monotonic() - t0, 3))
    await asyncio.sleep(a.seconds)
    lat = sorted(st["latency_ms"])
    if lat:
        st["latency_p50_ms"] = lat[len(lat) // 2]
        st["latency_p95_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    st["latency_samples"] = len(lat)
    del st["latency_ms"]
    emit(event="summary", **st)
    # Leave at once: tearing down live streams in the client core can abort the process.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
