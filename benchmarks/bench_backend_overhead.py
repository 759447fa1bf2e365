"""What the OpenAI backend's guards cost per request: deadline thread, streamed
body with a size cap, endpoint pool, secret scrubbing.

Baseline: a bare ``httpx.Client.post`` of the same payload from the same
number of threads (no retries, no deadline). Both against the loopback fake
server, text-only requests, interleaved repetitions (A B A B, ``--reps``),
medians and min-max of requests per second.

    nice -n 10 python benchmarks/bench_backend_overhead.py
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from harness import interleaved, parser, ratio, start
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, ok

from refineg_core import secrets
from refineg_core.chat import ChatMessage, ChatRequest

ANSWER = '[{"name": "Obama", "type": "PER"}, {"name": "White House", "type": "LOC"}]'


def drive(call: Callable[[int], None], n: int, threads: int) -> None:
    """``n`` calls from ``threads`` client threads."""
    counter = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            call(i)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def main() -> None:
    ap = parser(__doc__, out="backend_overhead.json", reps=5)
    ap.add_argument("--n", type=int, default=400, help="requests per repetition")
    ap.add_argument("--clients", type=int, default=8, help="client threads (and concurrency)")
    args = ap.parse_args()
    session = start(args)
    n, clients = args.n, args.clients
    secrets.register(["sk-bench-secret-123456"])  # scrubbing on, as in a keyed run
    with FakeOpenAIServer(default=ok(ANSWER)) as server:
        backend = OpenAIBackend(
            OpenAIBackend.Options(base_url=server.base_url, model="fake-model", concurrency=clients)
        )
        raw = httpx.Client(limits=httpx.Limits(max_connections=clients))
        url = f"{server.base_url}/chat/completions"

        def request(i: int) -> ChatRequest:
            return ChatRequest((ChatMessage.text("user", f"query {i}"),), purpose="bench")

        def ours(i: int) -> None:
            backend.complete(request(i))

        def bare(i: int) -> None:
            raw.post(url, json=backend.payload(request(i))).json()

        timings = interleaved(
            {
                "bare httpx": lambda: drive(bare, n, clients),
                "OpenAIBackend": lambda: drive(ours, n, clients),
            },
            reps=args.reps,
        )
        print(f"{n} requests x {args.reps} repetitions, {clients} threads, loopback fake server")
        print("| client | requests/s (median, min-max) |")
        print("| --- | --- |")
        rows = []
        for name, t in timings.items():
            rate = t.rate(n)
            rows.append({**t.as_dict(), "requests_per_s": rate})
            print(f"| {name} | {rate['median']:.0f} ({rate['min']:.0f}-{rate['max']:.0f}) |")
        r = ratio(timings["OpenAIBackend"], timings["bare httpx"])
        print(f"ratio OpenAIBackend / bare httpx: {r:.2f}")
    session.write(
        {"requests": n, "client_threads": clients, "rows": rows, "ratio_ours_over_bare": r}
    )


if __name__ == "__main__":
    main()
