"""The HTTP API's JSON bodies as pydantic models: FastAPI validates requests with them and generates the
OpenAPI schema and the /docs page from them. Fields follow latentserve.v1 (protos/latentserve/v1/latent.proto
documents each; 0 / empty = the server default). Unknown fields are refused (a typo must not be ignored).

Images in: `{"png": "<base64 PNG or JPEG>"}` or `{"array": [[[r, g, b], ...], ...]}` (uint8, H x W x 3).
Images out, per the request's `format`: png / jpeg = base64 strings, array = uint8 H x W x 3 nested lists,
float_array = float32 3 x H x W in [-1, 1]. A request for one image with `Accept: image/png` gets the bytes.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Format = Literal["png", "jpeg", "array", "float_array", "svg"]
Source = Literal["", "prior", "latent_gmm", "guided"]
Method = Literal["lerp", "slerp", "geodesic"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------ pieces
class ImageIn(Strict):
    """One image: set exactly one of `png` and `array`."""

    png: Optional[str] = Field(None, description="base64 PNG or JPEG bytes (a data: URL is accepted too)")
    array: Optional[list] = Field(None, description="uint8 pixels, H x W x 3 nested lists (RGB)")


class ImageOut(BaseModel):
    png: Optional[str] = Field(None, description="base64 PNG (format png)")
    jpeg: Optional[str] = Field(None, description="base64 JPEG (format jpeg)")
    svg: Optional[str] = Field(None, description="an SVG document (format svg: vector models)")
    array: Optional[list] = Field(None, description="uint8 H x W x 3 (format array) or float32 3 x H x W in "
                                                    "[-1, 1] (format float_array)")


class Latent(Strict):
    values: list[float] = Field(description="the latent vector, the model's latent size")
    label: int = Field(description="class label (0-based)")


class Ref(Strict):
    """Where a latent comes from: set exactly one of latent, handle and image."""

    latent: Optional[Latent] = None
    handle: Optional[str] = Field(None, description="a handle issued by this service (return_handles)")
    image: Optional[ImageIn] = Field(None, description="an image to encode")
    label: Optional[int] = Field(None, description="image: the class to encode under (-1 / unset = predicted)")


class RefineOptions(Strict):
    learning_rate: float = 0.0
    feature_weight: float = 0.0


class GuidanceOptions(Strict):
    steps: int = 0
    step_size: float = 0.0
    class_weight: float = 0.0
    noise: float = 0.0
    factor_targets: dict[str, float] = Field(default_factory=dict)
    factor_weight: float = 0.0
    start: Source = ""


class GeodesicOptions(Strict):
    iterations: int = 0
    learning_rate: float = 0.0
    space: Literal["", "pixel", "probe"] = ""
    init: Literal["", "lerp", "slerp"] = ""


class Move(Strict):
    """One knob move: set exactly one of amount (a change) and target (a value), in the knob's units."""

    knob: str
    amount: Optional[float] = None
    target: Optional[float] = None


# ------------------------------------------------------------------------------------------------ requests
class EncodeRequest(Strict):
    images: list[ImageIn]
    version: int = 0
    labels: list[int] = Field(default_factory=list, description="one per image (-1 = predict) or none")
    sample_posterior: bool = False
    seed: int = 0
    refine_steps: int = 0
    refine: RefineOptions = Field(default_factory=RefineOptions)
    return_handles: bool = False


class DecodeRequest(Strict):
    version: int = 0
    latents: list[Latent] = Field(default_factory=list)
    handles: list[str] = Field(default_factory=list)
    format: Format = "png"
    output_size: int = Field(0, description="px (width = height); 0 = the model's native size; vector models: "
                                            "16..1024; texture (sgan) models: the sizes of ModelInfo output_sizes")


