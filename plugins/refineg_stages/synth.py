"""The ``synth`` stage: seeds -> LLM -> validated, de-duplicated, tagged training data.

The synthesizer plugin only asks and parses; this stage makes the result safe
to train on and cheap to rerun:

* every candidate is validated (non-empty text; each ``(name, type)`` has a
  type in the label set — case-insensitive — and the name occurs in the text on
  token boundaries, found with the same ``tag_names`` the data readers use). A
  candidate with one bad entity is dropped whole: keeping the sentence without
  that entity would teach the tagger to miss it. Each drop is counted by reason;
* a candidate without entities written from a seed *with* entities is dropped
  (``require_entities``): every sentence asked of such a seed has entities, so an
  empty list means the model forgot the tags (SmolLM2 does this: "A Eurofighter
  ... with an A400M" came back untagged) and would teach the tagger to miss them;
* candidates are de-duplicated against the seeds and each other (case,
  whitespace and punctuation spacing ignored);
* seeds run concurrently (``backend.max_concurrency`` threads); each finished
  seed appends its samples to ``synthetic.jsonl`` and then a record to
  ``done.jsonl``, so a killed run resumes where it stopped (samples of a seed
  without a done record are discarded and regenerated);
* ``synthetic.conll`` and ``report.json`` (the yield) are written at the end.
"""

from __future__ import annotations

import json
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from refineg_formats.conll_write import write_conll

from refineg_core.backend_wrapper import BackendWrapper
from refineg_core.chat import ChatRequest, ChatResponse, Usage
from refineg_core.errors import BackendError, BackendUnavailable, DataError
from refineg_core.formats.native import sample_from_dict, sample_to_dict
from refineg_core.hooks import get_hooks
from refineg_core.interfaces import MLLMBackend, Synthesizer
from refineg_core.labels import LabelSet, tag_names, tags_to_spans, tokenize
from refineg_core.pipeline.runner import (
    JsonlAppender,
    failure_from_exception,
    load_records,
    run_concurrently,
)
from refineg_core.pipeline.stage_contract import SYNTH_SAMPLES_FILE, SynthStage
from refineg_core.progress import bar
from refineg_core.runstore import atomic_write, write_json
from refineg_core.stage_settings import SynthSettings
from refineg_core.types import Entity, Sample, SynthesisCandidate
from refineg_core.usage import UsageMeter

STAGE = "synth"
SAMPLES_FILE = SYNTH_SAMPLES_FILE
CONLL_FILE = "synthetic.conll"
DONE_FILE = "done.jsonl"
REPORT_FILE = "report.json"

# Drop reasons, in the order they are checked.
EMPTY_TEXT = "empty_text"
BAD_ENTITY = "malformed_entity"
UNKNOWN_TYPE = "unknown_type"
CONFLICTING_TYPES = "conflicting_types"
NAME_NOT_IN_TEXT = "name_not_in_text"
UNTAGGED = "no_entities_from_entity_seed"
DUPLICATE_OF_SEED = "duplicate_of_seed"
DUPLICATE = "duplicate"


@attrs.define
class SynthesisReport:
    """The yield of a synthesis run (all seeds done so far, resumed ones included)."""

    seeds: int = 0
    resumed: int = 0
    processed: int = 0
    failed: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    generated: int = 0
    kept: int = 0
    kept_by_kind: Counter = attrs.field(factory=Counter)
    dropped: Counter = attrs.field(factory=Counter)
    failure_kinds: Counter = attrs.field(factory=Counter)
    seconds: float = 0.0
    seconds_per_seed: list[float] = attrs.field(factory=list)
    outputs: dict[str, str] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        per = self.seconds_per_seed
        return {
            "seeds": self.seeds,
            "resumed": self.resumed,
            "processed": self.processed,
            "failed": self.failed,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "generated": self.generated,
            "kept": self.kept,
            "kept_by_kind": dict(self.kept_by_kind),
            "dropped": dict(sorted(self.dropped.items())),
            "yield": round(self.kept / self.generated, 4) if self.generated else 0.0,
            "failure_kinds": dict(self.failure_kinds),
            "seconds": round(self.seconds, 3),
            "seconds_per_seed_mean": round(statistics.fmean(per), 3) if per else 0.0,
            "seconds_per_seed_median": round(statistics.median(per), 3) if per else 0.0,
            "outputs": self.outputs,
        }


def normalize_for_dedupe(text: str) -> str:
    """Same sentence up to case, whitespace and spacing around punctuation."""
    return " ".join(tokenize(text.casefold()))


