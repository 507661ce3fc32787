"""The v2 data plane: what every Open Inference Protocol call means, whatever carried it.

Modelled on MLServer's ``DataPlane``, which its REST endpoints and gRPC servicer share: the HTTP and
gRPC adapters parse their wire format into :mod:`service.v2.types`, call one method here and encode
what comes back; errors are :class:`~service.errors.ServiceError` (HTTP status, mapped to a gRPC code
by the gRPC adapter). Inference itself goes through :class:`service.core.Core`, the same core the
REST API uses, so the eval model shares ``/predict``'s batches and the MC model gives
``/predict/uncertainty``'s numbers for the same seed.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mcnet.conformal import Conformal

from ..admission import BIG_BODY_BYTES, Reservation
from ..core import SEED_LIMIT, Core
from ..errors import NotReadyError
from ..mcoutcome import MCOutcome, outliers_of, uncertain_flags
from ..sets import SetRequest, set_problem
from .models import SET_OUTPUTS, ModelSpec, model_config, model_metadata, model_specs
from .stats import ModelStats
from .tensors import V2Error, check_shape, float_parameter, images, int_parameter
from .types import InferRequest, InferResponse, OutputTensor

SERVER_NAME = "mcserve"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics")  # exactly those implemented


class DataPlane:
    def __init__(self, core: Core, server_version: str) -> None:
        self.core = core
        self.server_version = server_version
        self._specs: dict[str, ModelSpec] = {}
        self._stats: dict[str, ModelStats] = {}
        self._version: tuple[str, str] | None = None  # (manifest version, v2 version)

    # ---- server -------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.core.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.server_version, "extensions": list(EXTENSIONS)}

    # ---- models -------------------------------------------------------------------------------------
    def _models(self) -> dict[str, ModelSpec]:
        if not self._specs:
            loaded = self.core.engine.loaded
            conformal = loaded.conformal is not None
            for spec in model_specs(str(loaded.manifest["name"]), len(loaded.class_names), conformal):
                self._specs[spec.name] = spec
                self._stats[spec.name] = ModelStats()
        return self._specs

    @property
    def version(self) -> str:
        """The v2 model version: the manifest's version read as the hexadecimal number it is (``27c2d976c8aa`` ->
        ``43717825579178``). Triton's versions are integers and perf_analyzer parses them as such."""
        manifest = self.manifest_version
        if self._version is None or self._version[0] != manifest:
            self._version = (manifest, v2_version(manifest))
        return self._version[1]

    @property
    def manifest_version(self) -> str:
        return str(self.core.engine.loaded.manifest["version"])

    def model(self, name: str, version: str | None) -> ModelSpec:
        """The model ``name`` (at ``version``, if one is given), or 503 before loading, 404 if there is none."""
        if not self.ready:
            raise NotReadyError()
        models = self._models()
        spec = models.get(name)
        if spec is None:
            served = " and ".join(f"'{m}'" for m in models)
            raise V2Error("model", f"unknown model '{name}'; this server serves {served}", status=404)
        if version not in (None, "", self.version, self.manifest_version):
            raise V2Error(
                "model_version",
                f"model '{name}' has no version '{version}'; its version is '{self.version}' "
                f"(the manifest's '{self.manifest_version}')",
                404,
            )
        return spec

    def model_ready(self, name: str, version: str | None) -> bool:
        try:
            self.model(name, version)
        except NotReadyError:
            return False
        return True

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        return model_metadata(self.model(name, version), self.version)

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        s = self.core.settings
        return model_config(self.model(name, version), s.max_batch, round(s.batch_max_wait_ms * 1000))

    def model_statistics(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton's statistics extension: one entry per model (every model when ``name`` is empty)."""
        names = [self.model(name, version).name] if name else list(self._models()) if self.ready else []
        return [self._stats[n].to_json(n, self.version) for n in names]

    # ---- inference ----------------------------------------------------------------------------------
    async def reserve(self, name: str, version: str | None, body_bytes: int, protocol: str) -> Reservation | None:
        """Room in the MC queue for a request to model ``name`` whose body of ``body_bytes`` is not read yet: for a
        big body to the MC model, waits in line for it (``service.admission``); None for any other request."""
        if body_bytes <= BIG_BODY_BYTES or not self.model(name, version).mc:
            return None
        return await self.core.mc.reserve(self.core.settings.max_work, protocol)

    async def infer(
        self,
        request: InferRequest,
        protocol: str,
        wait_s: float | None = None,
        inline: bool = False,
        idle_s: float | None = None,
        reservation: Reservation | None = None,
    ) -> InferResponse:
        """One inference; ``wait_s``, ``inline`` and ``idle_s`` say how an eval request shares a forward pass
        (:meth:`service.core.Core.predict_timed`); ``reservation``: the MC queue room the adapter held while it
        read a big body (:meth:`reserve`; the adapter releases it if it goes unused)."""
        spec = self.model(request.model_name, request.model_version)
        stats = self._stats[spec.name]
        start = time.perf_counter_ns()
        try:
            response = await self._infer(spec, request, protocol, stats, (wait_s, inline, idle_s), reservation)
        except Exception:
            stats.failed(time.perf_counter_ns() - start)
            raise
        stats.succeeded(time.perf_counter_ns() - start, len(response.outputs[0].array) if response.outputs else 0)
        return response

    async def _infer(
        self,
        spec: ModelSpec,
        request: InferRequest,
        protocol: str,
        stats: ModelStats,
        sharing: tuple[float | None, bool, float | None],
        reservation: Reservation | None = None,
    ) -> InferResponse:
        s = self.core.settings
        wanted = _requested(spec, request)
        # Triton's reserved "triton_" parameters (perf_analyzer sends triton_enable_empty_final_response) steer
        # decoupled and streaming models, which these are not: accepted and ignored, like Triton does for them
        unknown = sorted(k for k in request.parameters if k not in spec.parameters and not k.startswith("triton_"))
        if unknown:
            takes = f"takes {', '.join(spec.parameters)}" if spec.parameters else "takes no parameters"
            raise V2Error(f"parameter '{unknown[0]}'", f"is not a parameter of model '{spec.name}', which {takes}")
        if len(request.inputs) != 1 or request.inputs[0].name != "images":
            names = [t.name for t in request.inputs]
            if not names:
                raise V2Error("inputs", "the request has no inputs; send one input named 'images'")
            other = next((n for n in names if n != "images"), None)
            if other is not None:
                raise V2Error(f"input '{other}'", f"is not an input of model '{spec.name}'; its only input is 'images'")
            raise V2Error("inputs", "input 'images' is given more than once")
        n, seed, sets = s.default_samples, None, SetRequest()
        if spec.mc:  # parameters before pixels: a refused request costs no decoding
            n = int_parameter(request.parameters, "mc_samples", s.default_samples, 1, s.max_samples) or n
            seed = int_parameter(request.parameters, "seed", None, 0, SEED_LIMIT - 1)
            problem = self.core.mc_limit_problem(n, check_shape(request.inputs[0], s.max_batch), "mc_samples")
            if problem is not None:
                raise V2Error("parameter 'mc_samples'", problem)
            sets = _set_request(request.parameters, self.core.engine.loaded.conformal, n, wanted)
        t0 = time.perf_counter_ns()
        x = images(request.inputs[0], s.max_batch)
        t1 = time.perf_counter_ns()
        if spec.mc:
            outcome = await self.core.uncertainty(x, n, seed, protocol, _keep, sets, reservation)
            t2 = time.perf_counter_ns()
            outputs = self._mc(spec, outcome)
            parameters: dict[str, Any] = {"mc_samples": outcome.n_samples, "seed": outcome.seed}
            if outcome.sets is not None:
                parameters["conformal_method"] = outcome.sets.method
                parameters.update({k: v for k, v in vars(sets).items() if v is not None})
            queued_ns = round(outcome.queued_s * 1e9)
        else:
            rows, queued_s = await self.core.predict_timed(x, protocol, *sharing)
            t2 = time.perf_counter_ns()
            outputs, parameters = self._eval(spec, rows), {}
            queued_ns = round(queued_s * 1e9)
        selected = [outputs[name] for name in wanted]
        # Triton counts each phase once per successful request (perf_analyzer checks the counts agree and finds the
        # model version whose queue count grew); queue time is part of the wall time between t1 and t2
        queued_ns = min(queued_ns, t2 - t1)
        stats.timed("queue", queued_ns)
        stats.timed("compute_input", t1 - t0)
        stats.timed("compute_infer", t2 - t1 - queued_ns)
        stats.timed("compute_output", time.perf_counter_ns() - t2)
        return InferResponse(spec.name, self.version, selected, parameters, request.id)

    def _eval(self, spec: ModelSpec, rows: np.ndarray) -> dict[str, OutputTensor]:
        loaded = self.core.engine.loaded
        probs = np.ascontiguousarray(rows[:, :-1])
        residual = np.ascontiguousarray(rows[:, -1])
        check = loaded.input_check
        outlier = np.zeros(len(rows), dtype=np.bool_) if check is None else residual > check.threshold
        return _named(
            spec,
            probabilities=probs,
            class_id=probs.argmax(1).astype(np.int64),
            input_residual=residual,
            input_outlier=outlier,
        )

    def _mc(self, spec: ModelSpec, outcome: MCOutcome) -> dict[str, OutputTensor]:
        engine = self.core.engine
        mean, variance, std, predictive, expected, mi = outcome.result.arrays()
        outliers = outliers_of(engine, outcome.residuals, len(mean))
        residual = outcome.residuals
        answered = outcome.sets
        in_set = np.zeros(mean.shape, dtype=np.bool_)
        abstain = np.zeros(len(mean), dtype=np.bool_)
        if answered is not None and answered.sets is not None:
            for b, members in enumerate(answered.sets):
                in_set[b, members] = True
        if answered is not None and answered.abstain is not None:
            abstain = np.array(answered.abstain, dtype=np.bool_)
        return _named(
            spec,
            prediction_set=in_set,
            abstain=abstain,
            mean_probabilities=mean,
            variance=variance,
            std=std,
            predictive_entropy=predictive,
            expected_entropy=expected,
            mutual_information=mi,
            uncertain=np.array(uncertain_flags(engine, mi.tolist(), outliers), dtype=np.bool_),
            class_id=mean.argmax(1).astype(np.int64),
            input_residual=(np.full(len(mean), np.nan) if residual is None else residual).astype(np.float32),
            input_outlier=np.array([o is True for o in outliers], dtype=np.bool_),
        )


def _keep(outcome: MCOutcome) -> MCOutcome:
    return outcome


def _set_request(parameters: dict[str, Any], conformal: Conformal | None, n: int, wanted: list[str]) -> SetRequest:
    """The request's ``coverage`` / ``max_risk`` parameters, checked; the set outputs need their parameter."""
    sets = SetRequest(float_parameter(parameters, "coverage"), float_parameter(parameters, "max_risk"))
    fault = set_problem(conformal, sets, n, ("parameter 'coverage'", "parameter 'max_risk'", "parameter 'mc_samples'"))
    if fault is not None:
        raise V2Error(*fault)
    for output, value, parameter in (
        ("prediction_set", sets.coverage, "coverage"),
        ("abstain", sets.max_risk, "max_risk"),
    ):
        if output in wanted and value is None:
            raise V2Error(f"output '{output}'", f"needs the parameter '{parameter}'")
    return sets


def v2_version(manifest_version: str) -> str:
    """A decimal integer string for a manifest version: itself if it is one, else its value as hexadecimal."""
    if manifest_version.isdigit():
        return manifest_version
    try:
        return str(int(manifest_version, 16))
    except ValueError:
        return manifest_version  # not a number at all: served as it is (perf_analyzer then needs -x)


def _named(spec: ModelSpec, **arrays: np.ndarray) -> dict[str, OutputTensor]:
    return {
        o.name: OutputTensor(o.name, o.datatype, np.ascontiguousarray(arrays[o.name], dtype=_dtype(o.datatype)))
        for o in spec.outputs
    }


def _dtype(datatype: str) -> type:
    return {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}[datatype]


def _requested(spec: ModelSpec, request: InferRequest) -> list[str]:
    if request.outputs is None or not request.outputs:
        given = request.parameters  # the set outputs come by default only when their parameter is given
        skip = {o for o, p in zip(SET_OUTPUTS, ("coverage", "max_risk"), strict=True) if p not in given}
        return [name for name in spec.output_names if name not in skip]
    names = []
    for out in request.outputs:
        if out.name not in spec.output_names:
            raise V2Error(
                f"output '{out.name}'",
                f"is not an output of model '{spec.name}'; its outputs are {', '.join(spec.output_names)}",
            )
        if out.name in names:
            raise V2Error(f"output '{out.name}'", "is requested more than once")
        names.append(out.name)
    return names
