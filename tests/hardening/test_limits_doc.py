"""docs/hardening.md "Limits and errors" lists every limit with the default the code really has."""

from __future__ import annotations

import re

from hardening_support import REPO

from service.settings import Settings

LIMITS = [
    "max_body_bytes",
    "max_batch",
    "max_samples",
    "default_samples",
    "max_work",
    "max_png_bytes",
    "max_concurrency",
    "graceful_shutdown_s",
]


def test_every_limit_is_documented_with_its_default() -> None:
    doc = (REPO / "docs" / "hardening.md").read_text()
    for name in LIMITS:
        env = f"MCSERVE_{name.upper()}"
        row = re.search(rf"^\|[^|\n]*\| `{env}` \| `([^`]+)`[^|\n]*\| ([^|\n]+) \|$", doc, re.M)
        assert row, f"{env} is missing from the limits table"
        assert row.group(1) == str(Settings.model_fields[name].default), (env, row.group(1))
    for status in ("400", "413", "415", "422", "503"):
        assert re.search(rf"^\| {status} \| `\w+` \|", doc, re.M), status
