"""Everything a plugin author needs, from one module.

    from refineg.plugin import Tagger, PluginOptions, Sample, TaggerPrediction

A plugin is a class that subclasses one of the seven contracts below, has a
nested pydantic ``Options`` model and the constructor ``(options, labels)``,
and is registered under its kind's entry-point group (``KINDS``; ``refineg
plugins --kinds`` prints the table). The eighth kind, an ``Engine`` (where a
stage's chunks run: ``local``, ``ray``), is built from the run's ``Worker``
and its own options (``__init__(self, worker, options)``), gives each MLLM
stage run one ``StageHealth`` and yields ``StageSummary`` per MLLM chunk.
The ninth, a ``Stage``, is a ``SynthStage`` (``synth``: ``run``) or an
``MLLMStage`` (``refine``, ``ground`` or a variant of one), built per chunk
from a ``StageSetup`` (``MLLMStage.build``), that supplies a ``Call`` or a
``Skip`` per sample, a ``Judgement`` of each answer's text (or an
``AnswerError``) and the ``Applied`` entities; ``dry_run`` lists its requests.
The value types are what the contracts take and return (all frozen); the
errors are what a plugin raises (each turns into one located line and exit 2,
or a sample failure for backends); the
testing helpers make a class selectable by name without installing anything
(``register_plugin``), build a plugin by kind and name with validated options
as a run does (``create_plugin``), install a throwaway distribution with entry
points (``fake_distribution``) and run the CLI in-process (``run_cli``).
``hookimpl`` marks pluggy hook implementations (events, extra commands);
``create_box_frame`` builds a box frame by name, for a backend's ``box_codec``.
``ScoreGate`` is the gate that only scores (the core owns threshold, priority
and budget; ``DecisionOptions`` are its options). ``EXTRAS`` is the table of
what a tagger may report beyond its marginals (``TaggerPrediction.extras``;
a gate's ``needs_extras``).

Nothing here is new: these are the core's own classes, re-exported so that a
plugin imports from one place and keeps working when the core moves things.
"""

from refineg_core.chat import ChatMessage, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from refineg_core.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    DataError,
    PluginError,
    RefinegError,
    SampleImageError,
    TaggerError,
)
from refineg_core.evaluation import evaluate
from refineg_core.extras import EXTRAS, Extra
from refineg_core.formats.base import Dataset, DatasetFormat, read_text_file, text_lines
from refineg_core.gating import DecisionOptions, ScoreGate
from refineg_core.hooks import hookimpl
from refineg_core.interfaces import (
    BoxCodec,
    ContextSelector,
    MLLMBackend,
    Plugin,
    PluginOptions,
    Synthesizer,
    Tagger,
    UncertaintyEstimator,
)
from refineg_core.kinds import KINDS, PluginKind
from refineg_core.labels import (
    LabelSet,
    find_token_spans,
    spans_to_tags,
    tag_names,
    tags_to_spans,
    tokenize,
)
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.engine_contract import Engine, MllmChunk
from refineg_core.pipeline.stage_contract import (
    AnswerError,
    Applied,
    Call,
    Judgement,
    MLLMStage,
    Skip,
    Stage,
    StageSetup,
    SynthStage,
    dry_run,
)
from refineg_core.pipeline.summary import StageSummary
from refineg_core.pipeline.worker import Worker
from refineg_core.registry import create as create_plugin
from refineg_core.registry import create_box_frame
from refineg_core.runstore import atomic_write
from refineg_core.testing import CliResult, fake_distribution, register_plugin, run_cli
from refineg_core.types import (
    SOURCE_GOLD,
    SOURCE_MLLM,
    SOURCE_RULE,
    SOURCE_TAGGER,
    Box,
    Demonstration,
    Entity,
    Failure,
    GateDecision,
    GateVerdict,
    ImageRef,
    Sample,
    SampleResult,
    SynthesisCandidate,
    TaggerPrediction,
)

#: The contracts, one per plugin kind (the same order as ``KINDS``).
CONTRACTS = tuple(k.base for k in KINDS)

__all__ = [
    "CONTRACTS",
    "EXTRAS",
    "KINDS",
    "SOURCE_GOLD",
    "SOURCE_MLLM",
    "SOURCE_RULE",
    "SOURCE_TAGGER",
    "AnswerError",
    "Applied",
    "BackendError",
    "BackendUnavailable",
    "Box",
    "BoxCodec",
    "Call",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "CliResult",
    "ConfigError",
    "ContextSelector",
    "DataError",
    "Dataset",
    "DatasetFormat",
    "DecisionOptions",
    "Demonstration",
    "Engine",
    "Entity",
    "Extra",
    "Failure",
    "GateDecision",
    "GateVerdict",
    "ImagePart",
    "ImageRef",
    "Judgement",
    "LabelSet",
    "MLLMBackend",
    "MLLMStage",
    "MllmChunk",
    "Plugin",
    "PluginError",
    "PluginKind",
    "PluginOptions",
    "RefinegError",
    "Sample",
    "SampleImageError",
    "SampleResult",
    "ScoreGate",
    "Skip",
    "Stage",
    "StageHealth",
    "StageSetup",
    "StageSummary",
    "SynthStage",
    "SynthesisCandidate",
    "Synthesizer",
    "Tagger",
    "TaggerError",
    "TaggerPrediction",
    "TextPart",
    "UncertaintyEstimator",
    "Usage",
    "Worker",
    "atomic_write",
    "create_box_frame",
    "create_plugin",
    "dry_run",
    "evaluate",
    "fake_distribution",
    "find_token_spans",
    "hookimpl",
    "read_text_file",
    "register_plugin",
    "run_cli",
    "spans_to_tags",
    "tag_names",
    "tags_to_spans",
    "text_lines",
    "tokenize",
]
