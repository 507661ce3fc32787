"""The v2 gRPC protocol: checked-in .proto files and the stubs generated from them (``python -m service.v2.protogen``).

Import the generated modules through :mod:`service.v2.stubs`, which says what to run when they are missing.
"""
