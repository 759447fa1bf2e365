"""The one config file a user writes (TOML), validated by pydantic at load time,
plugin options included, so a typo fails before a 3-hour run and the error names
the dotted key. Secrets never live here (backends take an env variable's name).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import pydantic
import tomllib
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from refineg_core import secrets
from refineg_core.errors import ConfigError, RefinegError
from refineg_core.labels import LabelSet
from refineg_core.stage_settings import GroundSettings, PromptWording, RefineSettings, SynthSettings


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSource(StrictModel):
    """One dataset file and what is needed to read it."""

    path: Path
    format: str | None = Field(
        None,
        description="format plugin name (refineg plugins lists them; default: the one "
        "installed format that recognises the file)",
    )
    xml_dir: Path | None = Field(None, description="deprecated: options = {xml_dir = ...}")
    images_dir: Path | None = None
    entities: Path | None = Field(None, description="deprecated: options = {entities = ...}")
    limit: int | None = Field(None, ge=1, description="use only the first N samples")
    boxes: bool | None = Field(
        None,
        description="false: the data has no box annotations (every gold region is None); "
        "true: every entity must have its region; default: as the format reads it",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the format plugin (e.g. xml_dir, entities); relative "
        "paths are resolved against the config file's folder",
    )


class OutputsConfig(StrictModel):
    """What a run writes besides its native ``final.jsonl``."""

    formats: list[str] = Field(
        default_factory=list,
        description="format plugins to write the final results in as well (e.g. "
        '"twitter-gmner", "ccks"; refineg plugins lists them)',
    )


class DataConfig(StrictModel):
    train: DataSource | None = None
    dev: DataSource | None = None
    predict: DataSource | None = Field(None, description="the samples the pipeline labels")
    gold: DataSource | None = Field(
        None, description="gold labels for `predict` (default: `predict` itself when labelled)"
    )
    pool: DataSource | None = Field(None, description="demonstration pool (default: train)")
    extra_train: list[DataSource] = Field(
        default_factory=list, description="more training data, e.g. synthesized sentences"
    )
    use_synthesized: bool = Field(
        False, description="add this run's synth output (synth/synthetic.jsonl) to training"
    )


class SlotConfig(StrictModel):
    """A component slot: which plugin, with which options."""

    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)


class TaggerSlot(SlotConfig):
    plugin: str = "bert_crf"
    load_from: Path | None = Field(
        None, description="a saved tagger directory to use instead of training one"
    )


class GateSlot(SlotConfig):
    plugin: str = "entropy"


#: ``true`` runs an MLLM stage and makes an unusable backend an error; ``"auto"``
#: runs it when the backend answers and otherwise skips it with a note.
MllmStageSwitch = bool | Literal["auto"]


class StagesConfig(StrictModel):
    synth: bool = False
    train: bool = True
    predict: bool = True
    refine: MllmStageSwitch = Field(
        "auto", description='true | false | "auto" (skip with a note when the backend is down)'
    )
    ground: MllmStageSwitch = Field(
        "auto", description='true | false | "auto" (skip with a note when the backend is down)'
    )


class EngineConfig(StrictModel):
    """Where stages run; the core reads ``kind`` and ``chunk_size``, the rest is the
    engine plugin's own ``options``."""

    kind: str = Field(
        "local",
        description='an installed engine: "local" (this process) or "ray" (Ray Data; '
        "`pip install refineg[ray]`); `refineg plugins` lists them",
    )
    chunk_size: int = Field(
        1000,
        ge=1,
        description="posts per chunk: stages hold one chunk in memory, commit it to their "
        "output and resume after the last committed chunk",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the engine plugin (ray: address, tagger_actors, "
        "mllm_actors, num_cpus, num_gpus)",
    )
    # the ray engine's old spellings, moved into `options` with a FutureWarning
    address: Any = Field(None, description="deprecated: options = {address = ...}")
    tagger_actors: Any = Field(None, description="deprecated: options = {tagger_actors = ...}")
    mllm_actors: Any = Field(None, description="deprecated: options = {mllm_actors = ...}")
    num_cpus: Any = Field(None, description="deprecated: options = {num_cpus = ...}")
    num_gpus: Any = Field(None, description="deprecated: options = {num_gpus = ...}")
    _moved: set[str] = PrivateAttr(default_factory=set)


#: ``[engine]`` keys that are now the engine plugin's options.
DEPRECATED_ENGINE_KEYS = ("address", "tagger_actors", "mllm_actors", "num_cpus", "num_gpus")


class Config(StrictModel):
    run_dir: Path = Path("runs/default")
    cache_dir: Path | None = Field(
        None,
        description="MLLM response cache (default: <run_dir>/cache). Runs may share one: "
        "an entry's key holds everything that determines its answer",
    )
    labels: dict[str, str] = Field(description="entity type -> description for prompts")
    data: DataConfig = Field(default_factory=DataConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    synthesizer: SlotConfig | None = None
    tagger: TaggerSlot = Field(default_factory=TaggerSlot)
    uncertainty: GateSlot = Field(default_factory=GateSlot)
    backend: SlotConfig | None = None
    synth_backend: SlotConfig | None = Field(
        None, description="backend for the synthesizer (default: `backend`)"
    )
    selector: SlotConfig | None = None
    synth: SynthSettings = Field(default_factory=SynthSettings)
    refine: RefineSettings = Field(default_factory=RefineSettings)
    ground: GroundSettings = Field(default_factory=GroundSettings)
    prompts: PromptWording = Field(
        default_factory=PromptWording, description="domain wording of the MLLM prompts"
    )

    # Where the file was; relative paths were resolved against it.
    source: Path | None = Field(None, exclude=True)

    @property
    def label_set(self) -> LabelSet:
        """The label set, each type checked against the output writers now, not when
        writing the outputs after every MLLM call."""
        from refineg_core.validity import label_problem  # it asks the format plugins

        for etype in self.labels:
            problem = label_problem(etype)
            if problem is not None:
                raise ConfigError(problem, where="labels")
        return LabelSet(self.labels)

    def slot(self, name: str) -> SlotConfig | None:
        return getattr(self, name)


def _expand(value: Any) -> Any:
    return os.path.expanduser(os.path.expandvars(value)) if isinstance(value, str) else value


def _resolve_paths(model: BaseModel, base: Path) -> None:
    """Make every relative Path field absolute against the config file's folder."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path):
            expanded = Path(_expand(str(value)))
            setattr(model, name, Path(os.path.normpath(base / expanded)))
        elif isinstance(value, BaseModel):
            _resolve_paths(value, base)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    _resolve_paths(item, base)


def with_absolute_paths(config: Config, base: Path | None = None) -> Config:
    """A copy with relative paths made absolute against ``base`` (default: the current
    directory), for a process with another working directory (a Ray actor)."""
    copy = config.model_copy(deep=True)
    _resolve_paths(copy, Path.cwd() if base is None else base)
    return copy


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _written(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of an error location the user wrote (not pydantic's union tags)."""
    out: list[Any] = []
    node = raw
    for part in loc:
        if isinstance(node, dict):
            out.append(part)
            if part not in node:
                break  # a key the user left out (a required one)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            break  # below a value the user wrote: pydantic's own tags
    return tuple(out)


#: No option means a number beyond this: a bigger one is a typo or overflows a timer.
LARGEST_NUMBER = 1e12


def check_numbers(raw: Any, where: str = "") -> None:
    """Every number written is finite and sensible, or a ConfigError names its key
    (``nan`` in ``extra_body`` would fail every call of a run)."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            check_numbers(value, f"{where}.{key}" if where else str(key))
    elif isinstance(raw, list | tuple):
        for i, value in enumerate(raw):
            check_numbers(value, f"{where}.{i}")
    elif isinstance(raw, float):
        if not math.isfinite(raw):
            raise ConfigError(f"must be a finite number, got {raw}", where=where or "config")
        if abs(raw) > LARGEST_NUMBER:
            raise ConfigError(
                f"{raw:g} is beyond any sensible value (at most {LARGEST_NUMBER:g})",
                where=where or "config",
            )
    elif isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) >= 2**63:
        raise ConfigError(f"{raw} does not fit in 64 bits", where=where or "config")


def check_text(raw: Any, where: str = "") -> None:
    """Every string and key is UTF-8 text, or a ConfigError names its key (a lone
    surrogate would surface as pydantic's "Invalid JSON" with no place)."""
    items = raw.items() if isinstance(raw, dict) else enumerate(raw)
    for key, value in items:
        here = f"{where}.{key}" if where else str(key)
        for text in (key, value):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ConfigError(
                        f"holds a lone surrogate ({text[exc.start]!r} at character "
                        f"{exc.start}), which is not text; write the character itself",
                        where=here or "config",
                    ) from None
        if isinstance(value, dict | list | tuple):
            check_text(value, here)


def _as_json(raw: dict[str, Any]) -> str:
    """The config as JSON for strict validation (objects become strings, as in TOML)."""
    try:
        return json.dumps(raw, default=str, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a value cannot be read as config: {exc}", where="config") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` with VALUE parsed as TOML (falls back to a plain string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a table")
            node = child
        node[path[-1]] = value
    return raw


#: Inputs a run reads; each must exist when the config is loaded.
_INPUT_FIELDS = ("path", "xml_dir", "images_dir", "entities")


def data_sources(config: Config) -> list[tuple[str, DataSource]]:
    """Every data source of the config with its dotted key."""
    sources: list[tuple[str, DataSource]] = [
        (f"data.{name}", getattr(config.data, name))
        for name in ("train", "dev", "predict", "gold", "pool")
        if getattr(config.data, name) is not None
    ]
    sources += [(f"data.extra_train.{i}", src) for i, src in enumerate(config.data.extra_train)]
    return sources


def _source_options(config: Config, base: Path | None, check_paths: bool) -> None:
    """Resolve and check each source's path options; warn about the old keys."""
    from refineg_core.formats.loader import DEPRECATED_SOURCE_KEYS, option_paths

    for where, source in data_sources(config):
        for key in DEPRECATED_SOURCE_KEYS:
            if getattr(source, key, None) is not None:
                warnings.warn(
                    f"{where}.{key} is deprecated: write it as a format option, "
                    f"options = {{{key} = ...}}",
                    FutureWarning,
                    stacklevel=4,
                )
        for key, path in option_paths(source, base, config_key=where):
            if check_paths and not path.exists():
                raise ConfigError(f"{path} does not exist", where=f"{where}.options.{key}")


def _engine_options(config: Config) -> None:
    """Move the old spelling of the engine's options (``[engine] num_cpus = 1``) into
    ``engine.options`` with a FutureWarning; one the engine lacks stays ignored."""
    engine = config.engine
    old = {k: v for k in DEPRECATED_ENGINE_KEYS if (v := getattr(engine, k)) is not None}
    if not old:
        return
    from refineg_core import registry
    from refineg_core.errors import PluginError

    try:
        known = registry.load_class("engine", engine.kind, config_key="engine").Options
    except PluginError:
        known = None  # the plugin check names the missing engine
    for key, value in old.items():
        setattr(engine, key, None)
        if known is not None and key not in known.model_fields:
            warnings.warn(
                f"engine.{key} is deprecated, and the {engine.kind!r} engine has no such "
                "option: it is ignored, as it always was",
                FutureWarning,
                stacklevel=4,
            )
            continue
        warnings.warn(
            f"engine.{key} is deprecated: write it as an engine option, options = {{{key} = ...}}",
            FutureWarning,
            stacklevel=4,
        )
        if key in engine.options:
            raise ConfigError(
                f"{key!r} is given twice (here and in options); keep options.{key}",
                where=f"engine.{key}",
            )
        engine.options[key] = value
        engine._moved.add(key)


def engine_overrides(path: Path | str, kind: str, sets: list[str]) -> list[str]:
    """``--set`` overrides plus ``--engine KIND``, which wins; the file's options of
    another engine are dropped first (``--set engine.options.*`` still counts)."""
    reset: list[str] = []
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = {}  # load_config reports it, with its place
    table = raw.get("engine")
    if isinstance(table, dict) and table.get("kind", "local") != kind:
        reset.append("engine.options={}")
    return [*reset, *sets, f"engine.kind={json.dumps(kind)}"]


def _check_engine(config: Config) -> None:
    """The engine is installed and its options valid, or an error names the key where
    the user wrote it."""
    engine = config.engine
    try:
        _check_plugin("engine", engine.kind, engine.options, "engine")
    except RefinegError as exc:
        key = (exc.where or "").removeprefix("engine.options.").split(".")[0]
        if key not in engine._moved:
            raise
        message = str(exc).removeprefix(f"{exc.where}: ")
        raise type(exc)(message, where=f"engine.{key}") from None


def check_input_paths(config: Config) -> None:
    """Every input path exists, or a ConfigError names it (before training, not after)."""
    for where, source in data_sources(config):
        for field in _INPUT_FIELDS:
            value = getattr(source, field)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"{value} does not exist", where=f"{where}.{field}")
    load_from = config.tagger.load_from
    if load_from is not None and not Path(load_from).is_dir():
        raise ConfigError(f"{load_from} is not a saved tagger directory", where="tagger.load_from")


def config_from_dict(
    raw: dict[str, Any],
    *,
    base: Path | None = None,
    check_plugins: bool = True,
    check_paths: bool = True,
) -> Config:
    check_numbers(raw)
    check_text(raw)
    try:
        # strict, as JSON: "10" is not 10, while str paths and lists are taken as meant
        config = Config.model_validate_json(_as_json(raw), strict=True)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        where = _dotted(_written(raw, err["loc"])) or "config"
        raise ConfigError(f"{err['msg']}{more}", where=where) from None
    if not config.labels:
        raise ConfigError("at least one entity type is needed", where="labels")
    _check_wording(config)
    config.source = base
    if base is not None:
        _resolve_paths(config, base)
    _source_options(config, base, check_paths)
    _engine_options(config)
    if check_plugins:
        validate_plugins(config)
    if check_paths:
        check_input_paths(config)
    return config


def load_config(
    path: Path | str,
    overrides: list[str] | None = None,
    *,
    check_plugins: bool = True,
    check_paths: bool = True,
) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", where=str(path))
    data = path.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc}", where=str(path)) from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line}, column "
            f"{column}); save the config as UTF-8",
            where=f"{path}:{line}",
        ) from None
    apply_overrides(raw, overrides or [])
    try:
        return config_from_dict(
            raw, base=path.resolve().parent, check_plugins=check_plugins, check_paths=check_paths
        )
    except ConfigError as exc:
        where = f"{path}: {exc.where}" if exc.where else str(path)
        raise ConfigError(
            str(exc).split(": ", 1)[-1] if exc.where else str(exc), where=where
        ) from None


