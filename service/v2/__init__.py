"""Open Inference Protocol (KServe v2 / Triton) adapters and their shared data plane."""
