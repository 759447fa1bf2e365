"""What each stage would be made from now: its fingerprint parts, one method per stage.

The digests must stay byte-for-byte what they were, or every existing run
directory recomputes: a part is only added when it can change the output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from refineg_core import secrets
from refineg_core.pipeline.fingerprint import (
    Fingerprint,
    Freshness,
    dataset_digest,
    file_digest,
    flatten,
    freshness,
    read_record,
    tree_digest,
)
from refineg_core.pipeline.order import STAGES, TRAINED_MARKER
from refineg_core.pipeline.stage_contract import SYNTH_SAMPLES_FILE
from refineg_core.pipeline.worker import Worker
from refineg_core.runstore import StageStore


class Planner:
    """The fingerprint of every stage of one run, computed once each."""

    def __init__(
        self, worker: Worker, store: StageStore, *, settings: Callable[[str], Any]
    ) -> None:
        self.worker = worker
        self.config = worker.config
        self.inputs = worker.inputs
        self.store = store
        self.settings = settings  # an MLLM stage's settings (``Pipeline.stage_settings``)
        self._fingerprints: dict[str, Fingerprint] = {}

    def fingerprint(self, stage: str) -> Fingerprint:
        """What ``stage`` would be made from now (once per run)."""
        if stage not in self._fingerprints:
            parts = {
                "train": self.train,
                "predict": self.predict,
                "refine": self.refine,
                "ground": self.ground,
            }[stage]()
            self._fingerprints[stage] = Fingerprint(stage, parts)
        return self._fingerprints[stage]

    def forget(self, *stages: str) -> None:
        """Drop cached fingerprints whose inputs just changed."""
        for stage in stages:
            self._fingerprints.pop(stage, None)

    def train(self) -> dict[str, Any]:
        if self.config.tagger.load_from:
            return {"tagger.saved": self.saved_tagger_digest(self.worker.tagger_dir())}
        train_opts, _ = self.tagger_options()
        parts: dict[str, Any] = {
            "tagger.plugin": self.config.tagger.plugin,
            **flatten(train_opts, "tagger.options"),
            "labels.types": list(self.worker.labels.types),
            "data.train": dataset_digest(self.inputs.require("train")),
            "data.dev": dataset_digest(self.inputs.dataset("dev")),
        }
        for i, extra in enumerate(self.config.data.extra_train):
            parts[f"data.extra_train.{i}"] = dataset_digest(self.inputs.load(extra))
        if self.config.data.use_synthesized:
            parts["data.synthesized"] = file_digest(self.synth_file())
        return parts

    def predict(self) -> dict[str, Any]:
        _, infer_opts = self.tagger_options()
        gate_options = self.worker.context.options("uncertainty").model_dump(mode="json")
        parts = {
            "upstream.tagger": self.tagger_digest(),
            **flatten(infer_opts, "tagger.options"),
            "uncertainty.plugin": self.config.uncertainty.plugin,
            **flatten(gate_options, "uncertainty.options"),
            "data.predict": self.inputs.source_stats("predict")[0],
        }
        if self.worker.gate_calibrates():  # a gate fitted on dev decides otherwise when dev changes
            parts["data.dev"] = dataset_digest(self.inputs.dataset("dev"))
        return parts

    def refine(self) -> dict[str, Any]:
        return self._mllm_parts("refine")

    def ground(self) -> dict[str, Any]:
        parts = self._mllm_parts("ground")
        if self.config.selector is not None:
            parts["selector.plugin"] = self.config.selector.plugin
            options = self.worker.context.options("selector").model_dump(mode="json")
            parts.update(flatten(options, "selector.options"))
        parts["data.pool"] = dataset_digest(self.inputs.dataset("pool"))
        return parts

    def _mllm_parts(self, stage: str) -> dict[str, Any]:
        backend = self.worker.backend()
        upstream = self.upstream(stage)
        settings = self.settings(stage).model_dump(mode="json")
        if settings.get("plugin") == stage:  # the built-in stage: no part, so the
            del settings["plugin"]  # fingerprints of runs before stage plugins stand
        return {
            f"upstream.{upstream}": self.output_digest(upstream),
            f"stages.{stage}": self.worker.stage_mode(stage),
            **flatten(settings, stage),
            **flatten(dict(self.worker.labels.descriptions), "labels"),
            **flatten(secrets.redact(backend.cache_identity()) if backend else None, "backend"),
        }

    def upstream(self, stage: str) -> str:
        if stage == "ground" and self.worker.stage_mode("refine") is not False:
            return "refine"
        return "predict"

    def output_digest(self, stage: str) -> str | None:
        record = self.store.read(stage)
        return record.output if record else None

    def synth_file(self) -> Path:
        """The synthesized samples training may add (``data.use_synthesized``)."""
        return self.worker.run_dir / "synth" / SYNTH_SAMPLES_FILE

    def tagger_options(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(training options, inference-only options) of the configured tagger."""
        cls = self.worker.context.plugin_class("tagger")
        options = self.worker.context.options("tagger").model_dump(mode="json")
        infer = getattr(cls, "inference_options", frozenset())
        train = {k: v for k, v in options.items() if k not in infer}
        return train, {k: v for k, v in options.items() if k in infer}

    def saved_tagger_digest(self, directory: Path) -> str | None:
        """A saved tagger's files, not the caches its plugin derives on load."""
        cls = self.worker.context.plugin_class("tagger")
        return tree_digest(directory, skip=getattr(cls, "derived_folders", ()))

    def tagger_digest(self) -> str | None:
        if self.config.tagger.load_from:
            return self.fingerprint("train").parts["tagger.saved"]
        record = read_record(self.worker.tagger_dir() / TRAINED_MARKER)
        return record.output if record else None

    def status(self, saved_differences: Callable[[], list[str] | None]) -> dict[str, Freshness]:
        """Each stage fresh / stale (why) / partial / missing (``refineg status``);
        ``saved_differences``: how a saved tagger differs from the config."""
        out: dict[str, Freshness] = {}
        for stage in STAGES:
            if stage == "train" and self.config.tagger.load_from:
                differ = saved_differences()
                why = ("tagger.load_from was trained with other options:", *(differ or ()))
                fresh = Freshness("fresh", ("using tagger.load_from",))
                out[stage] = Freshness("stale", why) if differ else fresh
                continue
            if stage == "train":
                record = read_record(self.worker.tagger_dir() / TRAINED_MARKER)
            else:
                record = self.store.read(stage)
            # a stale upstream will recompute (and change) this stage's input; a
            # partial one only retries its failures, which this stage then sees as changed
            upstream_stale = [s for s, f in out.items() if f.state in ("stale", "missing")]
            fresh = freshness(self.fingerprint(stage), record)
            out_file = self.worker.run_dir / f"{stage}.jsonl"
            problem = None if stage == "train" else self.store.output_problem(stage, out_file)
            if problem is not None and fresh.state != "stale":
                fresh = Freshness("stale", (f"{problem}; a rerun recomputes it",))
            if fresh.state == "fresh" and upstream_stale:
                fresh = Freshness("stale", (f"upstream {upstream_stale[-1]} is not fresh",))
            out[stage] = fresh
        return out
