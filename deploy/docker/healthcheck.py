#!/usr/bin/env python3
"""Container healthcheck: exit 0 only when the service answers 200 on /readyz."""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("MCSERVE_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"not ready: {exc}", file=sys.stderr)
    sys.exit(1)
