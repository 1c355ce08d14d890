#!/usr/bin/env python3
"""A TCP proxy that forwards every request at once but holds the answer on its first N
connections for D seconds: a ticketing system that stores a ticket, then answers late.

    slow-proxy.py --listen 127.0.0.1:3100 --target 127.0.0.1:3000 --delay 5 --slow 1
"""
import argparse
import asyncio

def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)

async def pipe(reader, writer, delay=0.0):
    try:
        first = True
        while data := await reader.read(65536):
            if first and delay:
                await asyncio.sleep(delay)
            first = False
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()

async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=addr, required=True)
    p.add_argument("--target", type=addr, required=True)
    p.add_argument("--delay", type=float, default=5.0)
    p.add_argument("--slow", type=int, default=1, help="how many first connections are slow")
    a = p.parse_args()
    seen = 0

    async def handle(client_r, client_w):
        nonlocal seen
        seen += 1
        delay = a.delay if seen <= a.slow else 0.0
        print(f"connection {seen}: answers held {delay}s", flush=True)
        up_r, up_w = await asyncio.open_connection(*a.target)
        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w, delay))

    server = await asyncio.start_server(handle, *a.listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
