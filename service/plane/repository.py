"""The model repository: versioned folders, the typed manifest, and the sha256 check.

Imports neither torch nor onnx: the serving image reads manifests with this module, and
vae-export writes them with it, so both sides share one schema.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple

logger = logging.getLogger(__name__)
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
"""Schema 1: encoder and decoder only, `inputs` maps a graph to one name; read as schema 2."""
MANIFEST = "manifest.json"
Shape = tuple[int, ...]
Side = Literal["inputs", "outputs"]


class GraphSpec(NamedTuple):
    """One graph of the contract: its file, its tensors (name -> per-row shape, see
    `row_shapes`) in feed order, and whether every version must hold it."""

    file: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    required: bool


GRAPHS = {
    "encoder": GraphSpec("encoder.onnx", {"x": "image"}, {"mean": "latent", "log_var": "latent"},
                         required=True),
    "decoder": GraphSpec("decoder.onnx", {"z": "latent"}, {"x_hat": "image"}, required=True),
    "scorer": GraphSpec("scorer.onnx", {"z": "latent", "x": "image"}, {"log_px_z": "scalar"},
                        required=False),
}
"""The graphs a version may hold; the server fetches outputs by these names, never by position."""
REQUIRED_GRAPHS = tuple(graph for graph, spec in GRAPHS.items() if spec.required)
GRAPH_FILES = {graph: spec.file for graph, spec in GRAPHS.items()}


def tensor_names(graphs: tuple[str, ...] | list[str], side: Side) -> dict[str, list[str]]:
    """Graph -> the contract's input or output names."""
    return {graph: list(getattr(GRAPHS[graph], side)) for graph in graphs}


def row_shapes(graph: str, image_shape: tuple[int, ...], latent_dim: int
               ) -> tuple[dict[str, Shape], dict[str, Shape]]:
    """The per-row shape (past the batch axis) of each input and output of `graph`: an image
    [C, H, W], a latent [latent_dim], or a scalar [] (one number per row)."""
    kinds: dict[str, Shape] = {"image": tuple(image_shape), "latent": (latent_dim,), "scalar": ()}
    spec = GRAPHS[graph]
    return ({name: kinds[kind] for name, kind in spec.inputs.items()},
            {name: kinds[kind] for name, kind in spec.outputs.items()})


@dataclass(frozen=True)
class ModelSignature:
    """What every client of a model relies on; all versions of one model share it."""

    model_name: str
    image_shape: tuple[int, int, int]
    latent_dim: int
    inputs: dict[str, list[str]]
    """Required graph -> its input names."""
    outputs: dict[str, list[str]]
    """Required graph -> its output names."""

    def differences(self, candidate: ModelSignature, this: str) -> list[str]:
        """What `candidate` changes, "FIELD VALUE, `this` has VALUE" each; [] when it may
        replace this one for every client."""
        return [f"{name} {_shown(getattr(candidate, name))}, {this} has {_shown(getattr(self, name))}"
                for name in ("model_name", "image_shape", "latent_dim", "inputs", "outputs")
                if _plain(getattr(candidate, name)) != _plain(getattr(self, name))]


def _plain(value: Any) -> Any:
    """A tuple as a list, so (1, 8, 8) equals [1, 8, 8]; a dict's lists of names compare as
    sorted (outputs are bound by name, not position), and dicts without key order."""
    if isinstance(value, dict):
        return {key: sorted(item) if isinstance(item, list) else item for key, item in value.items()}
    return list(value) if isinstance(value, tuple) else value


