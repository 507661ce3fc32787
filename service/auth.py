"""Who may call the service: API keys with scopes, and per-key limits on requests and Monte Carlo work.

The keys file (``MCSERVE_API_KEYS_FILE``, TOML) holds one ``[[keys]]`` table per key::

    [[keys]]
    id = "app"                                  # shown in logs and metrics (never the token)
    sha256 = "<64 hex digits>"                  # sha256 of the token; tokens are never stored
    scopes = ["infer"]                          # a subset of infer, metrics, admin
    requests_per_minute = 600                   # optional token bucket, burst = the per-minute figure
    mc_passes_per_minute = 1_000_000            # optional: n_samples x images of uncertainty requests

``infer`` may call inference and read the model's description (REST, v2 REST, v2 gRPC); ``metrics`` may read
``/metrics``; ``admin`` may do both. ``/livez``, ``/readyz``, ``/v2/health/*`` and gRPC health are open. A
request presents ``Authorization: Bearer <token>`` (gRPC: metadata ``authorization``); the token's sha256 is
compared with every key's digest in constant time. The file is re-read on SIGHUP; a bad new file keeps the old
keys and logs why. Nothing here knows HTTP or gRPC: adapters call :meth:`Authenticator.authorize` and map
:class:`AuthError` (a :class:`~service.errors.ServiceError`) to their status codes.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import math
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ServiceError

log = logging.getLogger("service.auth")

SCOPES = ("infer", "metrics", "admin")
_FIELDS = frozenset({"id", "sha256", "scopes", "requests_per_minute", "mc_passes_per_minute"})
ANONYMOUS = "anonymous"


class KeysFileError(ValueError):
    """A keys file that cannot be used; the message names the file, the key and what to fix."""


class AuthError(ServiceError):
    """401 ``unauthorized``, 403 ``forbidden`` or 429 ``rate_limited`` (with ``retry_after_s``)."""

    def __init__(self, status: int, code: str, message: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(status, code, message, None)
        self.reason = reason  # the metrics' and logs' label: missing, invalid, scope, requests, mc_passes
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s or 1.0)))

    def headers(self) -> dict[str, str]:
        if self.status == 401:
            return {"WWW-Authenticate": 'Bearer realm="mcserve"'}
        if self.status == 429:
            return {"Retry-After": self.retry_after}
        return {}


@dataclass(frozen=True)
class Key:
    id: str
    digest: bytes  # sha256 of the token
    scopes: frozenset[str]
    requests_per_minute: float | None = None
    mc_passes_per_minute: float | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class TokenBucket:
    """``per_minute`` tokens a minute, at most ``per_minute`` saved up (the burst); thread-safe."""

    def __init__(self, per_minute: float) -> None:
        self.capacity = float(per_minute)
        self.rate = float(per_minute) / 60.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: float) -> float | None:
        """Take ``n`` tokens: None when granted, else the seconds until they would be there."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if n <= self.tokens:
                self.tokens -= n
                return None
            return (min(n, self.capacity) - self.tokens) / self.rate if self.rate > 0 else math.inf


def _limit(entry: dict[str, Any], name: str, where: str) -> float | None:
    value = entry.get(name)
    if value is None:
        return None
    if type(value) not in (int, float) or not value >= 1:  # below 1 the burst could never hold one request
        raise KeysFileError(f"{where}: {name} must be a number of at least 1, got {value!r}")
    return float(value)


