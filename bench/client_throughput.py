"""Model client throughput against the emulator, as a share of the ideal.

With a fixed latency L per request and C requests allowed in flight, the best a client can do is
C / L calls per second (8 / 0.05 s = 160/s). This drives MedImageInsight image embeddings (one
small PNG per call) through the real client, over loopback HTTP, and reports calls per second and
the ratio to that ideal. The emulator runs in its own process by default, so the client's event
loop does not share an interpreter with the server.

    .venv/bin/python bench/client_throughput.py --calls 800 --latency-ms 50 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
from PIL import Image

from listener.emulator import start_emulator
from listener.infer import build_clients
from listener.logging import configure_logging
from listener.settings import EmulatorSettings, ModelSettings, ModelsSettings


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def _emulator(latency_ms: float, in_process: bool) -> Iterator[str]:
    if in_process:
        server = start_emulator(EmulatorSettings(latency_ms=latency_ms, max_in_flight=1024))
        try:
            yield server.url
        finally:
            server.stop()
        return
    port = _free_port()
    command = [sys.executable, "-m", "listener.emulator", "--port", str(port)]
    command += ["--latency-ms", str(latency_ms), "--max-in-flight", "1024"]
    env = {**os.environ, "PACSAI_LOG_LEVEL": "error"}
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _drive(url: str, calls: int, concurrency: int) -> float:
    models = ModelsSettings(
        medimageinsight=ModelSettings(concurrency=concurrency, batch_size=1, retries=0)
    )
    images = [_png(seed) for seed in range(16)]
    async with build_clients(models, url) as clients:
        client = clients.medimageinsight
        await asyncio.gather(*(client.embed_images([image]) for image in images[:concurrency]))
        started = time.perf_counter()
        await asyncio.gather(*(client.embed_images([images[i % 16]]) for i in range(calls)))
        return time.perf_counter() - started


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=800)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--in-process", action="store_true", help="emulator in a thread")
    args = parser.parse_args()
    configure_logging("warning")
    with _emulator(args.latency_ms, args.in_process) as url:
        elapsed = asyncio.run(_drive(url, args.calls, args.concurrency))
    rate = args.calls / elapsed
    ideal = args.concurrency / (args.latency_ms / 1000)
    result = {
        "calls": args.calls,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(rate, 1),
        "ideal_per_s": round(ideal, 1),
        "ratio": round(rate / ideal, 3),
        "emulator": "thread" if args.in_process else "process",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
