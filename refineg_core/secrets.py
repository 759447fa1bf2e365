"""Keep configured secrets out of everything the project writes.

A secret reaches messages, cache entries and logs by many roads (servers echo
headers), so instead of guarding each road, secrets are *registered* once and every
writer passes its text through ``scrub``; ``redact`` masks option trees by key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

#: A key containing one of these words holds a secret (not ``*_env``: a name).
SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "credential")
#: "token" in these names means text units, not credentials (``max_tokens``, ``eos_token``).
_TOKENIZER_NAMES = re.compile(r"tokens|(eos|bos|pad|unk|sep|cls|mask|stop|special)_?token|tokeniz")
MASK = "***"
#: The only query-string keys whose values are not treated as secrets.
PLAIN_QUERY_KEYS = frozenset({"api-version", "api_version", "version"})
#: Shorter values are not scrubbed: they would mangle ordinary text and are no real key.
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def is_secret_key(key: str) -> bool:
    """Whether a value under ``key`` is a secret (``api_key``, ``Authorization``, ``hf_token``)."""
    lowered = key.lower()
    if lowered.endswith("_env"):
        return False
    if any(w in lowered for w in SECRET_WORDS if w != "token"):
        return True
    return "token" in lowered and not _TOKENIZER_NAMES.search(lowered)


def _variants(value: str) -> set[str]:
    """The forms a secret takes in writers' output: raw, JSON-escaped, URL-quoted, bare token."""
    out = {value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]}
    out.add(urllib.parse.quote(value, safe=""))
    out.update(part for part in value.split() if len(part) >= MIN_SECRET_LENGTH)
    scheme, _, credential = value.partition(" ")
    if scheme.lower() == "basic" and credential:  # a server may echo it decoded
        out |= _basic_forms(credential.strip())
    return {v for v in out if len(v) >= MIN_SECRET_LENGTH}


def _basic_forms(encoded: str) -> set[str]:
    """``user:password`` and ``password`` of a Basic credential (base64), if it decodes."""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return set()
    password = decoded.partition(":")[2]
    return {decoded, password} if password else {decoded}


def basic_credential(user: str, password: str) -> str:
    """What an HTTP client sends for ``user:password`` (``Basic`` + base64)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def register(values: Iterable[str | None]) -> None:
    """Add secret values; every later ``scrub`` hides them."""
    global _pattern
    new = set()
    for value in values:
        if isinstance(value, str) and value.strip():
            new |= _variants(value.strip())
    with _lock:
        if new <= _secrets:
            return
        _secrets.update(new)
        ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leaks
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))
    _install_log_filter()


def forget_all() -> None:
    """Drop every registered secret (tests)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not isinstance(text, str):
        return text
    return pattern.sub(MASK, text)


def scrub_data(node: Any) -> Any:
    """``scrub`` applied to every string (keys included) of a JSON-like tree."""
    if _pattern is None:
        return node
    if isinstance(node, str):
        return scrub(node)
    if isinstance(node, Mapping):
        return {scrub_data(k): scrub_data(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [scrub_data(v) for v in node]
    return node


def secret_values(node: Any, inside: bool = False) -> list[str]:
    """Every string under a secret-sounding key of an option tree (to ``register``)."""
    if isinstance(node, Mapping):
        return [
            s
            for k, v in node.items()
            for s in secret_values(v, inside or (isinstance(k, str) and is_secret_key(k)))
        ]
    if isinstance(node, (list, tuple)):
        return [s for v in node for s in secret_values(v, inside)]
    if isinstance(node, str) and inside:
        return [node]
    return []


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries, to ``register``: its userinfo (in every form a client
    sends it) and every query value but an ``api-version``."""
    parts = urllib.parse.urlsplit(url)
    found: list[str] = []
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        # a key given as the user name (``https://KEY@host``) is the secret then
        found += [parts.password or parts.username or "", password or user]
        found += [f"{user}:{password}", basic_credential(user, password)]
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() not in PLAIN_QUERY_KEYS or is_secret_key(key):
            found.append(value)
    return [f for f in found if f]


def redact_url(text: str) -> str:
    """A URL without its userinfo and query secrets; any other string as it is."""
    if "://" not in text:
        return text
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018  (raises on a malformed port: then it is no URL)
    except ValueError:
        return text
    if not parts.scheme or not parts.netloc:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{MASK}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{urllib.parse.quote(k, safe='-_.')}="
            + (
                urllib.parse.quote(v, safe="-_.:")
                if k.lower() in PLAIN_QUERY_KEYS and not is_secret_key(k)
                else MASK
            )
            for k, v in pairs
        )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(node: Any, inside: bool = False) -> Any:
    """An option tree with strings under secret-sounding keys masked and URLs redacted;
    numbers stay (they shape answers, so a cache identity keeps them)."""
    if isinstance(node, Mapping):
        return {
            k: redact(v, inside or (isinstance(k, str) and is_secret_key(k)))
            for k, v in node.items()
        }
    if isinstance(node, (list, tuple)):
        return [redact(v, inside) for v in node]
    if inside and isinstance(node, str):
        return MASK
    if isinstance(node, str):
        return redact_url(node)
    return node


class ScrubFilter(logging.Filter):
    """Scrubs log records on their way to a handler (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _pattern is not None:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # a malformed record: logging reports it itself
                return True
            record.msg = scrub(message)
            record.args = None
        return True


_filter = ScrubFilter()


def _install_log_filter() -> None:
    """Put the filter on the root logger's handlers (idempotent)."""
    for handler in logging.getLogger().handlers:
        if _filter not in handler.filters:
            handler.addFilter(_filter)