def _shown(value: Any) -> str:
    return repr(dict(sorted(value.items())) if isinstance(value, dict) else _plain(value))


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or not of this schema; says which field."""


class IntegrityError(ValueError):
    """A graph whose bytes do not match the sha256 its manifest records."""


class SignatureError(ValueError):
    """A version whose signature differs from the served one: every client would break."""


class GraphError(ValueError):
    """A graph that ONNX Runtime cannot load, or whose tensors disagree with the manifest."""


@dataclass(frozen=True)
class Manifest:
    """What vae-export publishes beside the graphs (docs/model-repository.md)."""

    model_name: str
    version: int
    image_shape: tuple[int, int, int]
    latent_dim: int
    arch: str
    opset: int
    sha256: dict[str, str]
    """Graph file name -> hex sha256 of its bytes."""
    parity: dict[str, Any]
    """Output name -> max abs error against torch; also the tolerances and batch sizes checked."""
    versions: dict[str, str]
    """Library -> version used to export (torch, onnx, onnxruntime)."""
    training: dict[str, Any]
    """Dataset, denoising noise and metrics of the run that produced the weights."""
    created: str
    """UTC, ISO-8601."""
    schema_version: int = SCHEMA_VERSION
    inputs: dict[str, list[str]] = field(
        default_factory=lambda: tensor_names(REQUIRED_GRAPHS, "inputs"))
    """Graph -> its input names."""
    outputs: dict[str, list[str]] = field(
        default_factory=lambda: tensor_names(REQUIRED_GRAPHS, "outputs"))
    """Graph -> its output names."""

    @property
    def graphs(self) -> tuple[str, ...]:
        """The graphs this version holds, in GRAPHS order: the required ones, maybe more."""
        return tuple(graph for graph in GRAPHS if graph in self.outputs)

    @property
    def signature(self) -> ModelSignature:
        """Only the required graphs: a version with a scorer may replace one without it."""
        return ModelSignature(self.model_name, self.image_shape, self.latent_dim,
                              {g: self.inputs[g] for g in REQUIRED_GRAPHS},
                              {g: self.outputs[g] for g in REQUIRED_GRAPHS})

    def to_json(self) -> str:
        data = asdict(self)
        data["image_shape"] = list(self.image_shape)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> Manifest:
        """Validate every field's type; a mismatch raises ManifestError naming the field.
        A schema 1 manifest comes back in schema 2's form."""
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object")
        schema = data.get("schema_version")
        if isinstance(schema, bool) or schema not in READABLE_SCHEMAS:
            raise ManifestError(f"{source}: schema_version is {schema!r}, this reader "
                                f"understands {' and '.join(map(str, READABLE_SCHEMAS))}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ManifestError(f"{source}: unknown key {unknown[0]!r} for schema_version "
                                f"{schema}; a manifest with new keys needs a new "
                                "schema_version (and a server that reads it)")
        expected: dict[str, type | tuple[type, ...]] = {
            "model_name": str, "version": int, "image_shape": list, "latent_dim": int,
            "arch": str, "opset": int, "sha256": dict, "parity": dict, "versions": dict,
            "training": dict, "created": str, "inputs": dict,
        }
        for name, kind in expected.items():
            if not isinstance(data.get(name), kind) or isinstance(data.get(name), bool):
                raise ManifestError(f"{source}: field {name!r} must be {_kind_name(kind)}, "
                                    f"got {data.get(name)!r}")
        shape = data["image_shape"]
        if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise ManifestError(f"{source}: image_shape must be [C, H, W] of positive ints")
        if data["latent_dim"] < 1 or data["version"] < 1:
            raise ManifestError(f"{source}: latent_dim and version must be >= 1")
        inputs, outputs = (_schema_1_names if schema == 1 else _schema_2_names)(data, source)
        files = sorted(GRAPHS[graph].file for graph in outputs)
        if sorted(data["sha256"]) != files:
            raise ManifestError(f"{source}: sha256 must name exactly {files} (the graphs its "
                                f"outputs list), got {sorted(data['sha256'])}")
        return cls(**{**data, "image_shape": (shape[0], shape[1], shape[2]),
                      "schema_version": SCHEMA_VERSION, "inputs": inputs, "outputs": outputs})


