"""The service serves from a read-only root filesystem as an unprivileged user (what compose's ``read_only`` asks).

In a private mount namespace (``unshare -m``) the whole root filesystem is bind-mounted
read-only, ``/tmp`` included, and the service runs there (``chroot``) as ``nobody``: it
must load, answer both endpoints and exit 0 on SIGTERM without writing anything. The
namespace is private, so the machine's own mounts are untouched. Needs root (CI is root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hardening_support import REPO, free_port

CLIENT = """
import json, sys, time, urllib.request as u
base = sys.argv[1]
for _ in range(600):
    try:
        u.urlopen(base + "/readyz", timeout=2); break
    except OSError:
        time.sleep(0.2)
for path, body in (("/predict", {"images": [[0] * 784]}),
                   ("/predict/uncertainty", {"images": [[0] * 784], "n_samples": 20, "seed": 1})):
    req = u.Request(base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    print(path, u.urlopen(req, timeout=60).status)
"""

INNER = """
set -u
cd {repo}
touch /tmp/probe 2>/dev/null && echo "WRITABLE /tmp" ; touch {repo}/probe 2>/dev/null && echo "WRITABLE repo"
MCSERVE_MODEL_DIR={ro}/model MCSERVE_DEVICE=cpu MCSERVE_HOST=127.0.0.1 MCSERVE_PORT={port} MCSERVE_LOG_LEVEL=warning \\
  setpriv --reuid=65534 --regid=65534 --clear-groups {python} -m service &
pid=$!
{python} {ro}/client.py http://127.0.0.1:{port}
kill -TERM $pid
wait $pid
echo "service exit $?"
"""

# The model and scripts go on a tmpfs mounted over a fresh directory in /var/tmp (then remounted read-only),
# not over /tmp: the checkout itself may live under /tmp (CI clones there) and must stay visible.
OUTER = """
set -eu
root={work}/root
mount --rbind / "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o size=64m,mode=755 tmpfs "$root{ro}"
cp -r {model} "$root{ro}/model" && chmod -R a+rX "$root{ro}/model"
cp {work}/client.py {work}/inner.sh "$root{ro}/"
mount -o remount,ro "$root{ro}"
chroot "$root" sh {ro}/inner.sh
"""


def test_serves_from_a_read_only_root_filesystem_as_nobody(trained_artifact: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace (CI runs as root)")
    assert shutil.which("unshare") and shutil.which("setpriv") and shutil.which("chroot")
    port = free_port()
    (tmp_path / "client.py").write_text(CLIENT)
    # A mount point that `nobody` can reach (pytest's tmp_path is under a 0700 directory).
    ro = Path(tempfile.mkdtemp(prefix="mcserve-ro-", dir="/var/tmp"))
    ro.chmod(0o755)
    (tmp_path / "inner.sh").write_text(INNER.format(repo=REPO, port=port, python=sys.executable, ro=ro))
    (tmp_path / "root").mkdir()
    outer = OUTER.format(model=trained_artifact, work=tmp_path, ro=ro)
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", outer],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        shutil.rmtree(ro, ignore_errors=True)  # the tmpfs lived only in the private namespace
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "WRITABLE" not in out, out  # the filesystem really was read-only
    assert "/predict 200" in out and "/predict/uncertainty 200" in out, out
    assert "service exit 0" in out, out
