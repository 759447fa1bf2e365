"""The Python API (README): ``refineg.load(...)`` returns the same ``Pipeline`` the CLI
uses; arguments are checked in ``posts``, stages run in ``pipeline.inmemory``."""

from __future__ import annotations

import json
from pathlib import Path

from refineg_core.config import apply_overrides, config_from_dict, load_config
from refineg_core.errors import ConfigError
from refineg_core.pipeline.orchestrator import Pipeline

__all__ = ["Pipeline", "load"]


def load(path: str | Path, *, overrides: list[str] | None = None) -> Pipeline:
    """A pipeline from a TOML config, or from a run directory (its ``config.json`` and
    trained tagger; its data files need not exist any more)."""
    path = Path(path)
    if path.is_dir():
        stored = path / "config.json"
        if not stored.is_file():
            raise ConfigError("not a run directory (no config.json)", where=str(path))
        raw = json.loads(stored.read_text(encoding="utf-8"))
        config = config_from_dict(apply_overrides(raw, overrides or []), check_paths=False)
        config.run_dir = path
        return Pipeline(config)
    return Pipeline(load_config(path, overrides, check_paths=False))
