"""Build the C Monte Carlo kernel (``mckernel.c`` -> ``libmckernel.so``) and the fast path's JSON pixel parser
(``mcjson.c`` -> ``libmcjson.so``), both in ``service/native/``.

``python service/native/build.py`` (needs nothing of mcserve installed; the Docker build runs it that way in a
throwaway stage with a compiler) or ``python -m service.native.build``; ``make install`` runs it. The libraries are
git-ignored, loaded with ctypes (no Python headers needed) by ``service.mcnative`` and ``service.mcjson``. Each is up
to date when it is newer than its source: rebuilt otherwise, or always with ``--force``. ``CC`` picks the compiler
(default ``cc``).

Kernel flags: ``-mavx2 -mfma`` (the kernel checks the CPU before loading it), ``-ffp-contract=off`` (every product
and sum rounds as written, so the numbers do not depend on what the compiler fuses). The parser has no
floating-point sums and runs on any x86-64 CPU: no ``-mavx2``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "mckernel.c"
LIBRARY = HERE / "libmckernel.so"
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Wextra")
JSON_SOURCE = HERE / "mcjson.c"
JSON_LIBRARY = HERE / "libmcjson.so"
JSON_FLAGS = ("-O3", "-fPIC", "-shared", "-Wall", "-Wextra")


class BuildError(RuntimeError):
    """No compiler, or the compiler failed; the message says what to do."""


def build(source: Path = SOURCE, out: Path = LIBRARY, force: bool = False, flags: tuple[str, ...] = FLAGS) -> bool:
    """Compile ``source`` into ``out`` with ``flags`` unless it is up to date; True when it compiled."""
    if not force and out.is_file() and out.stat().st_mtime >= source.stat().st_mtime:
        return False
    cc = shlex.split(os.environ.get("CC", "cc"))
    tmp = out.with_name(out.name + ".tmp")
    command = [*cc, *flags, "-o", str(tmp), str(source), "-lm"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError(
            f"no C compiler ({cc[0]}): install one (Debian: apt-get install gcc libc6-dev) or set CC; "
            "without the library the service runs the numpy kernel (MCSERVE_MC_NATIVE=auto)"
        ) from exc
    if done.returncode:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{shlex.join(command)} failed:\n{done.stderr}")
    tmp.replace(out)  # atomic: a running service never sees half a library
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the library is up to date")
    parser.add_argument("--out", type=Path, default=None, help="build only the kernel, to this path")
    args = parser.parse_args(argv)
    targets: list[tuple[Path, Path, tuple[str, ...]]] = [(SOURCE, args.out or LIBRARY, FLAGS)]
    if args.out is None:
        targets.append((JSON_SOURCE, JSON_LIBRARY, JSON_FLAGS))
    for source, out, flags in targets:
        try:
            built = build(source, out, args.force, flags)
        except BuildError as exc:
            print(f"native build: {exc}", file=sys.stderr)
            return 1
        print(f"native build: {out} {'built' if built else 'up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
