"""HTTP endpoints: thin glue between decoding, the engine and the metrics."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .core import Core
from .decode import decode_batch
from .encode import predict_payload, uncertainty_payload_of
from .engine import Engine
from .errors import InputError, NotReadyError, error_response
from .metrics import Metrics
from .schemas import ErrorResponse, PredictRequest, PredictResponse, Status, UncertaintyRequest, UncertaintyResponse
from .sets import SetRequest, set_problem

router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid JSON, base64 or PNG"},
    413: {"model": ErrorResponse, "description": "body larger than MCSERVE_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "content type is not application/json"},
    422: {"model": ErrorResponse, "description": "a field is wrong; `field` names it"},
    503: {"model": ErrorResponse, "description": "model not loaded yet"},
}
# With MCSERVE_API_KEYS_FILE set, every operation but health answers these (service.auth).
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no valid API key (Authorization: Bearer <token>), when keys are on"},
    403: {"model": ErrorResponse, "description": "the API key lacks this operation's scope"},
    429: {"model": ErrorResponse, "description": "the API key is over its rate or MC-work limit; see Retry-After"},
}
_ERRORS |= _AUTH


async def get_engine(request: Request) -> Engine:  # async: FastAPI runs sync dependencies in a worker thread
    engine: Engine = request.app.state.engine
    if not engine.ready:
        raise NotReadyError()
    return engine


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_core(request: Request) -> Core:
    core: Core = request.app.state.core
    if not core.ready:
        raise NotReadyError()
    return core


EngineDep = Annotated[Engine, Depends(get_engine)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CoreDep = Annotated[Core, Depends(get_core)]


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS, summary="Deterministic prediction")
async def predict(body: PredictRequest, core: CoreDep) -> dict[str, Any]:
    """Class probabilities with dropout off (eval mode): no randomness, no model state changes.

    Well-formed pixel-list requests are normally answered by the fast path (``service.fastpath``), which
    batches concurrent requests; this route serves PNG requests, errors, and everything when
    ``MCSERVE_FAST_PATH=false``.
    """
    engine, s = core.engine, core.settings
    x = await engine.run(decode_batch, body.images, body.images_png, s.max_batch, s.max_png_bytes)
    rows = await core.predict(x.numpy(), "rest")
    return predict_payload(engine.loaded, rows.tolist())


@router.post(
    "/predict/uncertainty",
    response_model=UncertaintyResponse,
    responses=_ERRORS,
    summary="Monte Carlo dropout prediction with uncertainty",
)
async def predict_uncertainty(body: UncertaintyRequest, core: CoreDep) -> dict[str, Any]:
    """Mean, variance and entropies over ``n_samples`` dropout passes; ``seed`` makes it reproducible."""
    engine, s = core.engine, core.settings
    n = s.default_samples if body.n_samples is None else body.n_samples
    count = len(body.images if body.images is not None else body.images_png or [])
    problem = core.mc_limit_problem(n, count)
    if problem is not None:
        raise InputError("n_samples", problem)
    sets = SetRequest(body.coverage, body.max_risk)
    set_fault = set_problem(engine.loaded.conformal, sets, n, ("coverage", "max_risk", "n_samples"))
    if set_fault is not None:
        raise InputError(*set_fault)
    x = await engine.run(decode_batch, body.images, body.images_png, s.max_batch, s.max_png_bytes)
    loaded = engine.loaded
    encode = functools.partial(uncertainty_payload_of, loaded)
    return await core.uncertainty(x.numpy(), n, body.seed, "rest", encode, sets)


@router.get("/livez", response_model=Status, response_model_exclude_none=True, summary="Liveness: the process is up")
async def livez() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz",
    response_model=Status,
    responses={503: {"model": ErrorResponse, "description": "model not loaded and warmed up yet"}},
    summary="Readiness: 200 only after the model is loaded and warmed up",
)
async def readyz(request: Request) -> Any:
    if not request.app.state.engine.ready:
        return error_response(503, "not_ready", "the model is not loaded and warmed up yet")
    core = request.app.state.core
    return {"status": "ready", "mc_kernel": core.kernel_state, "mc_code": core.engine.mc_code}


_INFO_EXAMPLE = {
    "model": {"name": "fashion-mnist-dropout-mlp", "version": "3f1c0a9b2d4e", "sha256": "3f1c…"},
    "device": "cpu",
    "class_names": ["T-shirt/top", "Trouser", "…"],
    "uncertainty": {"metric": "mutual_information", "threshold": 0.1, "rule": "…"},
    "input_check": {"method": "pca_residual", "components": 32, "threshold": 0.042, "quantile": 0.99, "rule": "…"},
    "conformal": {
        "method": "mondrian_lac",
        "source": "mc",
        "mc_samples": 100,
        "calibration_images": 2500,
        "coverage_range": [0.5, 0.999],
        "min_max_risk": 0.012,
        "delta": 0.05,
        "rule": "…",
    },
    "metrics": {"test_accuracy": 0.85},
    "limits": {"max_batch": 256, "default_samples": 100, "max_samples": 1000},
    "batching": {"fast_path": True, "max_images": 256, "max_wait_ms": 0.0},
}


def _check_info(section: Any) -> dict[str, Any] | None:
    """The manifest's input-check section without file bookkeeping."""
    if not isinstance(section, dict):
        return None
    return {k: section.get(k) for k in ("method", "components", "threshold", "quantile", "rule")}


def _conformal_info(section: Any) -> dict[str, Any] | None:
    """The manifest's conformal section without file bookkeeping: what ``coverage`` and ``max_risk`` need."""
    if not isinstance(section, dict):
        return None
    keys = ("method", "source", "mc_samples", "calibration_images", "coverage_range", "min_max_risk", "delta", "rule")
    return {k: section.get(k) for k in keys}


@router.get(
    "/info",
    responses={200: {"content": {"application/json": {"example": _INFO_EXAMPLE}}}, 503: _ERRORS[503], **_AUTH},
    summary="Model identity, device, classes, headline metrics and limits",
)
async def info(engine: EngineDep) -> JSONResponse:
    loaded, s = engine.loaded, engine.settings
    m = loaded.manifest
    return JSONResponse(
        {
            "model": loaded.ref,
            "created_at": m.get("created_at"),
            "device": str(loaded.device),
            "class_names": loaded.class_names,
            "architecture": m.get("architecture"),
            "uncertainty": m.get("uncertainty"),
            "input_check": _check_info(m.get("input_check")),
            "conformal": _conformal_info(m.get("conformal")),
            "metrics": m.get("metrics", {}),
            "limits": {
                "max_batch": s.max_batch,
                "default_samples": s.default_samples,
                "max_samples": s.max_samples,
                "max_work": s.max_work,
                "max_body_bytes": s.max_body_bytes,
                "max_png_bytes": s.max_png_bytes,
                "max_concurrency": s.max_concurrency,
            },
            "batching": {
                "fast_path": s.fast_path,
                "max_images": s.batch_max_images,
                "max_wait_ms": s.batch_max_wait_ms,
            },
        }
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": "mcserve_http_requests_total{...} 3.0"}}}, **_AUTH},
    summary="Prometheus metrics of the server (all workers)",
)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
