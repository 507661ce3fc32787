"""The C Monte Carlo kernel: ``mckernel.c`` and its build script (the library is loaded by ``service.mcnative``)."""
