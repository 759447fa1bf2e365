"""What a stage driver (``training``, ``predicting``, ``mllm_driver``, ``finishing``:
functions, so each job reads alone) uses of its run; the ``Pipeline`` implements it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from refineg_core.config import Config
from refineg_core.interfaces import Tagger, UncertaintyEstimator
from refineg_core.labels import LabelSet
from refineg_core.mllm_cache import CachedBackend
from refineg_core.pipeline.engines import Engine
from refineg_core.pipeline.fingerprint import Fingerprint
from refineg_core.pipeline.inputs import Inputs
from refineg_core.pipeline.planner import Planner
from refineg_core.pipeline.worker import Worker
from refineg_core.runstore import RunStore


class StageRun(Protocol):
    """The run a stage driver works in (implemented by ``Pipeline``)."""

    config: Config
    labels: LabelSet
    run_dir: Path
    debug: bool
    log: Callable[[str], None]
    summary: dict[str, Any]
    worker: Worker
    inputs: Inputs
    planner: Planner
    store: RunStore
    _preflighted: set[str]

    @property
    def chunk_size(self) -> int: ...

    def prepare_run_dir(self) -> Path: ...
    def reuse(self, stage: str, out: Path, *scratch: Path) -> bool: ...
    def record(self, stage: str, data: dict[str, Any], started: float) -> dict[str, Any]: ...
    def finish_stage(self, stage: str, out: Path, pending: int = 0) -> None: ...
    def engine(self) -> Engine: ...
    def load_tagger(self) -> Tagger: ...
    def calibrated_gate(self) -> UncertaintyEstimator: ...
    def stage_mode(self, stage: str) -> bool | str: ...
    def backend(self, key: str = "backend") -> CachedBackend | None: ...
    def fingerprint(self, stage: str) -> Fingerprint: ...
    def write_summary(self) -> None: ...
