"""deploy/kserve/: the ServingRuntime and the InferenceService, against the CRD schemas of a
pinned KServe release (deploy/kserve/schema/), against the server, and against deploy/k8s.

The API server prunes what a CRD's structural schema does not declare instead of rejecting
it, so a misspelt field applies cleanly and is dropped without a word. The validator here is
stricter on purpose: a field that its object does not declare is an error, unless the object
is `x-kubernetes-preserve-unknown-fields` or a map (`additionalProperties`); so is a null
where the schema does not allow one. It covers the OpenAPI v3 subset that structural schemas
use (type, properties, additionalProperties, items, required, enum, anyOf, pattern, length,
bounds, int32, int-or-string, list-map keys and sets); the negative tests prove that it fails.

YAML is read by the interpreter of kubernetes-validate (.venv-tools), as in test_deploy.py.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from service.config import ServerConfig
from service.operations.catalog import OPERATIONS
from service.transport.server import V2_SERVICE_NAME
from tests.deploy.test_deploy import DEPLOY, ROOT, containers, env_names, only, run, tool, yaml_to_json

KSERVE = DEPLOY / "kserve"
SCHEMAS = KSERVE / "schema"
MANIFESTS = {"ServingRuntime": KSERVE / "servingruntime.yaml",
             "InferenceService": KSERVE / "inferenceservice.yaml"}
SCHEMA_FILES = {"ServingRuntime": SCHEMAS / "servingruntime.json",
                "InferenceService": SCHEMAS / "inferenceservice.json"}
KSERVE_RELEASE = ("v0.20.0", "1fb781055dd1567164358233e1125142ca6ef1fe")
DOCS = ROOT / "docs" / "deploy.md"
CONTAINER = "kserve-container"  # the name KServe looks for
MODEL_DIR = "/mnt/models"  # where KServe puts the storageUri's contents
# The settings that differ from deploy/k8s/base/server.env, and why: KServe's gRPC port
# convention, and KServe's model mount.
KSERVE_SETTINGS = {"VAE_SERVE_PORT": "8081", "VAE_SERVE_MODEL_REPO": MODEL_DIR}

Obj = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# The validator


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "integer": _is_int, "number": _is_number,
}
INT32 = (-(2**31), 2**31 - 1)

# The CRDs say only `metadata: {type: object}`; the API server validates ObjectMeta itself.
# This is the part of it that the manifests use, closed like the rest.
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META: Obj = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 253},
                   "namespace": {"type": "string", "pattern": _DNS_SUBDOMAIN, "maxLength": 63},
                   "labels": _STRING_MAP, "annotations": _STRING_MAP},
}


@functools.cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _show(value: Any) -> str:
    """A value for a message; not a whole object."""
    if isinstance(value, dict):
        return "an object"
    return "a list" if isinstance(value, list) else repr(value)


def schema_errors(value: Any, schema: Obj, path: str = "$") -> list[str]:
    """Every way `value` breaks `schema`, one line each, starting with the path of the value."""
    errors: list[str] = []
    _check(value, schema, path, errors)
    return errors


def resource_errors(obj: Obj, crd: Obj) -> list[str]:
    """A whole object against a stored CRD schema file: apiVersion, kind, ObjectMeta, the rest."""
    errors = []
    for key in ("apiVersion", "kind"):
        if obj.get(key) != crd[key]:
            errors.append(f"$.{key}: {obj.get(key)!r}, the schema is for {crd[key]!r}")
    root = crd["openAPIV3Schema"]
    root = {**root, "properties": {**root["properties"], "metadata": OBJECT_META}}
    return errors + schema_errors(obj, root)


def _check(value: Any, schema: Obj, path: str, errors: list[str]) -> None:
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{path}: null, which the schema does not allow (it would be dropped)")
        return
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (_is_int(value) or isinstance(value, str)):
            errors.append(f"{path}: {_show(value)} is neither an integer nor a string")
            return
    elif kind is not None and not TYPES[kind](value):
        errors.append(f"{path}: {_show(value)} is not of type {kind}")
        return
    if "anyOf" in schema and not any(not schema_errors(value, branch, path)
                                     for branch in schema["anyOf"]):
        errors.append(f"{path}: {_show(value)} matches none of {schema['anyOf']}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {_show(value)} is not one of {schema['enum']}")
    if isinstance(value, str):
        _check_string(value, schema, path, errors)
    elif _is_number(value):
        _check_number(value, schema, path, errors)
    if kind == "object":
        _check_object(value, schema, path, errors)
    elif kind == "array":
        _check_array(value, schema, path, errors)


def _check_string(value: str, schema: Obj, path: str, errors: list[str]) -> None:
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
        errors.append(f"{path}: {value!r} is not {schema.get('minLength', 0)}.."
                      f"{schema.get('maxLength', '')} characters long")


def _check_number(value: float, schema: Obj, path: str, errors: list[str]) -> None:
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and (value < low or (schema.get("exclusiveMinimum") and value == low)):
        errors.append(f"{path}: {value!r} is below the minimum {low}")
    if high is not None and (value > high or (schema.get("exclusiveMaximum") and value == high)):
        errors.append(f"{path}: {value!r} is above the maximum {high}")
    if schema.get("format") == "int32" and not INT32[0] <= value <= INT32[1]:
        errors.append(f"{path}: {value!r} does not fit in int32")


def _check_object(value: Obj, schema: Obj, path: str, errors: list[str]) -> None:
    declared = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    open_ = extra is True or schema.get("x-kubernetes-preserve-unknown-fields") is True
    for key, item in value.items():
        where = f"{path}.{key}"
        if key in declared:
            _check(item, declared[key], where, errors)
        elif isinstance(extra, dict):
            _check(item, extra, where, errors)
        elif not open_:
            errors.append(f"{where}: unknown field (the API server would drop it without a word)")
    for key in schema.get("required", []):
        if key not in value:
            errors.append(f"{path}: required field {key!r} is missing")


def _check_array(value: list[Any], schema: Obj, path: str, errors: list[str]) -> None:
    items = schema.get("items", {})
    for index, item in enumerate(value):
        _check(item, items, f"{path}[{index}]", errors)
    if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
        errors.append(f"{path}: {len(value)} items, not {schema.get('minItems', 0)}.."
                      f"{schema.get('maxItems', '')}")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type not in ("map", "set"):
        return
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        if list_type == "map":
            if not isinstance(item, dict):
                continue  # already reported as a type error
            declared = items.get("properties", {})
            key: Any = {k: item.get(k, declared.get(k, {}).get("default"))
                        for k in schema["x-kubernetes-list-map-keys"]}
        else:
            key = item
        text = json.dumps(key, sort_keys=True)
        if text in seen:
            errors.append(f"{path}[{index}]: duplicate of [{seen[text]}] ({list_type} key {text})")
        seen.setdefault(text, index)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def manifests() -> dict[str, Obj]:
    """Each manifest file holds one object, of the kind its schema file is for."""
    result = {}
    for kind, path in MANIFESTS.items():
        objects = yaml_to_json(path.read_text())
        assert len(objects) == 1, f"{path.name}: want one object, found {len(objects)}"
        assert objects[0]["kind"] == kind, path.name
        result[kind] = objects[0]
    return result


@pytest.fixture(scope="module")
def crds() -> dict[str, Obj]:
    return {kind: json.loads(path.read_text()) for kind, path in SCHEMA_FILES.items()}


@pytest.fixture(scope="module")
def k8s_cpu() -> list[Obj]:
    """The cpu overlay of deploy/k8s, rendered by kustomize: what the runtime must match."""
    done = run(tool("kubectl"), "kustomize", str(DEPLOY / "k8s" / "overlays" / "cpu"))
    assert done.returncode == 0, done.stderr
    return yaml_to_json(done.stdout)


def runtime_container(runtime: Obj) -> Obj:
    found = runtime["spec"]["containers"]
    assert [c["name"] for c in found] == [CONTAINER], "want one container, kserve-container"
    container: Obj = found[0]
    return container


def runtime_env(container: Obj) -> dict[str, str]:
    env = container["env"]
    assert all(set(e) == {"name", "value"} for e in env), "plain values only"
    assert len({e["name"] for e in env}) == len(env), "a variable set twice"
    return {e["name"]: e["value"] for e in env}


# ---------------------------------------------------------------------------------------------
# Schemas


def test_layout() -> None:
    """`kubectl apply -f deploy/kserve/` applies the two manifests and nothing else (it does not
    descend into schema/)."""
    applied = {p.name for p in KSERVE.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json")}
    assert applied == {p.name for p in MANIFESTS.values()}
    assert {p.name for p in SCHEMAS.iterdir()} >= {"README.md", "extract.py",
                                                   *(p.name for p in SCHEMA_FILES.values())}


def test_schema_provenance(crds: dict[str, Obj]) -> None:
    """Both schemas come from the pinned release, and the note in schema/README.md says which."""
    tag, commit = KSERVE_RELEASE
    note = (SCHEMAS / "README.md").read_text()
    assert tag in note and commit in note
    for kind, crd in crds.items():
        source = crd["source"]
        assert (source["tag"], source["commit"]) == KSERVE_RELEASE, kind
        assert source["repository"] == "https://github.com/kserve/kserve"
        assert source["path"] in note and re.fullmatch(r"[0-9a-f]{64}", source["sha256"])
        assert crd["kind"] == kind and crd["apiVersion"].startswith("serving.kserve.io/")
        schema = crd["openAPIV3Schema"]
        assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}


@pytest.mark.parametrize("kind", MANIFESTS)
def test_manifest_matches_crd_schema(manifests: dict[str, Obj], crds: dict[str, Obj], kind: str) -> None:
    assert resource_errors(manifests[kind], crds[kind]) == []


Where = tuple[str | int, ...]


def _parent(obj: Obj, path: Where) -> Any:
    node: Any = obj
    for part in path[:-1]:
        node = node[part]
    return node


def _set(path: Where, value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        _parent(obj, path)[path[-1]] = value
    return mutate


def _delete(path: Where) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        del _parent(obj, path)[path[-1]]
    return mutate


def _append(path: Where, value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        _parent(obj, path)[path[-1]].append(value)
    return mutate


def _containers_as_map(obj: Obj) -> None:
    obj["spec"]["containers"] = {c["name"]: c for c in obj["spec"]["containers"]}


MODEL: Where = ("spec", "predictor", "model")
SERVER: Where = ("spec", "containers", 0)
PORT_VALUE: Where = (*SERVER, "env", 4, "value")  # VAE_SERVE_PORT
# (kind, what goes wrong, mutation, the path and words of the one error expected)
BROKEN: list[tuple[str, str, Callable[[Obj], None], str]] = [
    ("InferenceService", "typo in a field name", _set((*MODEL, "protocolVersionz"), "grpc-v2"),
     "$.spec.predictor.model.protocolVersionz: unknown field"),
    ("ServingRuntime", "typo in a field name", _set(("spec", "protocolVersionz"), ["grpc-v2"]),
     "$.spec.protocolVersionz: unknown field"),
    ("ServingRuntime", "typo deep in the container",
     _set((*SERVER, "securityContext", "readOnlyRootFileSystem"), True),
     "$.spec.containers[0].securityContext.readOnlyRootFileSystem: unknown field"),
    ("InferenceService", "typo in metadata", _set(("metadata", "annotation"), {"a": "b"}),
     "$.metadata.annotation: unknown field"),
    ("ServingRuntime", "a field under an object without properties", _set(("status",), {"ready": True}),
     "$.status.ready: unknown field"),
    ("InferenceService", "replicas as a word", _set(("spec", "predictor", "minReplicas"), "two"),
     "$.spec.predictor.minReplicas: 'two' is not of type integer"),
    ("ServingRuntime", "replicas as a word", _set(("spec", "replicas"), "two"),
     "$.spec.replicas: 'two' is not of type integer"),
    ("ServingRuntime", "containers not a list", _containers_as_map,
     "$.spec.containers: an object is not of type array"),
    ("ServingRuntime", "unquoted format version", _set(("spec", "supportedModelFormats", 0, "version"), 1),
     "$.spec.supportedModelFormats[0].version: 1 is not of type string"),
    ("ServingRuntime", "unquoted annotation value", _set(("spec", "annotations", "prometheus.io/port"), 8002),
     "$.spec.annotations.prometheus.io/port: 8002 is not of type string"),
    ("ServingRuntime", "unquoted environment value", _set(PORT_VALUE, 8081),
     "$.spec.containers[0].env[4].value: 8081 is not of type string"),
    ("ServingRuntime", "empty environment value", _set(PORT_VALUE, None),
     "$.spec.containers[0].env[4].value: null"),
    ("ServingRuntime", "a quantity that is not one", _set((*SERVER, "resources", "limits", "memory"), "1 GB"),
     "$.spec.containers[0].resources.limits.memory: '1 GB' does not match"),
    ("ServingRuntime", "a variable set twice",
     _append((*SERVER, "env"), {"name": "VAE_SERVE_PORT", "value": "1"}),
     f"$.spec.containers[0].env[{len(env_names())}]: duplicate of [4] (map key"),
    ("ServingRuntime", "priority below its minimum",
     _set(("spec", "supportedModelFormats", 0, "priority"), 0),
     "$.spec.supportedModelFormats[0].priority: 0 is below the minimum 1"),
    ("ServingRuntime", "missing required: containers", _delete(("spec", "containers")),
     "$.spec: required field 'containers' is missing"),
    ("ServingRuntime", "missing required: a container's name", _delete((*SERVER, "name")),
     "$.spec.containers[0]: required field 'name' is missing"),
    ("InferenceService", "missing required: predictor", _delete(("spec", "predictor")),
     "$.spec: required field 'predictor' is missing"),
    ("InferenceService", "missing required: name", _delete(("metadata", "name")),
     "$.metadata: required field 'name' is missing"),
    ("InferenceService", "an invalid name", _set(("metadata", "name"), "VAE_1"),
     "$.metadata.name: 'VAE_1' does not match"),
    ("InferenceService", "wrong apiVersion", _set(("apiVersion",), "serving.kserve.io/v1alpha1"),
     "$.apiVersion: 'serving.kserve.io/v1alpha1', the schema is for 'serving.kserve.io/v1beta1'"),
]


@pytest.mark.parametrize(("kind", "mutate", "expected"), [(k, m, e) for k, _, m, e in BROKEN],
                         ids=[f"{k}: {why}" for k, why, _, _ in BROKEN])
def test_schema_validation_fails(manifests: dict[str, Obj], crds: dict[str, Obj], kind: str,
                                 mutate: Callable[[Obj], None], expected: str) -> None:
    """Each breakage gives exactly one error, at the place that is wrong."""
    broken = copy.deepcopy(manifests[kind])
    mutate(broken)
    errors = resource_errors(broken, crds[kind])
    assert len(errors) == 1 and expected in errors[0], errors


def test_validator_semantics() -> None:
    """The rules that make it stricter than a JSON-schema validator, and the ones that keep
    it from being stricter than Kubernetes."""
    closed = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert schema_errors({"a": 1}, closed) == []
    assert schema_errors({"b": 1}, closed) == [
        "$.b: unknown field (the API server would drop it without a word)"]
    preserved = {**closed, "x-kubernetes-preserve-unknown-fields": True}
    assert schema_errors({"a": 1, "b": {"anything": [1]}}, preserved) == []
    assert schema_errors({"a": "1"}, preserved) == ["$.a: '1' is not of type integer"]
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    assert schema_errors({"x": "1", "y": "2"}, string_map) == []
    assert schema_errors({"x": 1}, string_map) == ["$.x: 1 is not of type string"]
    int_or_string = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
    assert schema_errors(8081, int_or_string) == [] and schema_errors("h2c", int_or_string) == []
    assert schema_errors(True, int_or_string) == ["$: True is neither an integer nor a string"]
    assert schema_errors(True, {"type": "integer"}) == ["$: True is not of type integer"]
    int32 = {"type": "integer", "format": "int32"}
    assert schema_errors(2**31, int32) == ["$: 2147483648 does not fit in int32"]
    assert schema_errors(None, {"type": "string", "nullable": True}) == []
    ports = {"type": "array", "x-kubernetes-list-type": "map",
             "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
             "items": {"type": "object", "properties": {"containerPort": {"type": "integer"},
                                                        "protocol": {"type": "string", "default": "TCP"}}}}
    assert schema_errors([{"containerPort": 1}, {"containerPort": 1, "protocol": "UDP"}], ports) == []
    assert len(schema_errors([{"containerPort": 1}, {"containerPort": 1, "protocol": "TCP"}], ports)) == 1


# ---------------------------------------------------------------------------------------------
# Agreement with the server and with deploy/k8s


def test_runtime_agrees_with_server(manifests: dict[str, Obj]) -> None:
    runtime = manifests["ServingRuntime"]
    spec = runtime["spec"]
    container = runtime_container(runtime)
    env = runtime_env(container)
    assert set(env) <= env_names(), sorted(set(env) - env_names())
    config = ServerConfig.from_args([], environ=env)  # the values parse as the server reads them

    # One port, named h2c (gRPC for Knative, the ingress and the Service), the server's port.
    assert container["ports"] == [{"name": "h2c", "containerPort": config.port, "protocol": "TCP"}]
    assert (config.host, str(config.model_repo)) == ("0.0.0.0", MODEL_DIR)
    assert not any(m["mountPath"] == MODEL_DIR for m in container.get("volumeMounts", [])), (
        "KServe mounts the model there itself")

    # Readiness on the v2 service the server registers, liveness on the whole server.
    probes = {kind: container[kind]["grpc"] for kind in ("readinessProbe", "livenessProbe")}
    assert all(p["port"] == config.port for p in probes.values())
    assert probes["readinessProbe"]["service"] == V2_SERVICE_NAME
    assert probes["livenessProbe"]["service"] == ""
    # What Knative refuses or handles itself stays out, so the runtime works in both modes.
    assert not {"startupProbe", "lifecycle"} & set(container)

    # Metrics: the annotations name the server's metrics port.
    annotations = spec["annotations"]
    for prefix in ("prometheus.kserve.io", "prometheus.io"):
        assert annotations[f"{prefix}/port"] == str(config.metrics_port)
        assert annotations[f"{prefix}/path"] == "/metrics"

    # gRPC v2 only (no REST server), and the model format the InferenceService asks for.
    assert spec["protocolVersions"] == ["grpc-v2"]
    assert spec["supportedModelFormats"] == [{"name": "vae-onnx", "version": "1", "autoSelect": True}]
    assert not spec.get("multiModel")

    # /tmp writable on a read-only root.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts == {"tmp": "/tmp"} and "emptyDir" in volumes["tmp"]


def test_runtime_agrees_with_k8s(manifests: dict[str, Obj], k8s_cpu: list[Obj]) -> None:
    """The same server as the cpu overlay's Deployment: image, settings (but two), security
    context, resources."""
    container = runtime_container(manifests["ServingRuntime"])
    _, server, _ = containers(k8s_cpu)
    assert container["image"] == server["image"] and container["image"].endswith("-cpu")
    configmap = only(k8s_cpu, "ConfigMap")["data"]
    assert set(KSERVE_SETTINGS) <= set(configmap)
    assert runtime_env(container) == {**configmap, **KSERVE_SETTINGS}
    assert container["securityContext"] == server["securityContext"]
    assert container["resources"] == server["resources"]
    config = ServerConfig.from_args([], environ=runtime_env(container))
    assert config.intra_op_threads == int(container["resources"]["limits"]["cpu"])
    assert config.model_name == ServerConfig.from_args([], environ=configmap).model_name


def test_inferenceservice_uses_runtime(manifests: dict[str, Obj]) -> None:
    runtime, isvc = manifests["ServingRuntime"], manifests["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    formats = {f["name"]: f for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["modelFormat"].get("version", formats[model["modelFormat"]["name"]]["version"]) == (
        formats[model["modelFormat"]["name"]]["version"])
    # KServe merges these ports into the runtime's container by number: the same port, or a
    # second one that Knative refuses.
    assert model["ports"] == runtime_container(runtime)["ports"]
    assert re.fullmatch(r"pvc://[a-z0-9-]+/\S+", model["storageUri"])
    assert not {e["name"] for e in model.get("env", [])} & set(KSERVE_SETTINGS)
    assert predictor["minReplicas"] >= 2 and predictor["maxReplicas"] >= predictor["minReplicas"]
    text = MANIFESTS["InferenceService"].read_text()
    assert "s3://" in text and "gs://" in text  # the object-storage alternatives, commented


def test_docs_section() -> None:
    """docs/deploy.md tells how to apply and call it, with the names the server really uses."""
    docs = DOCS.read_text()
    assert "## Under KServe" in docs
    section = docs.split("## Under KServe", 1)[1].split("\n## ", 1)[0]
    for needed in ("kubectl apply -n", "deploy/kserve/", MODEL_DIR, "tritonclient", "grpc-v2",
                   KSERVE_RELEASE[0], *(f"vae.{op.name}" for op in OPERATIONS)):
        assert needed in section, needed
