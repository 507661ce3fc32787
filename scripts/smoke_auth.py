"""Compose smoke test, exposed profile (deploy/compose.exposed.yml: API keys on): who gets in, and Prometheus
scraping the api with its bearer token.

    python3 scripts/smoke_auth.py --url http://127.0.0.1:18200 \\
        --infer-token-file KEYS/client.token --metrics-token-file KEYS/prometheus.token \\
        [--limited-token-file KEYS/limited.token --limited-rpm 3] \\
        [--prometheus http://127.0.0.1:18290 --job mcserve-api --wait-s 60]

Checks, each one line of output:
  open without a key: GET /livez, /readyz, /v2/health/live, /v2/health/ready -> 200
  no key, a wrong token, or not 'Bearer': POST /predict, POST /predict/uncertainty, GET /info, GET /v2, GET /metrics
      -> 401 unauthorized with WWW-Authenticate: Bearer (v2 paths: the protocol's {"error": message} shape)
  infer key: POST /predict, POST /predict/uncertainty, GET /info, GET /v2 -> 200; GET /metrics -> 403 forbidden
  metrics key: GET /metrics -> 200 (Prometheus text); POST /predict -> 403 forbidden
  limited key (requests_per_minute = N): N requests pass, the next one -> 429 rate_limited with Retry-After >= 1
  Prometheus: the api target is up with no scrape error (it can only be: /metrics refuses a request without a key)

Standard library only (runs with any python3). Exit 1 with a message on the first failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

IMAGE = [0] * 784  # any valid image does: this is about who may ask, not about the answers


class SmokeError(AssertionError):
    pass


def request(
    url: str, token: str | None = None, body: dict[str, Any] | None = None, scheme: str = "Bearer"
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def error_body(payload: bytes) -> Any:
    try:
        return json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        return None


def error_code(payload: bytes) -> str | None:
    """The ``code`` of the REST error shape ``{"error": {"code", "message", "field"}}``."""
    body = error_body(payload)
    return str(body["code"]) if isinstance(body, dict) and "code" in body else None


class Checker:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.count = 0

    def expect(
        self,
        method_path: str,
        status: int,
        token: str | None = None,
        *,
        code: str | None = None,
        scheme: str = "Bearer",
        who: str = "",
    ) -> dict[str, str]:
        method, path = method_path.split(" ", 1)
        body: dict[str, Any] | None = None
        if method == "POST":
            body = {"images": [IMAGE]}
            if path.endswith("/uncertainty"):
                body |= {"n_samples": 4, "seed": 1}
        got, headers, payload = request(self.base + path, token, body, scheme)
        what = f"{method_path} ({who or ('no key' if token is None else 'key')})"
        if got != status:
            raise SmokeError(f"{what}: HTTP {got}, expected {status}: {payload[:300]!r}")
        if code is not None and path.startswith("/v2"):  # the Open Inference Protocol's shape: {"error": "<message>"}
            if not isinstance(error_body(payload), str):
                raise SmokeError(f"{what}: HTTP {got} without the v2 error shape {{'error': msg}}: {payload[:99]!r}")
        elif code is not None and error_code(payload) != code:
            raise SmokeError(f"{what}: HTTP {got} but error code {error_code(payload)!r}, expected {code!r}")
        if status == 401 and not headers.get("www-authenticate", "").lower().startswith("bearer"):
            challenge = headers.get("www-authenticate")
            raise SmokeError(f"{what}: 401 without 'WWW-Authenticate: Bearer' (got {challenge!r})")
        self.count += 1
        return headers


def check_access(c: Checker, infer: str, metrics: str) -> None:
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready"):
        c.expect(f"GET {path}", 200)
    print("open without a key: /livez, /readyz, /v2/health/live, /v2/health/ready -> 200")
    protected = ["POST /predict", "POST /predict/uncertainty", "GET /info", "GET /v2", "GET /metrics"]
    for what in protected:
        c.expect(what, 401, code="unauthorized")
        c.expect(what, 401, "mcs_not-a-key-" + "x" * 40, code="unauthorized", who="wrong token")
    c.expect("POST /predict", 401, infer, code="unauthorized", scheme="Basic", who="Basic scheme")
    print(f"no key / wrong token / not Bearer: {', '.join(protected)} -> 401 unauthorized, WWW-Authenticate: Bearer")
    for what in protected[:-1]:
        c.expect(what, 200, infer, who="infer key")
    c.expect("GET /metrics", 403, infer, code="forbidden", who="infer key")
    print(f"infer key: {', '.join(protected[:-1])} -> 200; GET /metrics -> 403 forbidden")
    c.expect("POST /predict", 403, metrics, code="forbidden", who="metrics key")
    status, _, text = request(c.base + "/metrics", metrics)
    if status != 200 or b"mcserve_" not in text:
        raise SmokeError(f"GET /metrics (metrics key): HTTP {status}, {len(text)} bytes without mcserve_ metrics")
    c.count += 1
    print("metrics key: GET /metrics -> 200 (Prometheus text); POST /predict -> 403 forbidden")


def check_rate_limit(c: Checker, token: str, rpm: int) -> None:
    for _ in range(rpm):
        c.expect("GET /info", 200, token, who=f"limited key, {rpm}/min")
    headers = c.expect("GET /info", 429, token, code="rate_limited", who=f"limited key, request {rpm + 1}")
    retry_after = headers.get("retry-after", "")
    if not retry_after.isdigit() or int(retry_after) < 1:
        raise SmokeError(f"429 without a Retry-After of at least 1 s (got {retry_after!r})")
    print(f"limited key ({rpm} requests/min): {rpm} x 200, then 429 rate_limited, Retry-After: {retry_after}")


def check_prometheus_target(base: str, job: str, wait_s: float) -> None:
    """The api target is up and its last scrape had no error: Prometheus presented the metrics-scope token."""
    deadline = time.monotonic() + wait_s
    state = "no active target"
    while True:
        url = f"{base.rstrip('/')}/api/v1/targets?" + urllib.parse.urlencode({"state": "active"})
        try:
            with urllib.request.urlopen(url, timeout=15) as resp:
                targets = json.loads(resp.read())["data"]["activeTargets"]
        except (OSError, ValueError, KeyError) as exc:
            targets, state = [], f"targets API: {exc}"
        mine = [t for t in targets if t.get("labels", {}).get("job") == job]
        if mine:
            t = mine[0]
            state = f"health {t.get('health')!r}, last error {t.get('lastError')!r}, last scrape {t.get('lastScrape')}"
            if t.get("health") == "up" and not t.get("lastError"):
                print(f"prometheus: target {job} {t.get('scrapeUrl')} up, scraped with the bearer token ({state})")
                return
        if time.monotonic() > deadline:
            raise SmokeError(f"prometheus: target {job} not up after {wait_s:g} s: {state}")
        time.sleep(1)


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise SmokeError(f"{path}: empty token file")
    return token


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--infer-token-file", type=Path, required=True)
    ap.add_argument("--metrics-token-file", type=Path, required=True)
    ap.add_argument("--limited-token-file", type=Path)
    ap.add_argument("--limited-rpm", type=int, default=3)
    ap.add_argument("--prometheus", help="Prometheus base URL: check that it scrapes the api (job --job)")
    ap.add_argument("--job", default="mcserve-api")
    ap.add_argument("--wait-s", type=float, default=60.0)
    args = ap.parse_args(argv)
    c = Checker(args.url)
    try:
        check_access(c, read_token(args.infer_token_file), read_token(args.metrics_token_file))
        if args.limited_token_file is not None:
            check_rate_limit(c, read_token(args.limited_token_file), args.limited_rpm)
        if args.prometheus:
            check_prometheus_target(args.prometheus, args.job, args.wait_s)
    except (SmokeError, OSError) as exc:
        print(f"smoke_auth: FAIL: {exc}", file=sys.stderr)
        return 1
    print(f"smoke_auth: OK ({c.count} requests answered as expected)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
