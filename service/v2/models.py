"""The two v2 models mcserve serves and how they describe themselves (metadata and Triton's model configuration).

Each has fixed outputs, as a Triton model does, so generic clients (perf_analyzer, KServe) can drive both:

* ``<name>``: the deterministic pass (dropout off);
* ``<name>-mc``: Monte Carlo dropout, ``mc_samples`` passes with the request's ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcnet import IMAGE_SIDE

PIXELS = IMAGE_SIDE * IMAGE_SIDE
PLATFORM = "mcserve"
MC_SUFFIX = "-mc"
IMAGE_DATATYPES = ("FP32", "UINT8")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension; () for one value per image

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.dims]}

    def config(self) -> dict[str, Any]:
        """Triton's model-configuration entry: dims without the batch dimension; a scalar per image is [1]
        reshaped to [] (how Triton itself declares one value per batch item)."""
        dims = list(self.dims or (1,))
        entry: dict[str, Any] = {"name": self.name, "data_type": f"TYPE_{self.datatype}", "dims": dims}
        if not self.dims:
            entry["reshape"] = {"shape": []}
        return entry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    mc: bool
    outputs: tuple[TensorSpec, ...]
    parameters: tuple[str, ...]  # request parameters the model reads

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


IMAGES = TensorSpec("images", "FP32", (PIXELS,))


SET_OUTPUTS = ("prediction_set", "abstain")  # only with the coverage / max_risk parameter; never sent by default


def model_specs(name: str, classes: int, conformal: bool = False) -> tuple[ModelSpec, ModelSpec]:
    """The eval model and the MC model for the artifact ``name`` with ``classes`` classes; with ``conformal`` (the
    artifact has a conformal calibration) the MC model also takes ``coverage`` and ``max_risk`` and has the
    ``prediction_set`` (a class-membership mask) and ``abstain`` outputs."""
    per_image = (
        TensorSpec("class_id", "INT64", ()),
        TensorSpec("input_residual", "FP32", ()),
        TensorSpec("input_outlier", "BOOL", ()),
    )
    eval_model = ModelSpec(name, False, (TensorSpec("probabilities", "FP32", (classes,)), *per_image), ())
    mc_outputs: tuple[TensorSpec, ...] = (
        TensorSpec("mean_probabilities", "FP32", (classes,)),
        TensorSpec("variance", "FP32", (classes,)),
        TensorSpec("std", "FP32", (classes,)),
        TensorSpec("predictive_entropy", "FP32", ()),
        TensorSpec("expected_entropy", "FP32", ()),
        TensorSpec("mutual_information", "FP32", ()),
        TensorSpec("uncertain", "BOOL", ()),
        *per_image,
    )
    parameters: tuple[str, ...] = ("mc_samples", "seed")
    if conformal:
        mc_outputs += (TensorSpec("prediction_set", "BOOL", (classes,)), TensorSpec("abstain", "BOOL", ()))
        parameters += ("coverage", "max_risk")
    mc_model = ModelSpec(name + MC_SUFFIX, True, mc_outputs, parameters)
    return eval_model, mc_model


def model_metadata(spec: ModelSpec, version: str) -> dict[str, Any]:
    """The protocol's model metadata. The input also takes [-1, 28, 28] and UINT8 (see the README)."""
    return {
        "name": spec.name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [IMAGES.metadata()],
        "outputs": [o.metadata() for o in spec.outputs],
    }


def model_config(spec: ModelSpec, max_batch: int, max_wait_us: int) -> dict[str, Any]:
    """Triton's model-configuration extension: what perf_analyzer and Triton's clients read."""
    return {
        "name": spec.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch,
        "input": [{**IMAGES.config(), "format": "FORMAT_NONE"}],
        "output": [o.config() for o in spec.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": max_wait_us},
    }
