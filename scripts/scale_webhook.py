"""Alertmanager webhook receiver for the scale smoke test: every POSTed notification, one JSON line in a file.

    python3 scripts/scale_webhook.py --port 18940 --out /tmp/alerts.jsonl

Each line is ``{"received": <unix time>, "payload": <Alertmanager's webhook body>}``; the body's
``alerts`` carry ``status`` (firing/resolved) and ``labels`` (alertname, instance, ...). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def make_handler(out: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload: Any = json.loads(body)
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            with out.open("a") as fh:
                fh.write(json.dumps({"received": time.time(), "payload": payload}) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.touch()
    ThreadingHTTPServer((args.host, args.port), make_handler(args.out)).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
