"""The keys file, token buckets and the authorisation decisions of ``service.auth`` (no server)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.auth import Authenticator, AuthError, KeysFileError, TokenBucket, parse_keys, scope_of_path


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _table(key_id: str, token: str, scopes: str = '"infer"', extra: str = "") -> str:
    return f'[[keys]]\nid = "{key_id}"\nsha256 = "{_digest(token)}"\nscopes = [{scopes}]\n{extra}\n'


GOOD = (
    _table("app", "t-app", extra="requests_per_minute = 2")
    + _table("mon", "t-mon", '"metrics"')
    + _table("root", "t-root", '"admin"', "mc_passes_per_minute = 150")
)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[keys]\n", "not valid TOML"),
        ("keys = 3", "array of tables"),
        ("[other]\nx = 1", "unknown top-level entry 'other'"),
        (_table("a", "x", '"infer", "root"'), "unknown scope 'root'"),
        (_table("a", "x", ""), "scopes must be a non-empty list"),
        (_table("a", "x") + _table("a", "y"), "duplicate id"),
        (_table("a", "x") + _table("b", "x"), "same sha256 as key 'a'"),
        ('[[keys]]\nid = "a"\nsha256 = "abc"\nscopes = ["infer"]', "64 hex digits"),
        ('[[keys]]\nid = "a"\nsha256 = "' + "zz" * 32 + '"\nscopes = ["infer"]', "64 hex digits"),
        ('[[keys]]\nsha256 = "' + "0" * 64 + '"\nscopes = ["infer"]', "id must be"),
        (_table("a", "x", extra="token = 'secret'"), "unknown field 'token'"),
        (_table("a", "x", extra="requests_per_minute = 0"), "requests_per_minute must be a number of at least 1"),
        (_table("a", "x", extra="requests_per_minute = 0.5"), "requests_per_minute must be a number of at least 1"),
        (_table("a", "x", extra='mc_passes_per_minute = "many"'), "mc_passes_per_minute must be a number of at least"),
    ],
)
def test_a_bad_keys_file_is_refused_with_what_to_fix(text: str, problem: str) -> None:
    with pytest.raises(KeysFileError, match=r"keys\.toml") as info:
        parse_keys(text, "keys.toml")
    assert problem in str(info.value)


def test_good_keys_parse() -> None:
    keys = parse_keys(GOOD, "keys.toml")
    by_id = {k.id: k for k in keys.values()}
    assert sorted(by_id) == ["app", "mon", "root"]
    assert by_id["app"].requests_per_minute == 2 and by_id["app"].mc_passes_per_minute is None
    assert by_id["root"].allows("metrics") and by_id["root"].allows("infer")
    assert not by_id["mon"].allows("infer") and not by_id["app"].allows("metrics")


def test_token_bucket_bursts_then_refills() -> None:
    bucket = TokenBucket(60)  # one a second, 60 saved up
    assert all(bucket.take(1) is None for _ in range(60))
    wait = bucket.take(1)
    assert wait is not None and 0.9 < wait <= 1.0
    bucket.stamp -= 2.0  # two seconds later: two more
    assert bucket.take(2) is None and bucket.take(1) is not None


def _auth(tmp_path: Path, text: str = GOOD) -> Authenticator:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return Authenticator(path)


def test_authorize_decisions(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    for header, status, reason in [
        (None, 401, "missing"),
        ("", 401, "missing"),
        ("Basic dXNlcjpwYXNz", 401, "invalid"),
        ("Bearer", 401, "invalid"),
        ("Bearer t-nope", 401, "invalid"),
        ("Bearer t-mon", 403, "scope"),
    ]:
        with pytest.raises(AuthError) as info:
            auth.authorize(header, "infer")
        assert (info.value.status, info.value.reason) == (status, reason), header
    assert auth.authorize("Bearer t-app", "infer").id == "app"
    assert auth.authorize("bearer  t-root ", "metrics").id == "root"  # scheme case-insensitive, spaces trimmed


def test_one_keys_limit_never_affects_another(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    auth.authorize("Bearer t-app", "infer")
    auth.authorize("Bearer t-app", "infer")
    with pytest.raises(AuthError) as info:
        auth.authorize("Bearer t-app", "infer")
    assert info.value.status == 429 and info.value.headers()["Retry-After"] == "30"
    assert auth.authorize("Bearer t-root", "infer").id == "root"  # unaffected


def test_mc_passes_budget(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    root = auth.authorize("Bearer t-root", "infer")
    auth.charge_mc(root, 100)
    with pytest.raises(AuthError) as info:
        auth.charge_mc(root, 100)  # 50 left
    assert info.value.status == 429 and info.value.reason == "mc_passes"
    with pytest.raises(AuthError, match="exceed"):
        auth.charge_mc(root, 151)  # more than the burst: never possible, said so
    auth.charge_mc(auth.authorize("Bearer t-app", "infer"), 10**9)  # no MC limit on that key


def test_reload_keeps_old_keys_on_a_bad_file_and_keeps_buckets(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    auth.authorize("Bearer t-app", "infer")
    auth.authorize("Bearer t-app", "infer")
    assert auth.path is not None
    auth.path.write_text("[[keys]\n")
    assert auth.reload() is False
    assert auth.key_ids == ["app", "mon", "root"]
    auth.path.write_text(_table("app", "t-app", extra="requests_per_minute = 2") + _table("new", "t-new"))
    assert auth.reload() is True
    assert auth.authorize("Bearer t-new", "infer").id == "new"
    with pytest.raises(AuthError):
        auth.authorize("Bearer t-root", "infer")  # removed
    with pytest.raises(AuthError) as info:
        auth.authorize("Bearer t-app", "infer")  # same limits: its bucket (empty) survived the reload
    assert info.value.status == 429


def test_scope_of_path() -> None:
    assert scope_of_path("/livez") is None and scope_of_path("/v2/health/ready") is None
    assert scope_of_path("/metrics") == "metrics"
    assert scope_of_path("/predict") == scope_of_path("/v2/models/m/infer") == scope_of_path("/info") == "infer"
