"""Requests read and checked before they join a batch: a bad one is answered alone, by field.

V1 (KServe's ``{"instances": [...]}``): each instance holds an encoded image (``{"image":
{"b64": ...}}``, JPEG or PNG or anything Pillow reads) and optionally a ``target`` (a class id or
an exact class name). V2 (the Open Inference Protocol): an FP32 tensor ``input`` of shape
[B, 3, S, S], preprocessed as the model expects, and optionally an INT64 ``target`` of shape [B]
(-1 for the top-1 class).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..images import as_rgb, size_problem

MAP_FORMATS = ("uint8", "float16", "png", "none")


class BadRequest(ValueError):
    """A 400: the message starts with the field at fault."""


class PayloadTooLarge(ValueError):
    """A 413: the body or an image is over the server's limits."""


@dataclass
class Instance:
    image: torch.Tensor  # (3, S, S) preprocessed
    target: int | None  # None: the top-1 class


@dataclass(frozen=True)
class ResponseOptions:
    map_format: str
    top_k: int


def response_options(parameters, *, default_top_k: int, classes: int, formats=MAP_FORMATS):
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"parameters: expected an object, got {type(parameters).__name__}")
    map_format = parameters.get("map", "uint8")
    if map_format not in formats:
        raise BadRequest(f"parameters.map: one of {list(formats)}, got {map_format!r}")
    top_k = parameters.get("top_k", default_top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= classes:
        raise BadRequest(f"parameters.top_k: an integer from 1 to {classes}, got {top_k!r}")
    return ResponseOptions(map_format, top_k)


def _decode_image(field: str, encoded, max_pixels: int) -> Image.Image:
    if not isinstance(encoded, str):
        raise BadRequest(f"{field}: expected a base64 string, got {type(encoded).__name__}")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"{field}: not valid base64 ({error})") from None
    if not data:
        raise BadRequest(f"{field}: empty image")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        problem = size_problem(width, height, max_pixels)
        if problem is not None:
            flag = " (--max-image-pixels)" if width * height > max_pixels else ""
            raise PayloadTooLarge(f"{field}: {problem}{flag}")
        image.load()
        # Upright, grey and 16-bit scaled, transparency on white: as the CLI reads files.
        return as_rgb(image)
    except PayloadTooLarge:
        raise
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(f"{field}: {error}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        # Pillow names the in-memory file by its address; that says nothing to the client.
        detail = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(error))
        raise BadRequest(
            f"{field}: not an image Pillow can read ({type(error).__name__}: {detail})"
        ) from None


def _target(field: str, value, class_ids: dict[str, int], classes: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in class_ids:
            raise BadRequest(f"{field}: no class named {value!r}")
        return class_ids[value]
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field}: a class id or a class name, got {value!r}")
    if not 0 <= value < classes:
        raise BadRequest(f"{field}: class id {value} is out of range (0 to {classes - 1})")
    return value


def v1_instances(
    payload, *, preprocess, class_names: list[str], max_pixels: int, max_instances: int
) -> list[Instance]:
    """The instances of a V1 body, decoded and preprocessed (run off the event loop)."""
    if not isinstance(payload, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(payload).__name__}")
    instances = payload.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest("instances: expected a non-empty list")
    if len(instances) > max_instances:
        raise PayloadTooLarge(
            f"instances: {len(instances)} in one request, over the limit of {max_instances}"
        )
    class_ids = {name: i for i, name in enumerate(class_names)}
    parsed = []
    for i, instance in enumerate(instances):
        field = f"instances[{i}]"
        if not isinstance(instance, dict):
            raise BadRequest(f"{field}: expected an object with 'image', got {instance!r:.40}")
        image = instance.get("image")
        if not isinstance(image, dict) or "b64" not in image:
            raise BadRequest(f'{field}.image: expected {{"b64": "<base64 JPEG or PNG>"}}')
        unknown = set(instance) - {"image", "target"}
        if unknown:
            raise BadRequest(f"{field}: unknown field {sorted(unknown)[0]!r}")
        target = _target(f"{field}.target", instance.get("target"), class_ids, len(class_names))
        picture = _decode_image(f"{field}.image.b64", image["b64"], max_pixels)
        parsed.append(Instance(preprocess(picture), target))
    return parsed


def v2_instances(request, *, input_size: int, classes: int, max_instances: int) -> list[Instance]:
    """The instances of a V2 ``InferRequest``: its ``input`` tensor split per image."""
    by_name = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name not in ("input", "target"):
            raise BadRequest(f"inputs[{i}].name: 'input' or 'target', got {tensor.name!r}")
        by_name[tensor.name] = (i, tensor)
    if "input" not in by_name:
        raise BadRequest("inputs: no tensor named 'input'")
    i, tensor = by_name["input"]
    if tensor.datatype != "FP32":
        raise BadRequest(f"inputs[{i}].datatype: FP32, got {tensor.datatype}")
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[1:] != [3, input_size, input_size] or shape[0] < 1:
        raise BadRequest(
            f"inputs[{i}].shape: [B, 3, {input_size}, {input_size}] with B >= 1, got {shape}"
        )
    if shape[0] > max_instances:
        raise PayloadTooLarge(
            f"inputs[{i}].shape: {shape[0]} images in one request, over the limit of "
            f"{max_instances}"
        )
    try:
        array = np.asarray(tensor.as_numpy(), dtype=np.float32)
        array = array.reshape(shape)
    except (ValueError, TypeError) as error:
        raise BadRequest(f"inputs[{i}].data: does not hold {math.prod(shape)} FP32 values") from (
            error
        )
    if not np.isfinite(array).all():
        raise BadRequest(f"inputs[{i}].data: holds NaN or infinite values")
    targets: list[int | None] = [None] * shape[0]
    if "target" in by_name:
        j, target = by_name["target"]
        if target.datatype not in ("INT64", "INT32"):
            raise BadRequest(f"inputs[{j}].datatype: INT64, got {target.datatype}")
        if list(target.shape) != [shape[0]]:
            raise BadRequest(f"inputs[{j}].shape: [{shape[0]}], got {list(target.shape)}")
        values = np.asarray(target.as_numpy()).reshape(-1).tolist()
        for k, value in enumerate(values):
            if value == -1:
                continue
            if not 0 <= value < classes:
                raise BadRequest(
                    f"inputs[{j}].data[{k}]: class id {value} is out of range "
                    f"(0 to {classes - 1}, or -1 for the top-1)"
                )
            targets[k] = int(value)
    images = torch.from_numpy(array.copy())  # the request's buffer is not ours to keep
    return [Instance(images[k], targets[k]) for k in range(shape[0])]
