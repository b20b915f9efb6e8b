"""The declared operations as KServe v2 models, and the v2 wire decoding.

Each operation of service/operations/catalog.py is a model `<model name>.<operation>`
(vae.encoder, vae.decoder, vae.sample, vae.denoise, vae.score, vae.interpolate): its
tensors are the declaration's, shaped by the manifest; batched tensors lead with -1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput, NotFound
from service.operations.checks import check_wire_shape
from service.operations.spec import Operation, TensorSpec
from service.plane.repository import MAX_VERSION, Manifest, parse_canonical_version

DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"),
                                   "UINT64": np.dtype("<u8"), "BOOL": np.dtype("?")}
"""v2 datatype -> numpy dtype, little-endian as raw_input_contents are."""
TYPED_CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
                  "BOOL": "bool_contents"}


@dataclass(frozen=True)
class WireTensor:
    """A declared tensor with its shape in numbers for one model."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    """With the batch axis: -1 for a variable size."""
    optional: bool = False


@dataclass(frozen=True)
class V2Model:
    name: str
    operation: Operation
    inputs: tuple[WireTensor, ...]
    outputs: tuple[WireTensor, ...]


def v2_models(manifest: Manifest, operations: tuple[Operation, ...]) -> dict[str, V2Model]:
    """One v2 model per declared operation, `<model name>.<operation>`, shaped by the manifest."""
    def wire(specs: tuple[TensorSpec, ...]) -> tuple[WireTensor, ...]:
        return tuple(WireTensor(s.name, s.datatype, s.shape(manifest), s.optional) for s in specs)

    names = (f"{manifest.model_name}.{op.name}" for op in operations)
    return {name: V2Model(name, op, wire(op.inputs), wire(op.outputs))
            for name, op in zip(names, operations, strict=True)}


def shown(text: str) -> str:
    """A client's string as an error message quotes it: at most about 24 characters."""
    return repr(text) if len(text) <= 24 else f"{text[:20]!r}... ({len(text)} characters)"


def find_model(models: dict[str, V2Model], name: str) -> V2Model:
    if name not in models:
        raise NotFound(f"no model named {shown(name)}; this server has {', '.join(models)}")
    return models[name]


def parse_version(text: str, field: str = "model_version") -> int:
    """'' = the current version; otherwise a version in its canonical spelling."""
    if not text:
        return 0
    version = parse_canonical_version(text)
    if version is None:
        raise InvalidInput(f"{field} {shown(text)} is not a version number; write one in ASCII "
                           f"digits without sign or leading zero (1..{MAX_VERSION}), or leave it "
                           "empty for the current one")
    return version