class SampleRequest(Strict):
    n: int = 1
    version: int = 0
    label: Optional[int] = Field(None, description="every image of this class (or class_name, or class_weights)")
    class_name: Optional[str] = None
    class_weights: Optional[dict[str, float]] = Field(None, description="labels drawn with these weights")
    knobs: dict[str, float] = Field(default_factory=dict, description="knob name -> target in its units")
    seed: int = Field(0, ge=0, description="same seed and options -> same images; 0 = random")
    temperature: float = 0.0
    source: Source = ""
    format: Format = "png"
    return_handles: bool = False
    guidance: GuidanceOptions = Field(default_factory=GuidanceOptions)
    class_check: float = 0.0
    allow_weak_knobs: bool = False
    hold: list[str] = Field(default_factory=list, description="factors the knobs keep fixed (conditional directions)")
    output_size: int = Field(0, description="px (width = height); 0 = the model's native size; vector models: "
                                            "16..1024; texture (sgan) models: the sizes of ModelInfo output_sizes")
    factor_classes: dict[str, str] = Field(default_factory=dict, description=(
        "class factor -> class on a model whose classes are combinations (e.g. shape, texture); others drawn"))


class InterpolateRequest(Strict):
    a: Ref
    b: Ref
    steps: int
    version: int = 0
    method: Method = "lerp"
    format: Format = "png"
    geodesic: GeodesicOptions = Field(default_factory=GeodesicOptions)
    return_handles: bool = False
    output_size: int = Field(0, description="frame px; 0 = native; another size for texture (sgan) models only")


class EditRequest(Strict):
    inputs: list[Ref]
    moves: list[Move] = Field(default_factory=list)
    version: int = 0
    format: Format = "png"
    allow_weak_knobs: bool = False
    return_handles: bool = False
    hold: list[str] = Field(default_factory=list, description="factors every factor move keeps fixed")
    factor_classes: dict[str, str] = Field(default_factory=dict, description=(
        "class factors set on every input before the moves, latent kept (e.g. swap the texture, keep the shape)"))
    output_size: int = Field(0, description="px (width = height); 0 = the model's native size, as for Decode")


class AugmentRequest(Strict):
    spec: dict[str, Any] = Field(description="the augmentation spec, as in `latentserve augment` YAML files")
    shards: list[int] = Field(default_factory=list, description="shard indices to generate ([] = all)")
    allow_weak_knobs: bool = False


# ------------------------------------------------------------------------------------------------ answers
class LatentOut(BaseModel):
    values: list[float]
    label: int


class RefineReport(BaseModel):
    mse_before: list[float]
    mse_after: list[float]
    steps: int


class EncodeResponse(BaseModel):
    model: str
    version: int
    latents: list[LatentOut]
    label_confidence: list[float] = Field(description="the class head's p(label), when it is trusted; else []")
    refine: Optional[RefineReport] = None
    handles: list[str] = Field(default_factory=list)


class ImagesResponse(BaseModel):
    """Decode (images only), Sample and Edit (with their latents)."""

    model: str
    version: int
    images: list[ImageOut]
    latents: list[LatentOut] = Field(default_factory=list)
    class_confidence: list[float] = Field(default_factory=list)
    handles: list[str] = Field(default_factory=list)


class Frame(BaseModel):
    index: int
    t: float
    image: ImageOut
    latent: LatentOut
    handle: str = ""
    step_distance: float


class InterpolateResponse(BaseModel):
    model: str
    version: int
    frames: list[Frame]
    summary: dict[str, Any] = Field(description="PathSummary: path_length, evenness_cv, lerp_path_length, "
                                                "lerp_evenness_cv, space, iterations")


class ErrorBody(BaseModel):
    code: str = Field(description="the gRPC status name of the same failure (INVALID_ARGUMENT, NOT_FOUND, ...)")
    message: str = Field(description="what was wrong, naming the field, and what is allowed")


class ModelList(BaseModel):
    models: list[dict[str, Any]] = Field(description="ModelInfo of every served model (GET /api/v1/models/{name})")
