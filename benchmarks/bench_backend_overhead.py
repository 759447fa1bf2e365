"""What the OpenAI backend's guards cost per request: deadline thread, streamed
body with a size cap, endpoint pool, secret scrubbing.

Baseline: a bare ``httpx.Client.post`` of the same payload from the same
number of threads (no retries, no deadline). Both against the loopback fake
server, text-only requests, interleaved repetitions (A B A B), medians and
min-max of requests per second.

    nice -n 10 python benchmarks/bench_backend_overhead.py
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import httpx
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, ok

from refineg_core import secrets
from refineg_core.chat import ChatMessage, ChatRequest

N = 400
THREADS = 8
ANSWER = '[{"name": "Obama", "type": "PER"}, {"name": "White House", "type": "LOC"}]'


def drive(call: Callable[[int], None]) -> float:
    """Requests per second for N calls from THREADS threads."""
    counter = iter(range(N))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            call(i)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return N / (time.perf_counter() - t0)


def main() -> None:
    secrets.register(["sk-bench-secret-123456"])  # scrubbing on, as in a keyed run
    with FakeOpenAIServer(default=ok(ANSWER)) as server:
        backend = OpenAIBackend(
            OpenAIBackend.Options(base_url=server.base_url, model="fake-model", concurrency=THREADS)
        )
        raw = httpx.Client(limits=httpx.Limits(max_connections=THREADS))
        url = f"{server.base_url}/chat/completions"

        def request(i: int) -> ChatRequest:
            return ChatRequest((ChatMessage.text("user", f"query {i}"),), purpose="bench")

        def ours(i: int) -> None:
            backend.complete(request(i))

        def bare(i: int) -> None:
            raw.post(url, json=backend.payload(request(i))).json()

        drive(ours), drive(bare)  # warm-up
        rates: dict[str, list[float]] = {"bare httpx": [], "OpenAIBackend": []}
        for _ in range(5):
            rates["bare httpx"].append(drive(bare))
            rates["OpenAIBackend"].append(drive(ours))
        print(f"{N} requests x 5 repetitions, {THREADS} threads, loopback fake server")
        print("| client | requests/s (median, min-max) |")
        print("| --- | --- |")
        for name, r in rates.items():
            print(f"| {name} | {statistics.median(r):.0f} ({min(r):.0f}-{max(r):.0f}) |")
        ratio = statistics.median(rates["OpenAIBackend"]) / statistics.median(rates["bare httpx"])
        print(f"ratio OpenAIBackend / bare httpx: {ratio:.2f}")


if __name__ == "__main__":
    main()