def _unique(names: list[str], kind: str) -> None:
    """One tensor per name: a repeated name would ask for the same work twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"{kind} {name!r} is named twice; name each {kind} once")
        seen.add(name)


def decode_inputs(model: V2Model, tensors: Sequence[Any], raw: Sequence[bytes]
                  ) -> dict[str, np.ndarray]:
    """Wire tensors (raw_input_contents or typed contents) -> arrays, checked against the specs:
    counts and names first, each shape before its data is read, then one array per input."""
    specs = {spec.name: spec for spec in model.inputs}
    if len(tensors) > len(specs):
        raise InvalidInput(f"{len(tensors)} inputs; {model.name} takes at most {len(specs)}: "
                           f"{', '.join(specs)}")
    if raw and len(raw) != len(tensors):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(tensors)} inputs; send one "
                           "per input, in the order of inputs")
    for tensor in tensors:
        if tensor.name not in specs:
            raise InvalidInput(f"input {shown(tensor.name)} is unknown; {model.name} takes "
                               f"{', '.join(specs)}")
    _unique([tensor.name for tensor in tensors], "input")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name, datatype, spec = tensor.name, tensor.datatype, specs[tensor.name]
        if datatype != spec.datatype:
            raise InvalidInput(f"input {name!r}: datatype {datatype[:24]}; {model.name} takes "
                               f"{spec.datatype}")
        dtype = DTYPES[datatype]
        shape = check_wire_shape(tensor.shape, f"input {name!r}", dtype.itemsize)
        count = math.prod(shape)
        sent = [field.name for field, _ in tensor.contents.ListFields()]
        if raw:
            if sent:
                raise InvalidInput(f"input {name!r} has contents ({sent[0]}) besides "
                                   "raw_input_contents; the protocol forbids mixing them: send "
                                   "every input raw, or every input typed")
            if len(raw[index]) != count * dtype.itemsize:
                raise InvalidInput(f"input {name!r}: {len(raw[index])} bytes; shape "
                                   f"{list(shape)} {datatype} needs {count * dtype.itemsize}")
            array = np.frombuffer(raw[index], dtype=dtype)
        else:
            typed = TYPED_CONTENTS[datatype]
            if any(field != typed for field in sent):
                raise InvalidInput(f"input {name!r}: contents has {sent[0]}; datatype "
                                   f"{datatype} takes {typed}")
            values = getattr(tensor.contents, typed)
            if len(values) != count:
                raise InvalidInput(f"input {name!r}: {len(values)} values in {typed}; shape "
                                   f"{list(shape)} needs {count}")
            array = np.asarray(values, dtype=dtype)
        arrays[name] = array.reshape(shape)
    missing = [s.name for s in model.inputs if not s.optional and s.name not in arrays]
    if missing:
        raise InvalidInput(f"{model.name} needs input {', '.join(missing)}; got "
                           f"{', '.join(arrays) or 'none'}")
    return arrays


def select_outputs(model: V2Model, requested: Sequence[Any]) -> list[WireTensor]:
    """The requested outputs in request order, each at most once, or all when none is named."""
    specs = {spec.name: spec for spec in model.outputs}
    if len(requested) > len(specs):
        raise InvalidInput(f"{len(requested)} outputs requested; {model.name} gives "
                           f"{len(specs)}: {', '.join(specs)}")
    names = [output.name for output in requested]
    unknown = [name for name in names if name not in specs]
    if unknown:
        raise InvalidInput(f"output {shown(unknown[0])} is unknown; {model.name} gives "
                           f"{', '.join(specs)}")
    _unique(names, "output")
    return [specs[name] for name in names] if names else list(model.outputs)


def requested_version(parameters: Mapping[str, Any]) -> int:
    """The version a RepositoryModelLoad asks for: parameter "version", or Triton's config
    JSON {"version_policy": {"specific": {"versions": [N]}}}; 0 = the newest."""
    if "version" in parameters:
        value = parameters["version"]
        kind = value.WhichOneof("parameter_choice")
        text = {"int64_param": str(value.int64_param), "string_param": value.string_param}.get(
            kind or "", "")
        if not text:
            raise InvalidInput(f"parameter version: {kind or 'no value'}; send the version as "
                               "string_param or int64_param, or leave the parameter out for the "
                               "newest")
        return parse_version(text, "parameter version")
    if "config" not in parameters:
        return 0
    try:
        node: Any = json.loads(parameters["config"].string_param)
    except (ValueError, RecursionError) as err:  # RecursionError: nesting too deep to parse
        raise InvalidInput(f"parameter config: not a JSON model config ({err})") from err
    path = "config"
    for key, absent in (("version_policy", {}), ("specific", {}), ("versions", [])):
        if not isinstance(node, dict):
            raise InvalidInput(f"parameter config: {path} is {json.dumps(node)[:24]}, not an "
                               'object; send {"version_policy": {"specific": {"versions": [N]}}}')
        node, path = node.get(key, absent), f"{path}.{key}"
    versions = node
    if not isinstance(versions, list):
        raise InvalidInput(f"parameter config: {path} is "
                           f"{json.dumps(versions)[:24]}; send a list of one version, e.g. [2]")
    if len(versions) > 1:
        raise InvalidInput(f"version_policy names {len(versions)} versions; this server serves "
                           "one version at a time: name one")
    if not versions:
        return 0
    version = versions[0]
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise InvalidInput(f"parameter config: version {json.dumps(version)[:24]} is not a "
                           "version number; send an integer such as 2")
    return parse_version(str(version), "parameter config: version")