def _schema_1_names(data: dict[str, Any], source: str
                    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Schema 1: encoder and decoder, one input name each; outputs absent means the contract's."""
    inputs = data["inputs"]
    if set(inputs) != set(REQUIRED_GRAPHS) or not all(isinstance(n, str) for n in inputs.values()):
        contract = {graph: names[0] for graph, names in tensor_names(REQUIRED_GRAPHS, "inputs").items()}
        raise ManifestError(f"{source}: inputs must map each graph to its input name in "
                            f"schema_version 1: {contract}, got {inputs!r}")
    outputs = data.get("outputs", tensor_names(REQUIRED_GRAPHS, "outputs"))
    return (_checked_names({graph: [name] for graph, name in inputs.items()}, "inputs", source,
                           REQUIRED_GRAPHS),
            _checked_names(outputs, "outputs", source, REQUIRED_GRAPHS))


def _schema_2_names(data: dict[str, Any], source: str
                    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Schema 2: every graph the version holds, the required ones and any optional ones."""
    outputs = _checked_names(data.get("outputs"), "outputs", source, tuple(GRAPHS))
    inputs = _checked_names(data["inputs"], "inputs", source, tuple(GRAPHS))
    if set(inputs) != set(outputs):
        raise ManifestError(f"{source}: inputs lists the graphs {list(inputs)} but outputs "
                            f"{list(outputs)}; each graph needs both: re-export the version "
                            "with vae-export")
    return inputs, outputs


def _checked_names(value: Any, side: Side, source: str, allowed: tuple[str, ...]
                   ) -> dict[str, list[str]]:
    """Graph -> tensor names, each of the contract's once in any order (bound by name), for
    every required graph and perhaps other `allowed` ones; in GRAPHS order."""
    ok = isinstance(value, dict) and set(REQUIRED_GRAPHS) <= set(value) <= set(allowed) and all(
        isinstance(names, list) and all(isinstance(n, str) for n in names)
        and sorted(names) == sorted(getattr(GRAPHS[graph], side)) for graph, names in value.items())
    if not ok:
        optional = [graph for graph in allowed if graph not in REQUIRED_GRAPHS]
        also = f" and optionally {tensor_names(optional, side)}" if optional else ""
        raise ManifestError(f"{source}: {side} must name each graph's {side} once, in any order "
                            f"(bound by name): {tensor_names(REQUIRED_GRAPHS, side)}{also}, "
                            f"got {value!r}")
    return {graph: list(value[graph]) for graph in GRAPHS if graph in value}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return {list: "a list", dict: "an object", str: "a string", int: "an integer"}.get(
        kind if isinstance(kind, type) else list, str(kind))


def read_manifest(version_dir: Path) -> Manifest:
    """Read and validate version_dir/manifest.json."""
    path = version_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ManifestError(f"{path}: no manifest; is {version_dir} a published version?") from err
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ManifestError(f"{path}: not readable UTF-8 JSON ({err})") from err
    return Manifest.from_dict(data, str(path))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_graphs(version_dir: Path, manifest: Manifest) -> None:
    """Refuse a graph whose bytes differ from the manifest: names the file and both hashes."""
    for name, expected in sorted(manifest.sha256.items()):
        path = version_dir / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing; the manifest lists it")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{path}: sha256 {actual} does not match the manifest's {expected}; "
                "the graph was changed after export; re-export it"
            )


def published_versions(repo: Path, model_name: str) -> list[int]:
    """Published versions, ascending: folders named by a canonical version. A dot-folder
    (vae-export's work in progress) is skipped silently, any other folder with one warning."""
    folder = repo / model_name
    if not folder.is_dir():
        return []
    versions = []
    for path in folder.iterdir():
        if not path.is_dir() or path.name.startswith("."):
            continue
        number = parse_canonical_version(path.name)
        if number is not None:
            versions.append(number)
        elif path not in _IGNORED:
            _IGNORED.add(path)
            logger.warning("ignoring %s: not a version folder (versions are 1, 2, 3, ... "
                           "without leading zeros)", path)
    return sorted(versions)


_IGNORED: set[Path] = set()
"""Folders already warned about: one warning per folder and process, not one per rescan."""


def resolve_version(repo: Path, model_name: str, version: int) -> Path:
    """The folder of `version`, or of the newest one when version is 0."""
    versions = published_versions(repo, model_name)
    if not versions:
        raise ManifestError(f"no published version of model {model_name!r} in {repo}; "
                            "export one with vae-export")
    chosen = versions[-1] if version == 0 else version
    if chosen not in versions:
        raise ManifestError(f"model {model_name!r} has no version {version} in {repo}; "
                            f"published: {versions}")
    return repo / model_name / str(chosen)


MAX_VERSION = 2**32 - 1
"""The largest version a vae.v1 response can name (uint32)."""


def parse_canonical_version(text: str) -> int | None:
    """The version `text` names in its one spelling (ASCII digits, no sign, no leading zero,
    1..MAX_VERSION), or None: folder names and requests alike, so "01" never aliases "1"."""
    if not (0 < len(text) <= len(str(MAX_VERSION)) and text.isascii() and text.isdigit()
            and text[0] != "0"):
        return None
    number = int(text)
    return number if number <= MAX_VERSION else None
