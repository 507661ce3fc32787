"""The service's configuration: the one place in ``service/`` that reads the environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Settings(BaseSettings):
    """Every knob of the service; each field is read from ``MCSERVE_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="MCSERVE_", extra="ignore", frozen=True)

    model_dir: Path = Field(default=Path("models/current"), description="artifact directory (training output)")
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N; auto picks CUDA when available")
    host: str = Field(default="127.0.0.1", description="bind address (use 0.0.0.0 in a container)")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port (REST API and v2 REST)")
    grpc_port: int = Field(
        default=8001, ge=0, le=65535,
        description="v2 gRPC port (inference.GRPCInferenceService and grpc.health.v1.Health), as Triton's; 0 = off",
    )  # fmt: skip
    workers: int = Field(
        default=1, ge=1, le=64,
        description="server processes sharing the port; more than 1 aggregates metrics through metrics_dir",
    )  # fmt: skip
    metrics_dir: Path | None = Field(
        default=None,
        description="with workers > 1: directory for the workers' shared Prometheus files, emptied at startup "
        "(default: a fresh temporary directory)",
    )
    default_samples: int = Field(default=100, ge=1, description="MC passes when a request gives no n_samples")
    max_samples: int = Field(default=1000, ge=1, description="largest n_samples a request may ask for")
    max_batch: int = Field(default=256, ge=1, description="most images in one request")
    max_work: int = Field(default=102_400, ge=1, description="cap on n_samples x images for one uncertainty request")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="largest request body, bytes (413)")
    max_png_bytes: int = Field(default=64 * 1024, ge=64, description="largest decoded PNG file in bytes")
    mc_chunk_size: int = Field(
        default=8192, ge=1,
        description="most rows (passes x images) in one Monte Carlo kernel call, shared by the requests in it",
    )  # fmt: skip
    max_concurrency: int = Field(default=2, ge=1, description="inference calls running at once in the worker threads")
    mc_process: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="run the CPU Monte Carlo kernel in a child process beside the event loop (the same numbers); "
        "auto = on when each worker has at least 2 CPUs (affinity and cgroup quota); ignored on CUDA",
    )
    mc_process_calls: int = Field(
        default=3,
        ge=1,
        description="Monte Carlo kernel calls sent to the kernel process at once (it computes them one after another; "
        "more than one keeps it computing while this process answers the last and reads the next requests)",
    )
    mc_native: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="the CPU Monte Carlo kernel in C (service/native, built by `make install`; needs AVX2 and FMA): "
        "auto = when it is built and the CPU has them, else numpy (logged); on = refuse to start without it; off = "
        "numpy. Seeded answers differ between the two in the last digits",
    )
    mc_batch: bool = Field(
        default=True,
        description="cross-request MC batching: concurrent uncertainty requests share kernel calls (a seeded answer "
        "is the same either way); false = each kernel call serves one request",
    )
    mc_batch_wait_ms: float = Field(
        default=0.0, ge=0.0, le=1000.0,
        description="cross-request MC batching: how long an MC request waits for company when no kernel call is "
        "running; 0 = a lone request starts at once",
    )  # fmt: skip
    max_queued_work: int = Field(
        default=1_024_000, ge=1,
        description="admission control: most MC work (passes x images) admitted and not yet computed; more is refused "
        "at once with 503 overloaded",
    )  # fmt: skip
    max_waiting_requests: int = Field(
        default=128, ge=0,
        description="admission control: most big MC requests (bodies over 64 KiB) waiting, bodies unread, for room in "
        "the queue until MCSERVE_QUEUE_TIMEOUT_S; more are refused at once with 503 overloaded",
    )  # fmt: skip
    queue_timeout_s: float = Field(
        default=2.0, gt=0.0, le=300.0,
        description="admission control: an MC request that no kernel call started within this is refused with 503 "
        "overloaded",
    )  # fmt: skip
    fast_path: bool = Field(
        default=True,
        description="serve well-formed /predict and /predict/uncertainty pixel requests without FastAPI's overhead",
    )
    batch_max_images: int = Field(
        default=256, ge=1, description="dynamic batching: most images in one /predict forward pass (1 turns it off)"
    )
    batch_max_wait_ms: float = Field(
        default=0.0, ge=0.0, le=1000.0,
        description="dynamic batching: how long a /predict request waits for company; 0 = only requests already queued",
    )  # fmt: skip
    grpc_batch_wait_ms: float = Field(
        default=5.0, ge=0.0, le=1000.0,
        description="v2 gRPC: once calls back up, the longest an eval call waits for others to share its forward pass "
        "(the wait ends sooner when calls stop arriving; a lone client never waits); 0 = every call runs its own pass",
    )  # fmt: skip
    keep_freed_buffers: bool = Field(
        default=True,
        description="glibc mallopt: reuse freed multi-megabyte buffers instead of mmap/munmap per call (process-wide)",
    )
    torch_threads: int = Field(
        default=0, ge=0, description="intra-op threads of torch and numpy's BLAS, per worker; 0 keeps their defaults"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(default="info", description="log level")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one line per record; json: one JSON object per line (time, level, logger, message, "
        "request_id) for log pipelines",
    )
    http_one_write: bool = Field(
        default=True,
        description="send each HTTP response's head and body in one socket write (service.httpproto); false: "
        "uvicorn's own protocol, two writes",
    )
    access_log: bool = Field(default=False, description="uvicorn's per-request access log (independent of log_level)")
    graceful_shutdown_s: int = Field(
        default=8, ge=1, description="on SIGTERM, seconds in-flight requests get to finish (below Docker's 10 s)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated allowed CORS origins; empty keeps CORS closed"
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="TOML keys file (mcserve-keys new): every endpoint but health needs a key; unset: open; "
        "re-read on SIGHUP",
    )
    tls_certfile: Path | None = Field(default=None, description="PEM certificate chain: HTTPS and gRPC over TLS")
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of MCSERVE_TLS_CERTFILE")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.default_samples > self.max_samples:
            raise ValueError(f"default_samples ({self.default_samples}) exceeds max_samples ({self.max_samples})")
        if self.grpc_port == self.port:
            raise ValueError(f"grpc_port ({self.grpc_port}) is the HTTP port; pick another, or 0 to turn gRPC off")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set both MCSERVE_TLS_CERTFILE and MCSERVE_TLS_KEYFILE for TLS, or neither")
        return self

    @property
    def loopback(self) -> bool:
        """Bound to a loopback address only (reachable from this host alone)."""
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


def describe_error(exc: Exception) -> str:
    """One line naming each bad setting as its environment variable."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        name = "MCSERVE_" + "_".join(str(p) for p in err.get("loc", ())).upper()
        parts.append(f"{name.rstrip('_')}: {err.get('msg', 'invalid')}")
    return "invalid settings: " + "; ".join(parts)
