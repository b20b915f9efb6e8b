"""The VAE's operations as KServe v2 models: names, tensors, datatypes, and the wire decoding.

`vae.encoder` x -> mean, log_var; `vae.decoder` z -> x_hat; `vae.denoise` x -> x_hat;
`vae.sample` count, [seed], [temperature] -> x_hat, z, seed ("vae" is --model-name).
Shapes follow ModelMetadata: batched tensors lead with -1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput, NotFound
from service.repository import Manifest

DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"),
                                   "UINT64": np.dtype("<u8")}
"""v2 datatype -> numpy dtype, little-endian as raw_input_contents are."""
TYPED_CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "UINT64": "uint64_contents"}
OPERATIONS = ("encoder", "decoder", "sample", "denoise")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """With the batch axis: -1 for a variable size."""
    optional: bool = False


@dataclass(frozen=True)
class V2Model:
    name: str
    operation: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool


def v2_models(manifest: Manifest) -> dict[str, V2Model]:
    """The four models of one repository model, shaped by its manifest."""
    image = (-1, *manifest.image_shape)
    latent = (-1, manifest.latent_dim)
    x, z, x_hat = (TensorSpec("x", "FP32", image), TensorSpec("z", "FP32", latent),
                   TensorSpec("x_hat", "FP32", image))
    scalar = (1,)
    models = [
        V2Model("encoder", "encoder", (x,), (TensorSpec("mean", "FP32", latent),
                                             TensorSpec("log_var", "FP32", latent)), True),
        V2Model("decoder", "decoder", (z,), (x_hat,), True),
        V2Model("sample", "sample", (TensorSpec("count", "INT64", scalar),
                                     TensorSpec("seed", "UINT64", scalar, optional=True),
                                     TensorSpec("temperature", "FP32", scalar, optional=True)),
                (x_hat, z, TensorSpec("seed", "UINT64", scalar)), False),
        V2Model("denoise", "denoise", (x,), (x_hat,), True),
    ]
    prefix = manifest.model_name
    return {f"{prefix}.{m.name}": V2Model(f"{prefix}.{m.name}", m.operation, m.inputs, m.outputs,
                                          m.batched) for m in models}


def find_model(models: dict[str, V2Model], name: str) -> V2Model:
    if name not in models:
        raise NotFound(f"no model named {name!r}; this server has {', '.join(models)}")
    return models[name]


def parse_version(text: str) -> int:
    """'' = the current version; otherwise a positive integer."""
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"model_version {text!r} is not a version number; leave it empty for "
                           "the current one")
    return int(text)


def decode_inputs(model: V2Model, tensors: Sequence[object], raw: Sequence[bytes]
                  ) -> dict[str, np.ndarray]:
    """Wire tensors (raw_input_contents or typed contents) -> arrays, checked against the specs."""
    specs = {spec.name: spec for spec in model.inputs}
    if raw and len(raw) != len(tensors):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(tensors)} inputs; send one "
                           "per input, in the order of inputs")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name, datatype = tensor.name, tensor.datatype  # type: ignore[attr-defined]
        shape = tuple(int(v) for v in tensor.shape)  # type: ignore[attr-defined]
        if name not in specs:
            raise InvalidInput(f"input {name!r} is unknown; {model.name} takes "
                               f"{', '.join(specs)}")
        spec = specs[name]
        if datatype != spec.datatype:
            raise InvalidInput(f"input {name!r}: datatype {datatype}; {model.name} takes "
                               f"{spec.datatype}")
        if not shape or min(shape) < 0:
            raise InvalidInput(f"input {name!r}: shape {list(shape)} is not a tensor shape; "
                               f"expected {list(spec.shape)}")
        dtype, count = DTYPES[datatype], math.prod(shape)
        if raw:
            if len(raw[index]) != count * dtype.itemsize:
                raise InvalidInput(f"input {name!r}: {len(raw[index])} bytes; shape "
                                   f"{list(shape)} {datatype} needs {count * dtype.itemsize}")
            array = np.frombuffer(raw[index], dtype=dtype)
        else:
            values = getattr(tensor.contents, TYPED_CONTENTS[datatype])  # type: ignore[attr-defined]
            if len(values) != count:
                raise InvalidInput(f"input {name!r}: {len(values)} values in "
                                   f"{TYPED_CONTENTS[datatype]}; shape {list(shape)} needs {count}")
            array = np.asarray(values, dtype=dtype)
        arrays[name] = array.reshape(shape)
    missing = [s.name for s in model.inputs if not s.optional and s.name not in arrays]
    if missing:
        raise InvalidInput(f"{model.name} needs input {', '.join(missing)}; got "
                           f"{', '.join(arrays) or 'none'}")
    return arrays


def scalar(arrays: dict[str, np.ndarray], name: str, default: float) -> float:
    """A [1] (or []) input as a Python number; `default` when it was not sent."""
    if name not in arrays:
        return default
    if arrays[name].size != 1:
        raise InvalidInput(f"input {name!r}: shape {list(arrays[name].shape)}; send one value, "
                           "shape [1]")
    return arrays[name].reshape(-1)[0].item()  # type: ignore[no-any-return]


def select_outputs(model: V2Model, requested: Sequence[str]) -> list[TensorSpec]:
    """The requested outputs in request order, or all of them when none is named."""
    specs = {spec.name: spec for spec in model.outputs}
    unknown = [name for name in requested if name not in specs]
    if unknown:
        raise InvalidInput(f"output {unknown[0]!r} is unknown; {model.name} gives "
                           f"{', '.join(specs)}")
    return [specs[name] for name in requested] if requested else list(model.outputs)


def requested_version(parameters: Mapping[str, Any]) -> int:
    """The version a RepositoryModelLoad asks for: parameter "version", or Triton's config
    JSON {"version_policy": {"specific": {"versions": [N]}}}; 0 = the newest."""
    if "version" in parameters:
        value = parameters["version"]
        return parse_version(value.string_param or str(value.int64_param))
    if "config" not in parameters:
        return 0
    try:
        policy = json.loads(parameters["config"].string_param).get("version_policy", {})
        versions = policy.get("specific", {}).get("versions", [])
    except (ValueError, AttributeError) as err:
        raise InvalidInput(f"parameter config: not a JSON model config ({err})") from err
    if len(versions) > 1:
        raise InvalidInput(f"version_policy names {len(versions)} versions; this server serves "
                           "one version at a time: name one")
    return parse_version(str(versions[0])) if versions else 0
