"""Request and response models; their examples feed the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

_PIXEL = {"type": "number", "minimum": 0, "maximum": 255}
_IMAGE_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": _PIXEL, "minItems": 784, "maxItems": 784, "title": "flat 784"},
        {
            "type": "array",
            "items": {"type": "array", "items": _PIXEL, "minItems": 28, "maxItems": 28},
            "minItems": 28,
            "maxItems": 28,
            "title": "28x28",
        },
    ]
}
# Shapes and values are checked by service.decode, which names the exact image and pixel at fault.
Images = Annotated[list[Any], WithJsonSchema({"type": "array", "items": _IMAGE_SCHEMA, "minItems": 1})]
_BLANK: Any = [0] * 784
_PNG_EXAMPLE = "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAEElEQVR4nGNgGAWjYBQQAwADLAABPwpG8wAAAABJRU5ErkJggg=="


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": [_BLANK]}, {"images_png": [_PNG_EXAMPLE]}]},
    )

    images: Images | None = Field(
        default=None, description="28x28 nested lists or flat lists of 784 grayscale values on the 0-255 scale"
    )
    images_png: list[str] | None = Field(
        default=None, description="base64 PNGs, exactly 28x28 (not resized), converted to 8-bit grayscale"
    )


class UncertaintyRequest(PredictRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": [_BLANK], "n_samples": 100, "seed": 42}]},
    )

    n_samples: int | None = Field(
        default=None,
        strict=True,  # a JSON integer only: no "10", 2.0 or true
        description="Monte Carlo passes, 1..MCSERVE_MAX_SAMPLES (default MCSERVE_DEFAULT_SAMPLES)",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        lt=2**63,
        strict=True,
        description="dropout-mask seed; same seed + same input -> same response",
    )
    coverage: float | None = Field(
        default=None,
        strict=True,  # a JSON number only: no "0.9" or true
        description="ask for conformal prediction sets holding the true class with this probability, 0.5..0.999 "
        "(marginal over images, split-conformal guarantee); needs the artifact's calibration and its n_samples",
    )
    max_risk: float | None = Field(
        default=None,
        strict=True,
        description="ask for abstention: accept an image only if the error rate among accepted images stays at most "
        "this, with probability 0.95 over the calibration (selection with guaranteed risk); below 1",
    )


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


_RESIDUAL = "the input check's score: mean squared pixel residual outside the training images' principal subspace"
_OUTLIER = "input_residual above the artifact's input-check threshold: the image is unlike the training images"


class Prediction(BaseModel):
    class_id: int
    label: str
    probabilities: list[float]
    input_residual: float | None = Field(description=_RESIDUAL + "; null if the artifact has no input check")
    input_outlier: bool | None = Field(description=_OUTLIER + "; null if the artifact has no input check")


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "fashion-mnist-dropout-mlp", "version": "3f1c0a9b2d4e", "sha256": "3f1c…"},
                    "predictions": [
                        {
                            "class_id": 9,
                            "label": "Ankle boot",
                            "probabilities": [0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.02, 0.0, 0.97],
                            "input_residual": 0.011,
                            "input_outlier": False,
                        }
                    ],
                }
            ]
        }
    )

    model: ModelRef
    predictions: list[Prediction]


class UncertainPrediction(BaseModel):
    class_id: int = Field(description="argmax of mean_probabilities")
    label: str
    mean_probabilities: list[float]
    variance: list[float] = Field(description="per-class variance of the probabilities across passes (divide by T)")
    std: list[float]
    predictive_entropy: float = Field(description="entropy of the mean prediction, nats")
    expected_entropy: float = Field(description="mean entropy of the individual passes, nats")
    mutual_information: float = Field(description="predictive_entropy - expected_entropy (epistemic), nats")
    input_residual: float | None = Field(description=_RESIDUAL + "; null if the artifact has no input check")
    input_outlier: bool | None = Field(description=_OUTLIER + "; null if the artifact has no input check")
    uncertain: bool = Field(description="mutual_information above the manifest's threshold, or input_outlier")
    prediction_set: list[int] | None = Field(
        default=None,
        description="class ids in the conformal prediction set, most probable first (may be empty); null unless "
        "the request gave coverage",
    )
    prediction_set_labels: list[str] | None = Field(default=None, description="the labels of prediction_set")
    abstain: bool | None = Field(
        default=None,
        description="true: the image's confidence is below the threshold that guarantees max_risk, do not act on "
        "class_id; null unless the request gave max_risk",
    )


class UncertaintyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "fashion-mnist-dropout-mlp", "version": "3f1c0a9b2d4e", "sha256": "3f1c…"},
                    "n_samples": 100,
                    "seed": 42,
                    "uncertainty_threshold": 0.1,
                    "input_check_threshold": 0.042,
                    "predictions": [
                        {
                            "class_id": 9,
                            "label": "Ankle boot",
                            "mean_probabilities": [0.0, 0.0, 0.0, 0.0, 0.0, 0.02, 0.0, 0.03, 0.0, 0.95],
                            "variance": [0.0, 0.0, 0.0, 0.0, 0.0, 0.001, 0.0, 0.002, 0.0, 0.004],
                            "std": [0.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0, 0.04, 0.0, 0.06],
                            "predictive_entropy": 0.23,
                            "expected_entropy": 0.19,
                            "mutual_information": 0.04,
                            "input_residual": 0.011,
                            "input_outlier": False,
                            "uncertain": False,
                        }
                    ],
                }
            ]
        }
    )

    model: ModelRef
    n_samples: int
    seed: int = Field(description="seed actually used; send it back to reproduce this response")
    uncertainty_threshold: float
    input_check_threshold: float | None = Field(description="null if the artifact has no input check")
    coverage: float | None = Field(default=None, description="the requested coverage, echoed; null if none")
    max_risk: float | None = Field(default=None, description="the requested max_risk, echoed; null if none")
    conformal_method: str | None = Field(
        default=None, description="the calibration's method (lac, aps, mondrian_lac) when sets or abstention were asked"
    )
    predictions: list[UncertainPrediction]


class Status(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "mc_kernel": "process", "mc_code": "c"}]}
    )

    status: str
    mc_kernel: str | None = Field(
        default=None,
        description="/readyz: where MC kernel calls run: `process` (MCSERVE_MC_PROCESS), `starting` (its process is "
        "loading; the threads answer meanwhile) or `threads`",
    )
    mc_code: str | None = Field(
        default=None,
        description="/readyz: the code that computes MC dropout: `c` (the C kernel, MCSERVE_MC_NATIVE), `numpy` or "
        "`torch` (CUDA)",
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "validation_error",
                        "message": "images[0]: wrong shape: 27 rows, expected 28 rows of 28 values",
                        "field": "images[0]",
                    }
                }
            ]
        }
    )

    error: ErrorDetail
