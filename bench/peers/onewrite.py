"""``python -m bench.peers.onewrite APP --port P [--workers N]``: uvicorn serving ``APP`` (an import string) over the
protocol mcserve runs by default (``service.httpproto.OneWriteProtocol``: each response's head and body in one
socket write), so that the floors (``bench.peers.mc_floor``, ``bench.peers.bare``) do no more HTTP work per
request than the service they bound."""

from __future__ import annotations

import argparse

import uvicorn

from service.httpproto import OneWriteProtocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("app", help="the ASGI app, module:attribute")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        args.app,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        http=OneWriteProtocol,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
