#!/usr/bin/env python3
"""A bounded flood of bad HTTP clients against `castline serve` (test tool, loopback only).

usage: flood.py HOST PORT SECONDS CONCURRENCY SOURCE_IP...

Runs CONCURRENCY clients at once for SECONDS, each bound to one of the SOURCE_IPs (loopback
addresses such as 127.0.0.2, so castline sees other hosts than the viewer's 127.0.0.1), each
connection one of the attacks below, round-robin. Prints one JSON object: connections made, the
status codes answered per attack, how long the server let slowloris connections live.
"""
import asyncio
import json
import sys
import time

HOST, PORT, SECONDS, CONCURRENCY = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
SOURCES = sys.argv[5:] or ["127.0.0.2"]

ATTACKS = {
    # One header byte a second: never completes a head.
    "slowloris": None,
    # Connects and sends nothing.
    "silent": None,
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
    "huge_header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n",
    "many_headers": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
    "huge_body": b"POST /whep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 1000000000\r\n\r\n",
    "chunked": b"POST /whep HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "bad_token": b"GET /?token=guess HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_ws": b"GET /ws?token=guess HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "bad_whep": b"POST /whep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 4\r\n\r\nv=0\n",
    "pipelined_404": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}
NAMES = list(ATTACKS)

result = {"connections": 0, "connect_errors": 0, "statuses": {n: {} for n in NAMES}, "held_s": {"slowloris": 0.0, "silent": 0.0}}


def count(name, status):
    d = result["statuses"][name]
    d[status] = d.get(status, 0) + 1


async def one(name, source):
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, PORT, local_addr=(source, 0)), 5)
    except Exception:
        result["connect_errors"] += 1
        return
    result["connections"] += 1
    t0 = time.monotonic()
    try:
        if name == "slowloris":
            writer.write(b"GET / HTTP/1.1\r\n")
            for i in range(60):
                await writer.drain()
                # The server's answer (408 or 503) or its close ends the trickle.
                try:
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                    if data:
                        count(name, data.split(b" ")[1].decode(errors="replace") if data.startswith(b"HTTP/") else "other")
                    else:
                        count(name, "closed")
                    break
                except asyncio.TimeoutError:
                    writer.write(b"X-%d: a\r\n" % i)
        elif name == "silent":
            data = await asyncio.wait_for(reader.read(4096), 60)
            count(name, data.split(b" ")[1].decode(errors="replace") if data.startswith(b"HTTP/") else "closed")
        else:
            writer.write(ATTACKS[name])
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), 30)
            count(name, data.split(b" ")[1].decode(errors="replace") if data.startswith(b"HTTP/") else "closed")
    except (ConnectionError, OSError):
        count(name, "reset")
    except asyncio.TimeoutError:
        count(name, "timeout")
    finally:
        if name in result["held_s"]:
            result["held_s"][name] = max(result["held_s"][name], time.monotonic() - t0)
        writer.close()


async def worker(k, end):
    i = k
    while time.monotonic() < end:
        await one(NAMES[i % len(NAMES)], SOURCES[i % len(SOURCES)])
        i += CONCURRENCY


async def main():
    end = time.monotonic() + SECONDS
    await asyncio.gather(*(worker(k, end) for k in range(CONCURRENCY)))


asyncio.run(main())
print(json.dumps(result))