def parse_keys(text: str, source: str) -> dict[bytes, Key]:
    """The keys of a keys file's text, by digest; :class:`KeysFileError` for anything wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeysFileError(f"{source}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"keys"})
    if unknown:
        raise KeysFileError(f"{source}: unknown top-level entry {unknown[0]!r}; the file holds [[keys]] tables only")
    entries = data.get("keys", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise KeysFileError(f"{source}: 'keys' must be an array of tables ([[keys]])")
    keys: dict[bytes, Key] = {}
    ids: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: key {i + 1}"
        key_id = entry.get("id")
        if not isinstance(key_id, str) or not key_id or len(key_id) > 64 or not key_id.isprintable():
            raise KeysFileError(f"{where}: id must be a non-empty printable string of at most 64 characters")
        where = f"{source}: key {key_id!r}"
        extra = sorted(set(entry) - _FIELDS)
        if extra:
            raise KeysFileError(f"{where}: unknown field {extra[0]!r} (allowed: {', '.join(sorted(_FIELDS))})")
        if key_id in ids:
            raise KeysFileError(f"{where}: duplicate id")
        digest_hex = entry.get("sha256")
        if not isinstance(digest_hex, str) or len(digest_hex) != 64:
            raise KeysFileError(f"{where}: sha256 must be the 64 hex digits of the token's SHA-256 digest")
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            raise KeysFileError(f"{where}: sha256 must be the 64 hex digits of the token's SHA-256 digest") from None
        if digest in keys:
            raise KeysFileError(f"{where}: same sha256 as key {keys[digest].id!r} (one token, two keys)")
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise KeysFileError(f"{where}: scopes must be a non-empty list, a subset of {', '.join(SCOPES)}")
        bad = [s for s in scopes if s not in SCOPES]
        if bad:
            raise KeysFileError(f"{where}: unknown scope {bad[0]!r} (allowed: {', '.join(SCOPES)})")
        keys[digest] = Key(
            key_id,
            digest,
            frozenset(scopes),
            _limit(entry, "requests_per_minute", where),
            _limit(entry, "mc_passes_per_minute", where),
        )
        ids.add(key_id)
    return keys


def load_keys(path: Path) -> dict[bytes, Key]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_keys(text, str(path))


current_key: contextvars.ContextVar[Key | None] = contextvars.ContextVar("mcserve_key", default=None)


@dataclass
class _Buckets:
    requests: TokenBucket | None = None
    mc_passes: TokenBucket | None = None
    limits: tuple[float | None, float | None] = field(default=(None, None))


class Authenticator:
    """The keys in force and each key's buckets; ``enabled`` is False without a keys file (everything open)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._keys: dict[bytes, Key] = load_keys(path) if path is not None else {}
        self._buckets: dict[str, _Buckets] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    @property
    def key_ids(self) -> list[str]:
        return sorted(k.id for k in self._keys.values())

    def reload(self) -> bool:
        """Re-read the keys file (SIGHUP); a bad file keeps the keys in force. True when the new keys took over."""
        if self.path is None:
            return False
        try:
            keys = load_keys(self.path)
        except KeysFileError as exc:
            log.error("keys file not reloaded, the previous %d keys stay in force: %s", len(self._keys), exc)
            return False
        self._keys = keys
        log.info("keys file reloaded: %d keys (%s)", len(keys), ", ".join(sorted(k.id for k in keys.values())))
        return True

    def identify(self, authorization: str | None) -> Key:
        """The key a request's ``Authorization`` value presents; :class:`AuthError` 401 when none matches."""
        if not authorization:
            raise AuthError(401, "unauthorized", "this endpoint needs an API key: send Authorization: Bearer <token>",
                            "missing")  # fmt: skip
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "unauthorized", "the Authorization header must be 'Bearer <token>'", "invalid")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, key in self._keys.items():  # every digest compared, in constant time: no early exit
            if hmac.compare_digest(known, digest):
                found = key
        if found is None:
            raise AuthError(401, "unauthorized", "the API key is not valid", "invalid")
        return found

    def authorize(self, authorization: str | None, scope: str) -> Key:
        """The caller's key if it may use ``scope`` and is within its request rate (one request taken)."""
        key = self.identify(authorization)
        if not key.allows(scope):
            held = ", ".join(sorted(key.scopes))
            raise AuthError(403, "forbidden", f"key {key.id!r} lacks the {scope!r} scope (it has {held})", "scope")
        bucket = self._buckets_of(key).requests
        wait = None if bucket is None else bucket.take(1)
        if wait is not None:
            raise AuthError(
                429, "rate_limited", f"key {key.id!r} is over its requests_per_minute ({key.requests_per_minute:g})",
                "requests", wait,
            )  # fmt: skip
        return key

    def charge_mc(self, key: Key | None, passes: int) -> None:
        """Take ``passes`` (n_samples x images) from ``key``'s MC budget; 429 when over it. No key: no charge."""
        if key is None:
            return
        bucket = self._buckets_of(key).mc_passes
        if bucket is None:
            return
        wait = bucket.take(passes)
        if wait is None:
            return
        limit = key.mc_passes_per_minute or 0.0
        if passes > limit:
            message = (f"this request's {passes} MC passes (n_samples x images) exceed key {key.id!r}'s "
                       f"mc_passes_per_minute ({limit:g}); send fewer images or passes per request")  # fmt: skip
        else:
            message = f"key {key.id!r} is over its mc_passes_per_minute ({limit:g})"
        raise AuthError(429, "rate_limited", message, "mc_passes", 60.0 if passes > limit else wait)

    def _buckets_of(self, key: Key) -> _Buckets:
        limits = (key.requests_per_minute, key.mc_passes_per_minute)
        with self._lock:
            buckets = self._buckets.get(key.id)
            if buckets is None or buckets.limits != limits:  # new key, or its limits changed on reload
                buckets = _Buckets(
                    None if limits[0] is None else TokenBucket(limits[0]),
                    None if limits[1] is None else TokenBucket(limits[1]),
                    limits,
                )
                self._buckets[key.id] = buckets
            return buckets


OPEN_PATHS = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})


def scope_of_path(path: str) -> str | None:
    """The scope an HTTP request path needs; None for the open health endpoints."""
    if path in OPEN_PATHS:
        return None
    if path == "/metrics":
        return "metrics"
    return "infer"