def check_candidate(
    candidate: SynthesisCandidate, labels: LabelSet
) -> tuple[tuple[str, ...], tuple[Entity, ...]] | str:
    """Tokens and entities of a valid candidate, or the reason it is invalid."""
    text = candidate.text.strip()
    tokens = tuple(tokenize(text))
    if not tokens:
        return EMPTY_TEXT
    canonical = {t.casefold(): t for t in labels.types}
    pairs: dict[str, tuple[str, str]] = {}
    for name, etype in candidate.entities:
        if not name.strip() or not etype.strip():
            return BAD_ENTITY
        real = canonical.get(etype.strip().casefold())
        if real is None:
            return UNKNOWN_TYPE
        key = " ".join(name.split()).casefold()
        if key in pairs and pairs[key][1] != real:
            return CONFLICTING_TYPES
        pairs[key] = (name, real)
    try:
        tags, missing = tag_names(tokens, pairs.values())
    except DataError:
        return CONFLICTING_TYPES
    if missing:
        return NAME_NOT_IN_TEXT
    entities = tuple(
        Entity(s, e, t, " ".join(tokens[s:e])) for s, e, t in tags_to_spans(tags).spans
    )
    return tokens, entities


class _SeedBackend(BackendWrapper):
    """The run's backend as one seed sees it: text only, with the seed's own meter."""

    supports_images = False  # type: ignore[assignment]

    def __init__(self, inner: MLLMBackend) -> None:
        super().__init__(inner)
        self.meter = UsageMeter()

    def complete(self, request: ChatRequest) -> ChatResponse:
        try:
            response = self.inner.complete(request)
        except Exception:
            self.meter.failed()
            raise
        self.meter.answered(response)
        return response


@attrs.frozen
class _SeedOutcome:
    seed: Sample
    candidates: tuple[SynthesisCandidate, ...]
    requests: int
    usage: Usage
    seconds: float
    failure: dict[str, str] | None


def _synthesize_one(
    seed: Sample, synthesizer: Synthesizer, backend: MLLMBackend, retries: int, debug: bool
) -> _SeedOutcome:
    counting = _SeedBackend(backend)
    started = time.perf_counter()
    failure = None
    candidates: list[SynthesisCandidate] = []
    for attempt in range(retries + 1):
        try:
            candidates = synthesizer.synthesize(seed, counting)
            failure = None
            break
        except Exception as exc:  # one bad seed never stops a run
            if debug:
                traceback.print_exc()
            failure = failure_from_exception(STAGE, exc).as_dict()
            retryable = (
                isinstance(exc, BackendError)
                and exc.retryable
                and not isinstance(exc, BackendUnavailable)
            )
            if not retryable or attempt == retries:
                break
            time.sleep(min(0.2 * 2**attempt, 2.0))
    spent = counting.meter.snapshot()
    return _SeedOutcome(
        seed,
        tuple(candidates),
        spent.calls + spent.cached_calls + spent.failed_calls,
        Usage(spent.prompt_tokens, spent.completion_tokens),
        time.perf_counter() - started,
        failure,
    )


class SynthesisStage(SynthStage):
    """The built-in synthesis stage (``run_synthesis``), registered as ``synth``."""

    def run(
        self,
        seeds: Sequence[Sample],
        synthesizer: Synthesizer,
        backend: MLLMBackend,
        labels: LabelSet,
        settings: SynthSettings,
        out_dir: Path,
        *,
        debug: bool = False,
    ) -> dict[str, Any]:
        report = run_synthesis(seeds, synthesizer, backend, labels, settings, out_dir, debug=debug)
        return report.as_dict()


def run_synthesis(
    seeds: Sequence[Sample],
    synthesizer: Synthesizer,
    backend: MLLMBackend,
    labels: LabelSet,
    settings: SynthSettings,
    out_dir: Path | str,
    *,
    debug: bool = False,
) -> SynthesisReport:
    """Synthesize from every seed not yet done; return the yield over all done seeds."""
    reason = backend.check_available()
    if reason:
        raise BackendUnavailable(f"{backend.describe()}: {reason}", where="synth")
    return _SynthesisRun(seeds, labels, settings, Path(out_dir)).run(synthesizer, backend, debug)