SLOT_NAMES = ("synthesizer", "tagger", "uncertainty", "backend", "synth_backend", "selector")


def slot_kind(config_key: str) -> str:
    """The registry slot a config table fills (``synth_backend`` is a backend)."""
    return "backend" if config_key == "synth_backend" else config_key


def validate_plugins(config: Config) -> None:
    """Import the named plugins (only those) and validate their options now."""
    for key in SLOT_NAMES:
        slot_cfg = config.slot(key)
        if slot_cfg is not None:
            _check_plugin(slot_kind(key), slot_cfg.plugin, slot_cfg.options, key)
    _check_engine(config)
    from refineg_core.formats.loader import check_data_sources
    from refineg_core.formats.writers import output_formats

    check_data_sources(config.data)
    output_formats(config.outputs.formats)


def _check_plugin(kind: str, name: str, options: dict[str, Any], key: str) -> None:
    """Load the plugin ``key`` names and validate its options, strictly."""
    from refineg_core import registry

    cls = registry.load_class(kind, name, config_key=key)
    registry.validate_options(kind, name, cls, options, config_key=key)
    _strict_options(cls, options, f"{key}.options", name)


def effective(config: Config) -> Config:
    """The config as the stages use it (refine and ground worded by ``[prompts]``)."""
    return config.model_copy(
        update={
            stage: getattr(config, stage).model_copy(update={"wording": config.prompts})
            for stage in ("refine", "ground")
        }
    )


def _check_wording(config: Config) -> None:
    """A stage's own wording must equal ``[prompts]``, else it would be silently ignored."""
    for stage in ("refine", "ground"):
        settings = getattr(config, stage)
        if "wording" in settings.model_fields_set and settings.wording != config.prompts:
            raise ConfigError(
                "the prompts' wording is set in [prompts]; this table is not used",
                where=f"{stage}.wording",
            )


def _strict_options(cls: type, options: dict[str, Any], where: str, name: str) -> None:
    """A plugin's options as written are not coerced either (``"4"`` is not 4)."""
    model = getattr(cls, "Options", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return
    raw = dict(options)
    try:
        model.model_validate_json(_as_json(raw), strict=True)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        path = _dotted(_written(raw, err["loc"]))
        raise ConfigError(
            f"{err['msg']} (plugin {name!r})", where=f"{where}.{path}" if path else where
        ) from None


def redacted_dump(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, secrets redacted (to print and to store)."""
    data = effective(config).model_dump(mode="json", exclude_none=True)
    return secrets.redact(data)
