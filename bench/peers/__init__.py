"""Peer servers for ``python -m bench http``; each serves the same mcnet artifact (or a constant)."""
