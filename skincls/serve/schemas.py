"""The JSON the server speaks: pydantic models of its responses, and the OpenAPI document built from them.

The OpenAPI schemas are generated from these models, so the documentation cannot drift from what
the endpoints return (the tests validate real responses against the same models).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from .._version import __version__

__all__ = [
    "NOTICE",
    "ErrorResponse",
    "ImageResult",
    "Limits",
    "ModelInfo",
    "PredictResponse",
    "openapi_spec",
]

NOTICE = (
    "Research software, not a medical device: its outputs are not diagnoses and must not be used "
    "to make clinical decisions."
)


class Limits(BaseModel):
    """What one request may hold; larger requests are refused with an error."""

    max_upload_bytes: int = Field(20 * 2**20, gt=0, description="Largest request body, in bytes.")
    max_files: int = Field(16, gt=0, description="Most images per request.")
    max_pixels: int = Field(
        64_000_000, gt=0, description="Most pixels (width × height) of all images of a request."
    )


class ModelInfo(BaseModel):
    """The served model, as recorded in its checkpoint; `None` where the checkpoint records nothing."""

    name: str = Field(description="A readable name: architecture and classes.")
    checkpoint: str = Field(description="The checkpoint's file name.")
    arch: str | None = Field(description="The architecture; 'ensemble' for an ensemble checkpoint.")
    members: int | None = Field(description="Number of member models of an ensemble; else None.")
    backbone: str | None = Field(description="The backbone's name, for a custom backbone.")
    classes: list[str]
    positive_class: str | None = Field(
        description="The class whose probability is thresholded (two classes); None with more."
    )
    labels: dict[str, Any] | None = Field(
        None, description="How the classes were made (task, diagnosis map), as recorded."
    )
    threshold: float | None = Field(description="Operating threshold on P(positive); None: argmax.")
    threshold_source: str = Field(description="How the threshold was chosen.")
    uncertain_band: float = Field(
        description="Half-width of the 'uncertain' band around the threshold (two classes) or the "
        "largest gap between the two most probable classes still called uncertain (more classes)."
    )
    temperature: float = Field(description="Calibration temperature applied to the logits.")
    calibration: dict[str, Any] | None = Field(description="How the temperature was fitted.")
    tta: bool = Field(description="Whether predictions average the 8 flips and 90° turns.")
    precision: str = Field(description="The precision the model runs at (fp32, bf16, fp16).")
    preprocessing: dict[str, Any]
    data: dict[str, Any] = Field(description="Training data as recorded (data dir, image size...).")
    training: dict[str, Any] = Field(description="Training recipe as recorded (epochs, lr...).")
    metrics: dict[str, dict[str, Any]] = Field(
        description="Stored evaluation summaries by split, e.g. metrics['test']['roc_auc']; "
        "another dataset's by '<data dir name>:<split>', e.g. metrics['ddi:test']."
    )
    skincls_version: str | None = Field(
        description="The skincls version that wrote the checkpoint."
    )
    grad_cam: bool = Field(description="Whether predictions come with Grad-CAM heat maps.")
    metadata_columns: list[str] = Field(
        default_factory=list,
        description="Optional form fields the model also uses (e.g. age, sex, site); empty: "
        "images only.",
    )
    limits: Limits
    notice: str = NOTICE


class ImageResult(BaseModel):
    """One image's prediction."""

    file: str = Field(description="The uploaded file's name.")
    label: str = Field(description="The class decided at the threshold (argmax without one).")
    decision: str = Field(description="`label`, or 'uncertain' inside the uncertain band.")
    uncertain: bool
    probability: float = Field(
        description="Calibrated probability of the positive class (two classes), else of `label`."
    )
    positive_class: str | None
    threshold: float | None
    probabilities: dict[str, float] = Field(description="Calibrated probability of every class.")
    width: int = Field(description="The image's width in pixels, as uploaded.")
    height: int
    image: str | None = Field(
        None, description="The image as the model read it (RGB), downscaled: a data: URL (JPEG)."
    )
    heatmap: str | None = Field(
        None,
        description="Grad-CAM of `cam_class` (the positive class; with more than two classes, "
        "the label) over the whole image, the size of `image`, "
        "coloured (jet): a data: URL (PNG) to lay over `image` at any opacity.",
    )
    cam_class: str | None = Field(None, description="The class the heat map shows evidence for.")
    cam_error: str | None = Field(None, description="Why there is no heat map, if there is none.")
    missing_inputs: list[str] | None = Field(
        None,
        description="A model with metadata: the columns this request gave no value for (treated "
        "as unknown); None for a model of images only.",
    )


class PredictResponse(BaseModel):
    """Results in the order the images were uploaded."""

    results: list[ImageResult]
    notice: str = NOTICE


class ErrorResponse(BaseModel):
    """A refused request; nothing of it was kept."""

    error: str = Field(description="What went wrong and what to do, in one line.")
    code: str = Field(
        description="Stable short name: too_large, too_many_files, too_many_pixels, not_an_image, "
        "corrupt_image, unusable_image, empty_file, no_images, bad_request, not_found, "
        "method_not_allowed, model_error, internal."
    )
    file: str | None = Field(None, description="The offending file, when one is to blame.")


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _predict_operation() -> dict[str, Any]:
    """POST /api/predict: multipart images in, one result per image out."""
    images = {"type": "array", "items": {"type": "string", "format": "binary"}}
    form = {"type": "object", "properties": {"images": images}, "required": ["images"]}
    cam = {
        "name": "cam",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": True},
        "description": "Return the image and its Grad-CAM heat map (false: probabilities only, "
        "faster).",
    }
    return {
        "summary": "Classify one or more images",
        "description": "Upload images as multipart/form-data (field name `images`, repeated). "
        "Images are read in memory and never stored. If any image is refused, the whole request "
        "is, with an error naming the file.",
        "operationId": "predict",
        "parameters": [cam],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
        "responses": {
            "200": _json("One result per image, in upload order.", "PredictResponse"),
            "400": _json("Not multipart, no image, or too many images.", "ErrorResponse"),
            "413": _json(
                "Request too large, or too many pixels (decompression bomb).", "ErrorResponse"
            ),
            "415": _json("A file is not an image skincls reads.", "ErrorResponse"),
            "422": _json(
                "A file is empty, damaged or truncated, or refused (too elongated, NaN pixels).",
                "ErrorResponse",
            ),
        },
    }


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the JSON API (served at /openapi.json)."""
    _, top = models_json_schema(
        [(m, "serialization") for m in (ModelInfo, PredictResponse, ErrorResponse)],
        ref_template="#/components/schemas/{model}",
    )
    get_model = {
        "summary": "The served model: classes, threshold, calibration, metrics, limits",
        "operationId": "getModel",
        "responses": {"200": _json("The model's metadata.", "ModelInfo")},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "skincls serve",
            "version": __version__,
            "description": "Skin-lesion classification of uploaded images with a skincls checkpoint. "
            + NOTICE,
        },
        "paths": {"/api/model": {"get": get_model}, "/api/predict": {"post": _predict_operation()}},
        "components": {"schemas": top["$defs"]},
    }
