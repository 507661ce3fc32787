"""mcserve-keys (service/keys.py): what `new` prints is a key the service accepts for that token; `check`, `digest`."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service import keys as cli
from service.auth import Authenticator, AuthError, load_keys

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def split_new(out: str) -> tuple[str, str]:
    """(token, table) from `new`'s stdout: the label, the token alone on line 2, then the table."""
    lines = out.splitlines()
    assert lines[0].startswith("token for key ")
    return lines[1], out[out.index("[[keys]]") :]


def test_new_prints_a_token_once_and_a_table_whose_digest_matches(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "new", "--id", "app", "--scopes", "infer")
    assert (code, err) == (0, "")
    token, table = split_new(out)
    assert token.startswith("mcs_") and len(token) >= 4 + 43  # token_urlsafe(32): 43 characters, 256 bits
    assert out.count(token) == 1  # shown once, never inside the table
    (entry,) = tomllib.loads(table)["keys"]
    assert entry == {"id": "app", "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": ["infer"]}
    # the service takes the pasted table and recognises the token
    (key,) = cli.parse_keys(table, "pasted").values()
    assert key.id == "app" and key.scopes == frozenset({"infer"})
    # the whole output (label and comment lines included) is not a valid keys file: the token must not be pasted
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(out)


def test_new_keys_differ_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    tokens = set()
    for _ in range(3):
        code, out, _ = run(capsys, "new", "--id", "app", "--scopes", "infer")
        assert code == 0
        tokens.add(split_new(out)[0])
    assert len(tokens) == 3


def test_new_with_scopes_and_limits_gives_a_key_the_authenticator_accepts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out_a, _ = run(
        capsys, "new", "--id", "ops", "--scopes", "infer, metrics,infer",
        "--requests-per-minute", "600", "--mc-passes-per-minute", "2.5e5",
    )  # fmt: skip
    assert code == 0
    code, out_b, _ = run(capsys, "new", "--id", "prometheus", "--scopes", "metrics", "--requests-per-minute", "1.5")
    assert code == 0
    (token_a, table_a), (token_b, table_b) = split_new(out_a), split_new(out_b)
    assert "requests_per_minute = 600\n" in table_a and "mc_passes_per_minute = 250000\n" in table_a
    assert "requests_per_minute = 1.5\n" in table_b
    path = tmp_path / "keys.toml"
    path.write_text(table_a + "\n" + table_b)
    auth = Authenticator(path)
    ops = auth.authorize(f"Bearer {token_a}", "metrics")
    assert (ops.id, ops.scopes, ops.requests_per_minute, ops.mc_passes_per_minute) == (
        "ops", frozenset({"infer", "metrics"}), 600.0, 250000.0,
    )  # fmt: skip
    assert auth.authorize(f"Bearer {token_b}", "metrics").id == "prometheus"
    with pytest.raises(AuthError) as exc:
        auth.authorize(f"Bearer {token_b}", "infer")
    assert exc.value.code == "forbidden"


def test_new_escapes_an_id_that_needs_quoting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "new", "--id", 'team "a" \\ b', "--scopes", "admin")
    assert code == 0
    (key,) = cli.parse_keys(split_new(out)[1], "pasted").values()
    assert key.id == 'team "a" \\ b'


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scopes", "infer,root"], "unknown scope 'root' (allowed: infer, metrics, admin)"),
        (["--scopes", "infer,,metrics"], "empty scope"),
        (["--scopes", ""], "empty scope"),
        (["--id", "", "--scopes", "infer"], "--id ''"),
        (["--id", "x" * 65, "--scopes", "infer"], "at most 64 characters"),
        (["--id", "tab\there", "--scopes", "infer"], "printable"),
        (["--scopes", "infer", "--requests-per-minute", "0"], "--requests-per-minute: must be a positive number"),
        (["--scopes", "infer", "--mc-passes-per-minute", "-5"], "--mc-passes-per-minute: must be a positive number"),
        (["--scopes", "infer", "--requests-per-minute", "inf"], "must be a positive number"),
        (["--scopes", "infer", "--requests-per-minute", "0.5"], "must be at least 1 (the burst equals"),
        (["--scopes", "infer", "--requests-per-minute", "lots"], "'lots' is not a number"),
        (["--id", "app"], "the following arguments are required: --scopes"),
    ],
)
def test_new_refuses_bad_input_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    if "--id" not in argv:
        argv = ["--id", "app", *argv]
    code, out, err = run(capsys, "new", *argv)
    assert code == 2 and out == ""
    assert err.startswith("mcserve-keys: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert message in err


def test_check_accepts_a_good_file_with_a_one_line_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tables = []
    for key_id, scopes in (("app", "infer"), ("prometheus", "metrics")):
        _, out, _ = run(capsys, "new", "--id", key_id, "--scopes", scopes, "--requests-per-minute", "60")
        tables.append(split_new(out)[1])
    path = tmp_path / "keys.toml"
    path.write_text("\n".join(tables))
    code, out, err = run(capsys, "check", str(path))
    assert (code, err) == (0, "")
    assert out == f"{path}: ok, 2 keys: app (infer, 60 requests/min), prometheus (metrics, 60 requests/min)\n"
    assert len(load_keys(path)) == 2


def test_check_an_empty_file_says_everything_will_be_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("# no keys yet\n")
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0 and "0 keys" in out and "refused" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[keys]\n", "not valid TOML"),
        ('[[keys]]\nid = "a"\nsha256 = "' + "0" * 64 + '"\nscopes = ["root"]\n', "unknown scope 'root'"),
        ('[[keys]]\nid = "a"\nsha256 = "abc"\nscopes = ["infer"]\n', "sha256 must be the 64 hex digits"),
        (
            '[[keys]]\nid = "a"\nsha256 = "' + "0" * 64 + '"\nscopes = ["infer"]\n'
            '[[keys]]\nid = "a"\nsha256 = "' + "1" * 64 + '"\nscopes = ["infer"]\n',
            "duplicate id",
        ),
    ],
    ids=["syntax", "scope", "digest", "duplicate"],
)
def test_check_refuses_a_bad_file_with_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    code, out, err = run(capsys, "check", str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"mcserve-keys: error: {path}: ") and err.count("\n") == 1, err
    assert message in err


def test_check_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", str(tmp_path / "nope.toml"))
    assert code == 2 and "cannot be read" in err and err.count("\n") == 1


def test_digest_reads_the_token_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, out, _ = run(capsys, "new", "--id", "app", "--scopes", "infer")
    token, table = split_new(out)
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
    code, out, err = run(capsys, "digest")
    assert (code, err) == (0, "")
    assert out == hashlib.sha256(token.encode()).hexdigest() + "\n"
    assert f'sha256 = "{out.strip()}"' in table


@pytest.mark.parametrize("stdin", ["", "  \n", "two tokens\n"])
def test_digest_refuses_no_token_or_several(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, out, err = run(capsys, "digest")
    assert code == 2 and out == "" and err.startswith("mcserve-keys: error: digest: ")


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2 and err.count("\n") == 1


def test_runs_as_python_dash_m_and_is_a_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service.keys", "new", "--id", "app", "--scopes", "nope"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("mcserve-keys: error: --scopes: unknown scope 'nope'")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mcserve-keys"] == "service.keys:main"