class _SynthesisRun:
    """One synthesis run in named steps: resume what an earlier run finished, run
    the remaining seeds, absorb each seed's candidates, tally the yield."""

    def __init__(
        self, seeds: Sequence[Sample], labels: LabelSet, settings: SynthSettings, out: Path
    ) -> None:
        self.started = time.perf_counter()
        self.labels = labels
        self.settings = settings
        out.mkdir(parents=True, exist_ok=True)
        self.paths = {n: out / n for n in (SAMPLES_FILE, CONLL_FILE, DONE_FILE, REPORT_FILE)}
        self.chosen = list(seeds[: settings.limit] if settings.limit is not None else seeds)
        self.seed_texts = {normalize_for_dedupe(s.text) for s in seeds}

    def resume(self) -> list[Sample]:
        """Seeds still to do; keeps the samples of seeds an earlier run finished."""
        records = {r["seed_id"]: r for r in load_records(self.paths[DONE_FILE])}
        finished = {
            sid
            for sid, r in records.items()
            if r.get("failure") is None or not self.settings.retry_failed
        }
        kept_before = [sample_from_dict(r) for r in load_records(self.paths[SAMPLES_FILE])]
        self.kept = [s for s in kept_before if s.meta.get("seed_id") in finished]
        if len(self.kept) != len(kept_before):  # samples of a seed interrupted before its record
            with atomic_write(self.paths[SAMPLES_FILE]) as fh:  # a kill keeps the old file
                for s in self.kept:
                    fh.write(json.dumps(sample_to_dict(s), ensure_ascii=False) + "\n")
        self.seen = {normalize_for_dedupe(s.text) for s in self.kept}
        return [s for s in self.chosen if s.id not in finished]

    def run(self, synthesizer: Synthesizer, backend: MLLMBackend, debug: bool) -> SynthesisReport:
        todo = self.resume()
        report = SynthesisReport(seeds=len(self.chosen), resumed=len(self.chosen) - len(todo))
        workers = self.settings.workers or max(1, backend.max_concurrency)
        hooks = get_hooks()
        hooks.stage_started(STAGE, len(todo))
        self.samples_out = JsonlAppender(self.paths[SAMPLES_FILE])
        self.done_out = JsonlAppender(self.paths[DONE_FILE])
        progress = bar(desc=STAGE, total=len(todo), unit="seed")

        def done(outcome: _SeedOutcome) -> None:
            self.absorb(outcome)
            report.processed += 1
            progress.update(1)

        try:
            run_concurrently(
                todo,
                lambda seed: _synthesize_one(
                    seed, synthesizer, backend, self.settings.retries, debug
                ),
                done,
                workers=workers,
            )
        finally:
            progress.close()
            self.samples_out.close()
            self.done_out.close()
        self.tally(report)
        hooks.stage_finished(STAGE, report.as_dict())
        return report

    def keep(self, outcome: _SeedOutcome, cand: SynthesisCandidate, n_kept: int) -> str | Sample:
        """The candidate as a training sample, or the reason it is dropped."""
        checked = check_candidate(cand, self.labels)
        if isinstance(checked, str):
            return checked
        tokens, entities = checked
        if self.settings.require_entities and outcome.seed.entities and not entities:
            return UNTAGGED
        norm = " ".join(t.casefold() for t in tokens)
        if self.settings.dedupe and norm in self.seed_texts:
            return DUPLICATE_OF_SEED
        if self.settings.dedupe and norm in self.seen:
            return DUPLICATE
        self.seen.add(norm)
        return Sample(
            f"{outcome.seed.id}-syn{n_kept}",
            tokens,
            cand.text.strip(),
            None,
            entities,
            meta={"synthetic": True, "seed_id": outcome.seed.id, "kind": cand.kind},
        )

    def absorb(self, outcome: _SeedOutcome) -> None:
        """Validate, de-duplicate and write one seed's candidates, then its record."""
        dropped: Counter = Counter()
        by_kind: Counter = Counter()
        n_kept = 0
        for cand in outcome.candidates:
            sample = self.keep(outcome, cand, n_kept)
            if isinstance(sample, str):
                dropped[sample] += 1
                continue
            self.samples_out.write_record(sample_to_dict(sample))
            self.kept.append(sample)
            n_kept += 1
            by_kind[cand.kind] += 1
        self.done_out.write_record(
            {
                "seed_id": outcome.seed.id,
                "requests": outcome.requests,
                "prompt_tokens": outcome.usage.prompt_tokens,
                "completion_tokens": outcome.usage.completion_tokens,
                "generated": len(outcome.candidates),
                "kept": n_kept,
                "kept_by_kind": dict(by_kind),
                "dropped": dict(dropped),
                "seconds": round(outcome.seconds, 3),
                "failure": outcome.failure,
            }
        )

    def tally(self, report: SynthesisReport) -> None:
        """The yield over every seed of this selection, resumed ones included; a seed
        tried in several runs contributes all its requests and seconds (the cost),
        and its last record says whether it failed."""
        chosen_ids = {s.id for s in self.chosen}
        per_seed_seconds: dict[str, float] = {}
        last: dict[str, dict[str, Any]] = {}
        for rec in load_records(self.paths[DONE_FILE]):
            sid = rec["seed_id"]
            if sid not in chosen_ids:
                continue
            last[sid] = rec
            report.requests += rec["requests"]
            report.prompt_tokens += rec.get("prompt_tokens", 0)
            report.completion_tokens += rec.get("completion_tokens", 0)
            report.generated += rec["generated"]
            report.kept += rec["kept"]
            report.kept_by_kind.update(rec.get("kept_by_kind", {}))
            report.dropped.update(rec.get("dropped", {}))
            per_seed_seconds[sid] = per_seed_seconds.get(sid, 0.0) + rec["seconds"]
        report.seconds_per_seed = list(per_seed_seconds.values())
        for rec in last.values():
            if rec.get("failure"):
                report.failed += 1
                report.failure_kinds[rec["failure"]["kind"]] += 1
        write_conll(self.kept, self.paths[CONLL_FILE], scheme=self.settings.scheme)
        report.seconds = time.perf_counter() - self.started
        report.outputs = {
            "jsonl": str(self.paths[SAMPLES_FILE]),
            "conll": str(self.paths[CONLL_FILE]),
            "done": str(self.paths[DONE_FILE]),
            "report": str(self.paths[REPORT_FILE]),
        }
        write_json(self.paths[REPORT_FILE], report.as_dict(), indent=1)
