"""The scale smoke test's driver (``make scale-smoke`` runs it through scripts/scale_smoke.sh).

    python scripts/scale_run.py --old-model DIR --new-model DIR [--python .venv/bin/python]

Three replicas (``python -m service``, no containers) behind HAProxy (deploy/haproxy/haproxy.smoke.cfg), Prometheus
scraping each (deploy/prometheus/scale/prometheus.yml, 1 s) with the real rules (McserveApiDown's ``for:``
shortened by scripts/scale_rules.py), Alertmanager (deploy/alertmanager/alertmanager.smoke.yml) delivering to
scripts/scale_webhook.py, and wrk's steady load through HAProxy from the first phase to the last:

1. functional requests (scripts/smoke_requests.py) and X-Request-ID through HAProxy: echoed, generated, in
   the JSON logs of the replica that served it;
2. steady load: every replica serves 20-45 % of the requests; the dashboard's queries (``$instance`` all, and one
   instance) parse and aggregate: the total request rate equals the sum of the per-instance rates;
3. ``kill -9`` of one replica: at most 0.1 % of client requests fail; McserveApiDown for that instance reaches
   the webhook, and its resolved notification after the replica is back;
4. rolling update to another artifact, one replica at a time, each drained through HAProxy's runtime API
   first: no failed request; mcserve_model_info shows both versions during the roll and only the new one after.

Prints one figure line. Standard library only; every process it starts is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_prometheus as cp  # noqa: E402
from scale_stack import (  # noqa: E402
    ALERT,
    ALERTMANAGER,
    FRONT,
    HOST,
    PROM,
    REPLICAS,
    WEBHOOK,
    WRK_LUA,
    HAProxy,
    SmokeError,
    Stack,
    alert_received,
    delta,
    http,
    log,
    model_versions,
    parse_wrk,
    predict_count,
    prom,
    ready,
    snapshot,
    wait_for,
)
from smoke_requests import load_test_images  # noqa: E402

KILLED = "r2"
ALERT_FOR = "2s"
RATE_INTERVAL = "5s"
MAX_KILL_FAILURE_RATIO = 0.001
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


class Smoke:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.stack = Stack(work, args.python, {"old": args.old_model, "new": args.new_model})
        self.hap = HAProxy(work / "haproxy.sock")
        self.alerts = work / "alerts.jsonl"
        self.front = f"http://{HOST}:{FRONT}"
        self.figures: dict[str, Any] = {}
        self.timings: list[tuple[str, float]] = []

    def step(self, name: str, fn: Callable[[], None]) -> None:
        log(f"==> {name}")
        start = time.monotonic()
        try:
            fn()
        finally:
            self.timings.append((name, time.monotonic() - start))

    # -- setup -----------------------------------------------------------------------------------------------------
    def ports_free(self) -> None:
        for port in (*REPLICAS.values(), FRONT, PROM, ALERTMANAGER, WEBHOOK):
            with socket.socket() as s:
                if s.connect_ex((HOST, port)) == 0:
                    raise SmokeError(f"port {HOST}:{port} is already in use")

    def configs(self) -> None:
        shutil.copy(ROOT / "deploy/prometheus/scale/prometheus.yml", self.work / "prometheus.yml")
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/scale_rules.py"), "--alert", ALERT, "--for", ALERT_FOR,
             "--out", str(self.work / "rules.yml")],
            check=True,
        )  # fmt: skip
        subprocess.run(["promtool", "check", "config", str(self.work / "prometheus.yml")], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        am = self.work / "alertmanager.yml"
        shutil.copy(ROOT / "deploy/alertmanager/alertmanager.smoke.yml", am)
        amtool = subprocess.run(["amtool", "check-config", str(am)], capture_output=True, text=True)
        if amtool.returncode != 0:
            raise SmokeError(f"amtool check-config: {amtool.stdout}{amtool.stderr}")
        self.hap_env = {**os.environ, "SCALE_SOCK": str(self.hap.sock), "SCALE_FRONT": f"{HOST}:{FRONT}"}
        self.hap_env.update({f"SCALE_{name.upper()}": f"{HOST}:{port}" for name, port in REPLICAS.items()})
        subprocess.run(["haproxy", "-c", "-q", "-f", str(ROOT / "deploy/haproxy/haproxy.smoke.cfg")],
                       env=self.hap_env, check=True)  # fmt: skip
        image, _ = load_test_images(1)
        (self.work / "body.json").write_text(json.dumps({"images": image}))
        (self.work / "load.lua").write_text(
            WRK_LUA.format(body=self.work / "body.json", delay_ms=self.args.wrk_delay_ms)
        )
        print("configs: prometheus.yml + rules.yml (promtool), alertmanager.yml (amtool), haproxy.cfg (haproxy -c)")

    def start_all(self) -> None:
        for name in REPLICAS:
            self.stack.replica(name, "old")
        self.stack.start("webhook", [sys.executable, str(ROOT / "scripts/scale_webhook.py"), "--port", str(WEBHOOK),
                                     "--out", str(self.alerts)])  # fmt: skip
        self.stack.start("alertmanager", [
            "prometheus-alertmanager", f"--config.file={self.work / 'alertmanager.yml'}",
            f"--storage.path={self.work / 'am-data'}", f"--web.listen-address={HOST}:{ALERTMANAGER}",
            "--cluster.listen-address=", "--log.level=warn",
        ])  # fmt: skip
        self.stack.start("prometheus", [
            "prometheus", f"--config.file={self.work / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.work / 'prom-data'}", f"--web.listen-address={HOST}:{PROM}",
            "--rules.alert.resend-delay=1s", "--log.level=warn",
        ])  # fmt: skip
        self.stack.start("haproxy", ["haproxy", "-db", "-f", str(ROOT / "deploy/haproxy/haproxy.smoke.cfg")],
                         self.hap_env)  # fmt: skip
        started = time.monotonic()
        for name, port in REPLICAS.items():
            wait_for(f"replica {name} /readyz", lambda port=port, name=name: self._ready_or_die(name, port), 180)
        print(f"3 replicas ready ({time.monotonic() - started:.1f} s)")
        wait_for("haproxy: 3 servers UP", lambda: all(self.hap.status(n) == "UP" for n in REPLICAS), 30)
        wait_for(
            "prometheus: 3 targets up", lambda: len(self._try(lambda: prom('up{job="mcserve-api"} == 1'))) == 3, 60
        )
        wait_for("alertmanager ready", lambda: (http(f"http://{HOST}:{ALERTMANAGER}/-/ready") or (0,))[0] == 200, 30)
        print("haproxy: r1 r2 r3 UP; prometheus: 3 targets up; alertmanager ready; webhook listening")

    def _sessions(self, name: str) -> int:
        return int(self.hap.stats()[f"mcserve/{name}"]["scur"] or 0)

    def _ready_or_die(self, name: str, port: int) -> bool:
        if not self.stack.alive(name):
            raise SmokeError(f"replica {name} exited:\n{self.stack.tail(name)}")
        return ready(port)

    @staticmethod
    def _try(fn: Callable[[], list[Any]]) -> list[Any]:
        try:
            return fn()
        except (OSError, ValueError):
            return []

    # -- 1. functional + request ids -------------------------------------------------------------------------------
    def functional(self) -> None:
        subprocess.run([sys.executable, str(ROOT / "scripts/smoke_requests.py"), "--url", self.front,
                        "--images", "16", "--traffic-s", "4"], check=True)  # fmt: skip

    def request_ids(self) -> None:
        body = (self.work / "body.json").read_bytes()
        given = f"scale-smoke-{uuid.uuid4().hex[:12]}"
        seen: dict[str, str] = {}
        for path, data in (("/info", None), ("/predict", body), ("/nope", None)):
            rid = f"{given}{path.replace('/', '-')}"
            got = http(self.front + path, data, {"X-Request-ID": rid})
            if got is None or got[1].get("x-request-id") != rid:
                raise SmokeError(f"{path} through haproxy: X-Request-ID {rid} not echoed ({got and got[1]})")
            seen[rid] = path
        for bad in ("x" * 129, "bad\tid"):
            got = http(self.front + "/predict", body, {"X-Request-ID": bad})
            if got is None or not HEX_ID.match(got[1].get("x-request-id", "")):
                raise SmokeError(f"invalid X-Request-ID {bad!r}: not replaced by a generated id ({got and got[1]})")
        for _ in range(3):  # round robin: each goes to another replica
            got = http(self.front + "/predict", body)
            rid = got[1].get("x-request-id", "") if got else ""
            if not HEX_ID.match(rid):
                raise SmokeError(f"no generated X-Request-ID on POST /predict: {got and got[1]}")
            seen[rid] = "/predict (generated)"
        time.sleep(0.5)
        where: dict[str, list[str]] = {rid: [] for rid in seen}
        json_lines = 0
        for name in REPLICAS:
            for line in self.stack.logs[name].read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    raise SmokeError(
                        f"replica {name}: a log line is not JSON (MCSERVE_LOG_FORMAT=json): {line!r}"
                    ) from None
                json_lines += 1
                if record.get("request_id") in where:
                    where[record["request_id"]].append(name)
        missing = [rid for rid, names in where.items() if len(set(names)) != 1]
        if missing:
            raise SmokeError(f"request ids not in exactly one replica's log: { {r: where[r] for r in missing} }")
        served = sorted({names[0] for names in where.values()})
        print(
            f"X-Request-ID: {len(seen)} ids (3 given, 3 generated) echoed through haproxy, each in the JSON log of the "
            f"replica that served it ({', '.join(served)}); invalid ids replaced; {json_lines} log lines, all JSON"
        )

    # -- 2. steady load -------------------------------------------------------------------------------------------
    def start_load(self) -> None:
        url = f"{self.front}/predict"
        self.stack.start("wrk", ["wrk", "-t2", f"-c{self.args.wrk_connections}", "-d600s", "--timeout", "10s",
                                 "-s", str(self.work / "load.lua"), url])  # fmt: skip
        self.load_start = time.monotonic()
        self.hap_start = snapshot(self.hap)
        time.sleep(1.0)
        if not self.stack.alive("wrk"):
            raise SmokeError(f"wrk exited:\n{self.stack.tail('wrk')}")

    def steady(self) -> None:
        before = {n: predict_count(p) for n, p in REPLICAS.items()}
        hap0 = snapshot(self.hap)
        time.sleep(self.args.steady_s)
        after = {n: predict_count(p) for n, p in REPLICAS.items()}
        d = delta(snapshot(self.hap), hap0)
        served = {n: after[n] - before[n] for n in REPLICAS}
        total = sum(served.values())
        shares = {n: served[n] / total for n in REPLICAS} if total else {}
        self.figures["steady_rate"] = total / self.args.steady_s
        self.figures["spread"] = "/".join(f"{100 * shares.get(n, 0):.0f}" for n in REPLICAS)
        print(f"steady {self.args.steady_s:.0f} s: {total:.0f} /predict at {total / self.args.steady_s:.0f}/s, "
              f"shares {self.figures['spread']} %, haproxy 5xx {d['hrsp_5xx']}")  # fmt: skip
        bad = {n: s for n, s in shares.items() if not 0.20 <= s <= 0.45}
        if not shares or bad:
            raise SmokeError(f"load does not spread: shares {shares} (each must be 20-45 %)")
        if d["hrsp_5xx"]:
            raise SmokeError(f"steady load: {d['hrsp_5xx']} 5xx answers")

    def dashboard(self) -> None:
        path = ROOT / "deploy/grafana/dashboards/mcserve.json"
        doc = json.loads(path.read_text())
        variables = {v["name"]: v for v in doc.get("templating", {}).get("list", [])}
        if "instance" not in variables:
            raise SmokeError("the dashboard has no `instance` variable")
        # every query, $instance -> All and $__rate_interval -> 1m (check_prometheus.MACROS): the functional requests'
        # MC and conformal traffic of a few seconds ago is inside that window
        n, failures = cp.check_queries(f"http://{HOST}:{PROM}", path)
        if failures:
            raise SmokeError("dashboard queries with all instances:\n  " + "\n  ".join(failures))
        exprs = dict((title, expr) for title, expr in cp.dashboard_exprs(doc))
        by_route, per_instance = exprs["Request rate by route"], exprs["Requests per instance"]
        at = time.time() - 1

        def expand(expr: str, instance: str = ".*") -> str:
            # the rates over the last few seconds of steady load: Grafana's $__rate_interval for 1 s scrapes
            expr = expr.replace("$__rate_interval", RATE_INTERVAL).replace('"$instance"', json.dumps(instance))
            return cp.expand(expr)

        def total(expr: str, instance: str = ".*") -> float:
            return sum(float(r["value"][1]) for r in prom(expand(expr, instance), at))

        rows = prom(expand(per_instance), at)
        instances = {r["metric"]["instance"]: float(r["value"][1]) for r in rows}
        if sorted(instances) != sorted(f"{HOST}:{p}" for p in REPLICAS.values()):
            raise SmokeError(f"'Requests per instance' has series {sorted(instances)}, expected the 3 replicas")
        whole = total(by_route)
        if abs(whole - sum(instances.values())) > 1e-6 * max(whole, 1.0):
            raise SmokeError(f"total request rate {whole} != sum of per-instance rates {instances}")
        measured = self.figures["steady_rate"]
        if not 0.7 * measured <= whole <= 1.3 * measured:
            raise SmokeError(f"dashboard request rate {whole:.1f}/s, the replicas' counters {measured:.1f}/s")
        one = f"{HOST}:{REPLICAS['r1']}"
        only = total(by_route, re.escape(one))
        if abs(only - instances[one]) > 1e-6 * max(only, 1.0) or only >= whole:
            raise SmokeError(f"$instance={one}: request rate {only}, per-instance panel {instances[one]}, all {whole}")
        single_errors = []
        for title, expr in cp.dashboard_exprs(doc):
            try:
                prom(cp.expand(expr.replace('"$instance"', json.dumps(re.escape(one)))), at)
            except ValueError as exc:
                single_errors.append(f"[{title}] {exc}")
        if single_errors:
            raise SmokeError("dashboard queries with one instance:\n  " + "\n  ".join(single_errors))
        parts = " + ".join(f"{v:.1f}" for v in instances.values())
        print(
            f"dashboard: all {n} queries return data for $instance=All and parse for one instance; request rate "
            f"[{RATE_INTERVAL}] {whole:.1f}/s (counters: {measured:.1f}/s) = sum of per-instance {parts}; "
            f"$instance={one}: {only:.1f}/s"
        )

    # -- 3. kill -9 ---------------------------------------------------------------------------------------------
    def kill(self) -> None:
        instance = f"{HOST}:{REPLICAS[KILLED]}"
        before = snapshot(self.hap)
        proc = self.stack.procs[KILLED]
        t_kill = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        down = wait_for(
            f"haproxy marks {KILLED} DOWN", lambda: self.hap.status(KILLED).startswith("DOWN") and time.time(), 15
        )
        fired = wait_for(f"{ALERT} for {instance} at the webhook",
                         lambda: alert_received(self.alerts, instance, "firing", t_kill), 60)  # fmt: skip
        self.stack.replica(KILLED, "old")
        wait_for(f"{KILLED} back (/readyz)", lambda: self._ready_or_die(KILLED, REPLICAS[KILLED]), 180)
        t_back = time.time()
        wait_for(f"haproxy marks {KILLED} UP", lambda: self.hap.status(KILLED) == "UP", 30)
        resolved = wait_for(f"{ALERT} for {instance} resolved at the webhook",
                            lambda: alert_received(self.alerts, instance, "resolved", t_back), 60)  # fmt: skip
        d = delta(snapshot(self.hap), before)
        self.kill_phase = d
        self.figures["alert_delay"] = fired - t_kill
        self.figures["resolve_delay"] = resolved - t_back
        print(
            f"kill -9 {KILLED}: haproxy DOWN after {down - t_kill:.1f} s; {ALERT}{{instance={instance!r}}} firing at "
            f"the webhook {fired - t_kill:.1f} s after the kill, resolved {resolved - t_back:.1f} s after /readyz; "
            f"{d['req_tot']} requests meanwhile, {d['hrsp_5xx']} failed (5xx), {d['wretr']} retried, "
            f"{d['wredis']} redispatched"
        )
        if d["req_tot"] == 0 or d["hrsp_5xx"] > MAX_KILL_FAILURE_RATIO * d["req_tot"]:
            raise SmokeError(f"kill -9: {d['hrsp_5xx']} of {d['req_tot']} requests failed (at most 0.1 %)")

    # -- 4. rolling update ------------------------------------------------------------------------------------
    def roll(self) -> None:
        old = model_versions()
        if len(old) != 1:
            raise SmokeError(f"before the roll: mcserve_model_info versions {old}, expected one")
        (old_version,) = old
        before = snapshot(self.hap)
        start = time.monotonic()
        drains = []
        for i, name in enumerate(REPLICAS, start=1):
            t0 = time.monotonic()
            self.hap.set_state(name, "drain")  # no new requests; those in flight finish
            wait_for(f"{name}: drained (no sessions)", lambda name=name: self._sessions(name) == 0, 15, 0.02)
            drains.append(time.monotonic() - t0)
            self.hap.set_state(name, "maint")  # out of rotation and health checks until `state ready`
            if self._sessions(name):
                raise SmokeError(f"{name}: sessions after drain and maint")
            proc = self.stack.procs[name]
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(20)
            if rc != 0:
                raise SmokeError(
                    f"{name}: exit {rc} after SIGTERM (a drained shutdown exits 0):\n{self.stack.tail(name)}"
                )
            self.stack.replica(name, "new")
            wait_for(
                f"{name} on the new artifact (/readyz)", lambda name=name: self._ready_or_die(name, REPLICAS[name]), 180
            )
            self.hap.set_state(name, "ready")
            wait_for(f"haproxy marks {name} UP", lambda name=name: self.hap.status(name) == "UP", 30)
            if i == 1:
                both = wait_for(
                    "mcserve_model_info: both versions", lambda: (v := model_versions()) and len(v) == 2 and v, 20
                )
                print(f"roll: after {name}: mcserve_model_info versions {both}")
        roll_s = time.monotonic() - start
        new = wait_for("mcserve_model_info: only the new version, on all 3",
                       lambda: (v := model_versions()) and len(v) == 1 and old_version not in v
                       and list(v.values()) == [3] and v, 20)  # fmt: skip
        (new_version,) = new
        served = set()
        for _ in range(6):  # and the replicas behind haproxy answer with it
            got = http(f"{self.front}/info")
            served.add(json.loads(got[2])["model"]["version"] if got and got[0] == 200 else None)
        if served != {new_version}:
            raise SmokeError(f"after the roll, GET /info through haproxy reports versions {served}")
        d = delta(snapshot(self.hap), before)
        self.figures["roll_s"] = roll_s
        self.roll_phase = d
        print(
            f"roll: r1 r2 r3 drained (max {max(drains):.2f} s), SIGTERM (exit 0), restarted on the new artifact, "
            f"ready, UP: {roll_s:.1f} s; versions after {new} (was {old_version}); {d['req_tot']} requests meanwhile, "
            f"{d['hrsp_5xx']} failed, {d['wretr']} retried"
        )
        if d["hrsp_5xx"] or d["hrsp_4xx"]:
            raise SmokeError(f"roll: {d['hrsp_5xx']} 5xx and {d['hrsp_4xx']} 4xx answers (expected none)")

    def stop_load(self) -> None:
        proc = self.stack.procs["wrk"]
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        wrk = parse_wrk(self.stack.logs["wrk"].read_text())
        seconds = time.monotonic() - self.load_start
        failed = wrk["non2xx"] + wrk["socket_errors"]
        kill_failed = self.kill_phase["hrsp_5xx"]
        self.figures.update(requests=wrk["requests"], failures=failed, load_s=seconds)
        print(f"wrk: {wrk['requests']} requests in {seconds:.0f} s ({wrk['requests'] / seconds:.0f}/s), "
              f"{wrk['non2xx']} non-2xx, {wrk['socket_errors']} socket errors")  # fmt: skip
        if failed > MAX_KILL_FAILURE_RATIO * wrk["requests"]:
            raise SmokeError(f"{failed} of {wrk['requests']} client requests failed (at most 0.1 %)")
        if failed > kill_failed:
            raise SmokeError(f"{failed} client requests failed, {kill_failed} of them during the kill: the rest "
                             "happened during steady load or the roll, where none may fail")  # fmt: skip

    def run(self) -> str:
        self.step("ports free", self.ports_free)
        self.step("configs", self.configs)
        self.step("start 3 replicas, haproxy, prometheus, alertmanager, webhook", self.start_all)
        self.step("functional requests through haproxy (scripts/smoke_requests.py)", self.functional)
        self.step("X-Request-ID through haproxy, JSON logs", self.request_ids)
        self.step("start wrk load", self.start_load)
        self.step("steady load spreads", self.steady)
        self.step("dashboard queries aggregate across instances", self.dashboard)
        self.step(f"kill -9 {KILLED}: retries, alert, resolve", self.kill)
        self.step("rolling update to the new artifact", self.roll)
        self.step("stop wrk: client-side failures", self.stop_load)
        f = self.figures
        return (
            f"scale smoke figures: requests {f['requests']}, failures {f['failures']} "
            f"({100 * f['failures'] / max(f['requests'], 1):.3f} %; kill -9: {self.kill_phase['hrsp_5xx']} of "
            f"{self.kill_phase['req_tot']}, roll: {self.roll_phase['hrsp_5xx']} of {self.roll_phase['req_tot']}), "
            f"alert delay {f['alert_delay']:.1f} s (resolved {f['resolve_delay']:.1f} s after restart), "
            f"roll time {f['roll_s']:.1f} s, spread {f['spread']} %"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-model", type=Path, required=True)
    ap.add_argument("--new-model", type=Path, required=True)
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python"))
    ap.add_argument("--steady-s", type=float, default=6.0)
    ap.add_argument("--wrk-connections", type=int, default=8)
    ap.add_argument("--wrk-delay-ms", type=int, default=10, help="pause after each response, per connection")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mcserve-scale."))
    smoke = Smoke(args, work)
    t0 = time.monotonic()
    rc = 1
    try:
        figures = smoke.run()
        rc = 0
    except Exception as exc:  # any failure: say where, show the processes' last lines; the stack stops below
        print(f"scale smoke: FAIL in step {smoke.timings[-1][0] if smoke.timings else '?'}: {exc}", file=sys.stderr)
        for name in smoke.stack.procs:
            tail = smoke.stack.tail(name, 8)
            if tail:
                print(f"--- {name} (last lines)\n{tail}", file=sys.stderr)
    finally:
        smoke.stack.close()
        print("\nscale smoke: step timings")
        for name, seconds in smoke.timings:
            print(f"  {seconds:7.1f} s  {name}")
        print(f"  {time.monotonic() - t0:7.1f} s  total")
        if args.keep or rc:
            print(f"logs: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if rc == 0:
        print(figures)
    return rc


if __name__ == "__main__":
    sys.exit(main())
