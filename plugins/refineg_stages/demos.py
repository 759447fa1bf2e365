"""Demonstrations for the ground stage: which can be shown, and selecting them ahead.

The selector (``ContextSelector``) sees each query with its *predicted*
entities (``ground_query``), never gold. ``DemoBook`` selects the demonstrations
of a chunk's queries in blocks on a background thread while earlier calls run;
``usable_demos`` keeps those a prompt can show (not the query itself, image
present, size known).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence

import attrs

from refineg_core.errors import PluginError
from refineg_core.interfaces import ContextSelector
from refineg_core.types import Demonstration, Sample, SampleResult
from refineg_stages.prompts import original_size


def usable_demos(
    demos: Sequence[Demonstration], query_id: str, k: int
) -> tuple[list[Demonstration], int]:
    """Demonstrations that can be shown: not the query itself, image present, size known."""
    out: list[Demonstration] = []
    dropped = 0
    for d in demos:
        if d.sample.id == query_id:
            continue
        if d.sample.image is None or not d.sample.image.available:
            dropped += 1
            continue
        if original_size(d.sample.image) is None:
            dropped += 1
            continue
        out.append(d)
    return out[:k], dropped


def ground_query(item: SampleResult) -> Sample:
    """What the selector sees: the sample with its *predicted* entities, never gold."""
    return attrs.evolve(item.sample, entities=item.entities)


class DemoBook:
    """Demonstrations for the items a stage will call, selected ahead of the calls.

    A background thread asks ``selector.select_many`` for one block of queries
    at a time, in the order the stage submits them, so the selector embeds and
    scores a whole block in one pass while the calls of earlier blocks run; no
    lock is held around any call. A worker's ``get`` waits only for its own
    block. A block the selector fails on is retried query by query, so a bad
    query costs only its own item (``get`` raises its error, which the stage
    records as that item's failure).
    """

    def __init__(
        self,
        items: Sequence[SampleResult],
        selector: ContextSelector,
        k: int,
        *,
        block: int = 32,
        skip: Collection[str] = (),
        wanted: Callable[[SampleResult], bool] = lambda r: True,
    ) -> None:
        """Plan the ``items`` that ``wanted`` says will be called, less ``skip`` (ids
        an earlier run finished)."""
        self.selector = selector
        self.k = k
        wanted_items = [r for r in items if wanted(r) and r.id not in skip]
        self._blocks = [
            wanted_items[i : i + block] for i in range(0, len(wanted_items), max(1, block))
        ]
        self._block_of = {r.id: b for b, chunk in enumerate(self._blocks) for r in chunk}
        self._ready = [threading.Event() for _ in self._blocks]
        self._chosen: dict[str, list[Demonstration] | Exception] = {}
        self._start_lock = threading.Lock()
        self._selector_lock = threading.Lock()  # selectors hold models not thread-safe
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _run(self) -> None:
        for b, chunk in enumerate(self._blocks):
            try:
                if not self._stop.is_set():
                    self._chosen.update(self._select(chunk))
            finally:
                self._ready[b].set()

    def _select(self, chunk: Sequence[SampleResult]) -> dict[str, list[Demonstration] | Exception]:
        queries = [ground_query(r) for r in chunk]
        with self._selector_lock:
            return self._select_locked(chunk, queries)

    def _select_locked(
        self, chunk: Sequence[SampleResult], queries: list[Sample]
    ) -> dict[str, list[Demonstration] | Exception]:
        try:
            chosen: list = self.selector.select_many(queries, self.k)
            if len(chosen) != len(queries):
                raise PluginError(
                    f"select_many returned {len(chosen)} lists for {len(queries)} queries",
                    where="selector",
                )
        except Exception:  # one bad query must not cost the block: retry one by one
            chosen = []
            for q in queries:
                try:
                    chosen.append(self.selector.select(q, self.k))
                except Exception as exc:
                    chosen.append(exc)
        return {r.id: c for r, c in zip(chunk, chosen, strict=True)}

    def get(self, item: SampleResult) -> list[Demonstration]:
        """The item's demonstrations (selected now, under a lock, if it was not planned)."""
        b = self._block_of.get(item.id)
        if b is None:
            with self._selector_lock:
                return self.selector.select(ground_query(item), self.k)
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="demo-book", daemon=True)
                self._thread.start()
        self._ready[b].wait()
        chosen = self._chosen.get(item.id)
        if chosen is None:
            raise PluginError("demonstration selection was stopped", where="selector")
        if isinstance(chosen, Exception):
            raise chosen
        return chosen

    def close(self) -> None:
        """Stop selecting blocks nobody will ask for (the stage ended early)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
