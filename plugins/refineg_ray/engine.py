"""The Ray Data engine: a stage's chunks processed by actor pools on a Ray cluster.

``[engine] kind = "ray"`` (or ``refineg run --engine ray``). The driver (this
process) stays the owner of the run: it writes the input of a stage as JSONL
shards (one chunk each) under ``<run_dir>/engine/``, Ray Data reads them
(``read_text``) and runs ``map_batches`` over an actor pool, and the driver
commits the results, in input order, to the same stage file the local engine
writes. Each actor builds the run's plugins once from the same config (one
loaded tagger per tagger actor, ``num_gpus`` when configured; one backend per
MLLM actor, which keeps the backend's own concurrency) and calls the same
per-chunk code as the local engine, so the outputs are equal.

The same config runs on a laptop (a local Ray started here) and on a cluster
(``[engine] options = {address = "auto"}``); on a cluster the run directory and the data must be on
storage every node sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# Imported at once: without Ray the registry refuses `engine.kind = "ray"` when the
# config is checked, naming the extra (`pip install 'refineg[ray]'`), not mid-run.
import ray
import ray.data
from pydantic import Field

from refineg_core import errors
from refineg_core.config import Config, with_absolute_paths
from refineg_core.errors import RefinegError
from refineg_core.formats.native import result_from_dict, sample_from_dict, sample_to_dict
from refineg_core.interfaces import PluginOptions
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.engine_contract import Engine, MllmChunk
from refineg_core.pipeline.spent import add, delta
from refineg_core.pipeline.summary import StageSummary
from refineg_core.pipeline.worker import Worker
from refineg_core.progress import progress_disabled
from refineg_core.types import Sample, SampleResult
from refineg_ray import reaper


class ChunkWorker:
    """A Ray actor: a ``Worker`` (the run's plugins, built once), then one chunk per call."""

    def __init__(self, config_json: str, stage: str) -> None:
        self.worker = Worker(Config.model_validate_json(config_json))
        self.stage = stage
        self.health = StageHealth()
        self.part = Path(tempfile.mkdtemp(prefix="refineg-ray-")) / f"{stage}.part.jsonl"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        try:
            return self._process(batch)
        except RefinegError as exc:
            # Ray would wrap it beyond recognition; the driver raises it again as it was
            error = {"class": type(exc).__name__, "message": str(exc)}
            return {"result": [""], "meta": [json.dumps({"pid": os.getpid(), "error": error})]}

    def _process(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        rows = [json.loads(line) for line in batch["text"]]
        meta: dict[str, Any] = {"pid": os.getpid()}
        if self.stage == "predict":
            results = self.worker.tag([sample_from_dict(r["item"]) for r in rows], each=True)
        else:
            items = [result_from_dict(r["item"]) for r in rows]
            earlier = [result_from_dict(r["earlier"]) for r in rows if r.get("earlier")]
            backend = self.worker.backend()
            before, report_before = backend.meter.snapshot(), backend.report()
            results, summary = self.worker.run_mllm_chunk(
                self.stage, items, earlier, self.part, self.health
            )
            meta["summary"] = summary.to_json()
            # this batch's share of the actor's backend counters (per-endpoint requests...)
            meta["usage"] = {
                **(backend.meter.snapshot() - before).as_dict(),
                **delta(backend.report(), report_before),
            }
        out = [json.dumps(sample_to_dict(r), ensure_ascii=False) for r in results]
        notes = [""] * len(out)
        if out:
            notes[0] = json.dumps(meta)
        return {"result": out, "meta": notes}

    def __del__(self) -> None:
        self.worker.close()


class RayOptions(PluginOptions):
    """The ray engine's options: ``[engine] options = {tagger_actors = 4, ...}``."""

    address: str | None = Field(
        None, description='Ray cluster address ("auto", "ray://host:10001"); default: local Ray'
    )
    tagger_actors: int = Field(1, ge=1, description="tagger + gate actors")
    mllm_actors: int = Field(
        1, ge=1, description="actors per MLLM stage (each keeps the backend's concurrency)"
    )
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per tagger actor")


class RayEngine(Engine):
    """Chunks fanned out to Ray Data actor pools; results come back in input order."""

    Options = RayOptions
    options: RayOptions

    def __init__(self, worker: Worker, options: RayOptions | None = None) -> None:
        super().__init__(worker, options)
        self.run_dir = worker.run_dir
        self.chunk_size = worker.config.engine.chunk_size
        self.ray = ray
        self._usage: dict[str, dict[str, Any]] = {}
        self._workers: dict[str, set[int]] = {}
        self._batches: Counter = Counter()
        self._started_ray = not self.ray.is_initialized()
        self._reaper = None
        if self._started_ray:
            _quiet_ray_logs()
            self.ray.init(
                address=self.options.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            if self.options.address is None:  # a local Ray: it ends with this driver
                self._reaper = _start_reaper(self.ray)
        context = self.ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        self.payload = worker_config(worker.config)

    # ------------------------------------------------------------------ stages
    def tag(self, chunks: Iterator[list[Sample]]) -> Iterator[list[SampleResult]]:
        rows = ({"item": sample_to_dict(s)} for chunk in chunks for s in chunk)
        for results, metas in self._map("predict", rows, self.options.tagger_actors, gpus=True):
            self._note_workers("predict", metas)
            yield results

    def mllm(
        self, stage: str, chunks: Iterator[MllmChunk]
    ) -> Iterator[tuple[list[SampleResult], StageSummary]]:
        self._usage[stage] = {}

        def rows() -> Iterator[dict[str, Any]]:
            for items, earlier in chunks:
                by_id = {r.id: r for r in earlier}
                for item in items:
                    done = by_id.get(item.id)
                    yield {
                        "item": sample_to_dict(item),
                        "earlier": sample_to_dict(done) if done else None,
                    }

        for results, metas in self._map(stage, rows(), self.options.mllm_actors, gpus=False):
            summary = StageSummary(stage)
            self._note_workers(stage, metas)
            for meta in metas:
                summary.merge(StageSummary.from_json(meta["summary"]))
                self._usage[stage] = add(self._usage[stage], meta["usage"])
            yield results, summary

    def usage(self, stage: str) -> dict[str, Any]:
        return dict(self._usage.get(stage, {}))

    def close(self) -> None:
        """Stop the local Ray this run started (a cluster it joined keeps running)."""
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()

    def report(self, stage: str) -> dict[str, Any]:
        return {
            "kind": "ray",
            "batches": self._batches[stage],
            "worker_processes": len(self._workers.get(stage, ())),
        }

    def _note_workers(self, stage: str, metas: list[dict[str, Any]]) -> None:
        self._batches[stage] += len(metas)
        self._workers.setdefault(stage, set()).update(m["pid"] for m in metas)

    # ---------------------------------------------------------------- plumbing
    def _map(
        self, stage: str, rows: Iterable[dict[str, Any]], actors: int, *, gpus: bool
    ) -> Iterator[tuple[list[SampleResult], list[dict[str, Any]]]]:
        """Write ``rows`` as shards, run them through a pool of ``actors`` ChunkWorkers,
        and yield each chunk's results (in order) with the metas its batches sent."""
        size = self.chunk_size
        shards = self._write_shards(stage, rows, size)
        if not shards:
            return
        try:
            with _restart_option_allowed():
                ds = self.ray.data.read_text([str(p) for p in shards]).map_batches(
                    ChunkWorker,
                    fn_constructor_args=(self.payload, stage),
                    batch_size=size,
                    compute=self.ray.data.ActorPoolStrategy(size=actors),
                    num_cpus=self.options.num_cpus,
                    num_gpus=self.options.num_gpus if gpus else 0,
                    batch_format="numpy",
                    # Ray Data's default (restart forever, retry forever) makes Ray's core
                    # print an error line (the actor's constructor arguments live in the
                    # object store, so a restart could fail anyway: ray#53727) and would
                    # loop on a chunk that kills its actor. A dead actor fails the stage
                    # instead; the committed chunks stay and the next run resumes after them.
                    max_restarts=0,
                )
            results: list[SampleResult] = []
            metas: list[dict[str, Any]] = []
            for batch in ds.iter_batches(batch_size=size, batch_format="numpy"):
                for line, note in zip(batch["result"], batch["meta"], strict=True):
                    meta = json.loads(note) if note else None
                    if meta and "error" in meta:
                        raise _as_raised(meta["error"])
                    results.append(result_from_dict(json.loads(line)))
                    if meta:
                        metas.append(meta)
                yield results, metas
                results, metas = [], []
        finally:
            shutil.rmtree(shards[0].parent, ignore_errors=True)

    def _write_shards(self, stage: str, rows: Iterable[dict[str, Any]], size: int) -> list[Path]:
        folder = self.run_dir / "engine" / stage
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shards: list[Path] = []
        fh = None
        try:
            for i, row in enumerate(rows):
                if i % size == 0:
                    if fh is not None:
                        fh.close()
                    shards.append(folder / f"part-{len(shards):06d}.jsonl")
                    fh = shards[-1].open("w", encoding="utf-8")
                # ASCII-escaped: no line separator of any kind can appear inside a row
                fh.write(json.dumps(row) + "\n")
        finally:
            if fh is not None:
                fh.close()
        return shards


@contextlib.contextmanager
def _restart_option_allowed() -> Iterator[None]:
    """Silence Ray Data's deprecation of extra actor options (``max_restarts`` has no
    named parameter of ``map_batches`` yet, Ray 2.60) for the one call that passes it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        yield


def _quiet_ray_logs() -> None:
    """Ray's own INFO lines and advice (token auth, Ray Data's execution plan,
    "progress bars disabled") stay off stderr under ``--quiet``; warnings and
    errors still show without it."""
    level = logging.ERROR if progress_disabled() else logging.WARNING
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)


def _start_reaper(ray: Any) -> Any:
    """The watcher that ends this local Ray's processes when the driver dies (kill -9
    included; ``refineg_ray.reaper``), or None when it cannot start."""
    try:
        session_dir = ray._private.worker._global_node.get_session_dir_path()
    except AttributeError:  # a Ray without this private path: no reaper, no crash
        return None
    return reaper.start(str(session_dir))


def worker_config(config: Config) -> str:
    """The run's config as the actors rebuild it: every path absolute (a worker's
    working directory is not the driver's)."""
    return with_absolute_paths(config).model_dump_json()


def _as_raised(error: dict[str, str]) -> RefinegError:
    """The refineg error an actor met, rebuilt with its class and message."""
    cls = getattr(errors, error.get("class", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, RefinegError)):
        cls = RefinegError
    exc = cls.__new__(cls)
    Exception.__init__(exc, error.get("message", "a Ray worker failed"))
    exc.where = None
    return exc
