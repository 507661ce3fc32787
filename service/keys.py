"""``mcserve-keys`` / ``python -m service.keys``: make API keys and check keys files (see :mod:`service.auth`).

    mcserve-keys new --id app --scopes infer [--requests-per-minute 600] [--mc-passes-per-minute 1000000]
        prints a fresh random token once, and the ``[[keys]]`` table (its sha256, never the token) to paste
        into the keys file (``MCSERVE_API_KEYS_FILE``); reload a running service with SIGHUP
    mcserve-keys check FILE
        validates a keys file as the service would: exit 0 and a one-line summary, or exit 2 and the error
    mcserve-keys digest < token
        the sha256 hex digest of the token read from stdin (for scripts)

Output of ``new`` (stdout): line 1 the label, line 2 the token alone, then a blank line and the table, which
starts at the line ``[[keys]]``. Every error is one line on stderr (``mcserve-keys: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import secrets
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from .auth import SCOPES, Key, KeysFileError, load_keys, parse_keys

PROG = "mcserve-keys"
TOKEN_PREFIX = "mcs_"
EXIT_OK = 0
EXIT_ERROR = 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit 2 as argparse does."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see {PROG} --help)")


def token_digest(token: str) -> str:
    """The hex sha256 a keys file holds for ``token``, computed as the service does for a presented token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def _toml_string(value: str) -> str:
    """A TOML basic string (quotes, backslashes and control characters escaped)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _scopes(text: str) -> list[str]:
    scopes: list[str] = []
    for part in text.split(","):
        scope = part.strip()
        if not scope:
            raise _UsageError(f"--scopes {text!r}: empty scope; give a comma-separated subset of {', '.join(SCOPES)}")
        if scope not in SCOPES:
            raise _UsageError(f"--scopes: unknown scope {scope!r} (allowed: {', '.join(SCOPES)})")
        if scope not in scopes:
            scopes.append(scope)
    return scopes


def _per_minute(option: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _UsageError(f"{option}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise _UsageError(f"{option}: must be a positive number, got {text!r}")
    if value < 1:  # the burst is the per-minute figure: below 1, not even one request (or pass) ever fits
        raise _UsageError(f"{option}: must be at least 1 (the burst equals the per-minute figure), got {text!r}")
    return value


def key_table(key_id: str, digest_hex: str, scopes: Sequence[str], rpm: float | None, mcpm: float | None) -> str:
    lines = [
        "[[keys]]",
        f"id = {_toml_string(key_id)}",
        f'sha256 = "{digest_hex}"',
        "scopes = [" + ", ".join(_toml_string(s) for s in scopes) + "]",
    ]
    if rpm is not None:
        lines.append(f"requests_per_minute = {_toml_number(rpm)}")
    if mcpm is not None:
        lines.append(f"mc_passes_per_minute = {_toml_number(mcpm)}")
    return "\n".join(lines) + "\n"


def _new(args: argparse.Namespace) -> int:
    key_id: str = args.id
    if not key_id or len(key_id) > 64 or not key_id.isprintable():
        raise _UsageError(f"--id {key_id!r}: must be a non-empty printable string of at most 64 characters")
    scopes = _scopes(args.scopes)
    rpm = _per_minute("--requests-per-minute", args.requests_per_minute)
    mcpm = _per_minute("--mc-passes-per-minute", args.mc_passes_per_minute)
    token = new_token()
    table = key_table(key_id, token_digest(token), scopes, rpm, mcpm)
    try:
        parse_keys(table, "the new key")  # exactly what the service will accept
    except KeysFileError as exc:
        raise _UsageError(str(exc)) from None
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"token for key {key_id!r} (shown only this once; mcserve keeps only its sha256):")
    print(token)
    print()
    print(f"# key {key_id!r}, made {created}: paste into the keys file (MCSERVE_API_KEYS_FILE); then SIGHUP mcserve")
    print(table, end="", flush=True)
    return EXIT_OK


def _describe(key: Key) -> str:
    extra = []
    if key.requests_per_minute is not None:
        extra.append(f"{key.requests_per_minute:g} requests/min")
    if key.mc_passes_per_minute is not None:
        extra.append(f"{key.mc_passes_per_minute:g} MC passes/min")
    return f"{key.id} ({'+'.join(s for s in SCOPES if s in key.scopes)}{''.join(', ' + e for e in extra)})"


def _check(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        keys = load_keys(path)
    except KeysFileError as exc:
        raise _UsageError(str(exc)) from None
    if not keys:
        print(f"{path}: ok, 0 keys (every request except the health endpoints will be refused)")
        return EXIT_OK
    described = ", ".join(_describe(k) for k in sorted(keys.values(), key=lambda k: k.id))
    print(f"{path}: ok, {len(keys)} key{'s' if len(keys) != 1 else ''}: {described}")
    return EXIT_OK


def _digest(args: argparse.Namespace) -> int:
    token = sys.stdin.read().strip()
    if not token:
        raise _UsageError("digest: no token on stdin")
    if any(ch.isspace() for ch in token):
        raise _UsageError("digest: expected one token on stdin, got text with whitespace in it")
    print(token_digest(token))
    return EXIT_OK


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Make mcserve API keys and check keys files (MCSERVE_API_KEYS_FILE).",
        epilog=f"scopes: {', '.join(SCOPES)} (admin includes the others)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    new = sub.add_parser("new", help="print a fresh token once and the [[keys]] table to paste")
    new.add_argument("--id", required=True, help="the key's name, shown in logs and metrics (not secret)")
    new.add_argument("--scopes", required=True, help=f"comma-separated subset of {', '.join(SCOPES)}")
    new.add_argument("--requests-per-minute", metavar="N", help="token bucket; burst = N")
    new.add_argument("--mc-passes-per-minute", metavar="N", help="n_samples x images budget; burst = N")
    new.set_defaults(run=_new)
    check = sub.add_parser("check", help="validate a keys file as the service would")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=_check)
    digest = sub.add_parser("digest", help="print the sha256 of the token read from stdin")
    digest.set_defaults(run=_digest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        code: int = args.run(args)
        return code
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
