"""deploy/: the Kubernetes manifests, the Dockerfiles and the Grafana dashboard.

The checkers are external programs that deploy/tools/install.sh puts in .venv-tools: kubectl
(kustomize built in), kubernetes-validate, checkov and hadolint. A missing one fails the test
under CI (the CI variable set) and skips it elsewhere, naming the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from service.config import ServerConfig, env_name
from service.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILES = (DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.model")
CHECKOV_CONFIG = DEPLOY / "k8s" / ".checkov.yaml"
DASHBOARD = DEPLOY / "grafana" / "vae-serve.json"
OVERLAYS = ("cpu", "gpu", "tls")
# The oldest Kubernetes the manifests support and the newest that kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
TOOL_DIRS = (ROOT / ".venv-tools" / "bin", ROOT / ".venv" / "bin", Path(sys.executable).parent)
READINESS_SERVICE = "vae.v1.VaeService"
TIMEOUT_S = 120

Obj = dict[str, Any]


def tool(name: str) -> str:
    """Path of a checker: .venv-tools, then the project's venv, then PATH."""
    for folder in TOOL_DIRS:
        if (folder / name).is_file() and os.access(folder / name, os.X_OK):
            return str(folder / name)
    found = shutil.which(name)
    if found:
        return found
    reason = f"{name} not found in .venv-tools, .venv or PATH: run deploy/tools/install.sh"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S,
                          cwd=ROOT, check=False)


def yaml_to_json(text: str) -> list[Obj]:
    """YAML documents as JSON objects, by the interpreter of kubernetes-validate (it has PyYAML;
    the project's environment has not)."""
    with open(tool("kubernetes-validate"), "rb") as script:
        python = script.readline().decode().removeprefix("#!").strip()
    done = run(python, "-c", "import json, sys, yaml; "
               "json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)", stdin=text)
    assert done.returncode == 0, done.stderr
    objects: list[Obj] = json.loads(done.stdout)
    return objects


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Obj]]]:
    """Each overlay rendered by kustomize: (the YAML file, its objects)."""
    kubectl = tool("kubectl")
    out = tmp_path_factory.mktemp("rendered")
    result = {}
    for overlay in OVERLAYS:
        done = run(kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay))
        assert done.returncode == 0, f"kustomize {overlay}: {done.stderr}"
        path = out / f"{overlay}.yaml"
        path.write_text(done.stdout)
        result[overlay] = (path, yaml_to_json(done.stdout))
    return result


def only(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(objects: list[Obj]) -> tuple[Obj, Obj, Obj]:
    """(pod spec, server container, init container) of the Deployment."""
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "vae-serve")
    init = next(c for c in pod["initContainers"] if c["name"] == "model")
    return pod, server, init


def server_config(objects: list[Obj]) -> ServerConfig:
    """The ServerConfig the pod gets: the ConfigMap's variables read as the server reads them."""
    return ServerConfig.from_args([], environ=only(objects, "ConfigMap")["data"])


def test_overlays_render(rendered: dict[str, tuple[Path, list[Obj]]]) -> None:
    want = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "NetworkPolicy", "PodMonitor"}
    for overlay, (_, objects) in rendered.items():
        assert {o["kind"] for o in objects} == want, overlay
        assert all(o["metadata"].get("namespace") == "vae-serve" for o in objects if o["kind"] != "Namespace")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict(rendered: dict[str, tuple[Path, list[Obj]]], version: str,
                                   tmp_path: Path) -> None:
    """Built-in kinds against the API schemas, strictly (no unknown fields); any WARN fails.

    kubernetes-validate has no schema for the PodMonitor CRD: test_agreement checks that one.
    """
    validate = tool("kubernetes-validate")
    files = []
    for overlay, (_, objects) in rendered.items():
        builtin = [o for o in objects if not o["apiVersion"].startswith("monitoring.coreos.com/")]
        assert len(objects) - len(builtin) == 1
        path = tmp_path / f"{overlay}.json"
        path.write_text("\n---\n".join(json.dumps(o) for o in builtin))  # JSON is YAML
        files.append(str(path))
    done = run(validate, "--strict", "--kubernetes-version", version, *files)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARN" not in output and "ERROR" not in output, output
    assert output.count("passed") == sum(len(o) - 1 for _, o in rendered.values()), output


def test_checkov(rendered: dict[str, tuple[Path, list[Obj]]]) -> None:
    """checkov on both rendered overlays and both Dockerfiles, offline, skips from one file."""
    checkov = tool("checkov")
    files = [str(path) for path, _ in rendered.values()] + [str(p) for p in DOCKERFILES]
    args = [checkov, "--config-file", str(CHECKOV_CONFIG), "--skip-download", "--framework",
            "kubernetes", "dockerfile"]
    for file in files:
        args += ["-f", file]
    done = run(*args)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    results = re.findall(r"Passed checks: (\d+), Failed checks: (\d+)", output)
    assert len(results) == 2 and all(int(p) > 50 and f == "0" for p, f in results), output


def test_checkov_skips_are_justified() -> None:
    """Every skipped check is named in .checkov.yaml with the reason on its line."""
    lines = CHECKOV_CONFIG.read_text().splitlines()
    start = lines.index("skip-check:")
    skips = [line for line in lines[start + 1:] if line.startswith("  - ")]
    assert skips
    for line in skips:
        assert re.fullmatch(r"  - CKV2?_[A-Z0-9]+_\d+  # .{40,}", line), line


def test_hadolint() -> None:
    hadolint = tool("hadolint")
    done = run(hadolint, "--no-color", *map(str, DOCKERFILES))
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_base_images_pinned() -> None:
    """Base images are ARGs (checkov cannot read them): exact tags, never latest."""
    for dockerfile in DOCKERFILES:
        images = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", dockerfile.read_text(), re.MULTILINE))
        assert images, dockerfile
        for arg, image in images.items():
            name, _, digest = image.partition("@")
            tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
            assert re.fullmatch(r"[\w.-]*\d+\.\d+[\w.-]*", tag), f"{arg}: {image} has no exact tag"
            assert "latest" not in tag
            if arg in ("PYTHON_IMAGE", "BASE_IMAGE"):
                assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{arg}: {image} has no digest"


def env_names() -> set[str]:
    return {env_name(f.name) for f in fields(ServerConfig)}


def test_server_env_sets_every_setting() -> None:
    """deploy.md says the ConfigMap holds every VAE_SERVE_* variable: one line per field."""
    lines = (ROOT / "deploy" / "k8s" / "base" / "server.env").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line.strip()]
    assert sorted(names) == sorted(env_names()), "add the missing settings to server.env"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_agreement(rendered: dict[str, tuple[Path, list[Obj]]], overlay: str) -> None:
    """The manifests agree with the server: ports, health names, variables, metrics."""
    _, objects = rendered[overlay]
    pod, server, init = containers(objects)
    defaults = ServerConfig()
    config = server_config(objects)  # the ConfigMap's values are valid for the server

    # Ports: named grpc/metrics (and health with TLS), the server's defaults, and what the
    # ConfigMap sets.
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    health = {"health": defaults.health_port} if config.tls else {}
    assert ports == {"grpc": defaults.port, "metrics": defaults.metrics_port, **health}
    assert config.health_port == defaults.health_port
    assert (config.port, config.metrics_port) == (defaults.port, defaults.metrics_port)
    assert config.host == "0.0.0.0" and str(config.model_repo) == "/models"

    # Native gRPC probes on the gRPC port (with TLS, the plaintext health-only port); readiness
    # asks for the VaeService.
    probes = {kind: server[kind]["grpc"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(p["port"] == (config.health_port if config.tls else defaults.port) for p in probes.values())
    assert probes["readinessProbe"]["service"] == READINESS_SERVICE
    assert probes["startupProbe"].get("service", "") in ("", READINESS_SERVICE)
    assert probes["livenessProbe"].get("service", "") in ("", READINESS_SERVICE)

    # Every VAE_SERVE_* name in the ConfigMap and the Deployment is a ServerConfig field.
    configmap = only(objects, "ConfigMap")
    names = set(configmap["data"]) | {e["name"] for c in (server, init) for e in c.get("env", [])}
    assert {n for n in names if n.startswith("VAE_SERVE_")} <= env_names()
    assert server["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]

    # Stop: the server's own pre-stop delay (no preStop hook holding back SIGTERM, which would
    # keep health SERVING), then its grace, within the pod's termination grace.
    assert config.drain_delay_s > 0 and "lifecycle" not in server
    assert pod["terminationGracePeriodSeconds"] > config.drain_delay_s + config.grace_s

    # The model repository: written by the init container, read-only for the server.
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["models"]["mountPath"] == str(config.model_repo) and mounts["models"]["readOnly"]
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert [m["mountPath"] for m in init["volumeMounts"] if m["name"] == "models"] == ["/models"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["models"] and "emptyDir" in volumes["tmp"]

    # TLS: the ConfigMap's paths lie in the read-only Secret mount (no subPath: it never updates).
    if config.tls:
        folder = Path(mounts["tls"]["mountPath"])
        assert mounts["tls"]["readOnly"] and "subPath" not in mounts["tls"]
        assert {config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file} == {
            folder / "tls.crt", folder / "tls.key", folder / "ca.crt"}
        assert volumes["tls"]["secret"]["secretName"] == "vae-serve-tls"

    # Hardening, pod and containers.
    assert pod["automountServiceAccountToken"] is False
    assert only(objects, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    for container in (server, init):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(
            container["resources"]["limits"])
        image = container["image"]
        assert "@sha256:" in image or re.search(r":[\w.-]+$", image.rsplit("/", 1)[-1]), image
        assert not image.endswith(":latest")

    # Selectors reach the pods; Services and the NetworkPolicy use the named ports.
    labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selects = [only(objects, "Deployment")["spec"]["selector"]["matchLabels"],
               only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
               only(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
               only(objects, "PodMonitor")["spec"]["selector"]["matchLabels"],
               *(s["spec"]["selector"] for s in objects if s["kind"] == "Service")]
    assert all(s.items() <= labels.items() for s in selects)
    services = {s["metadata"]["name"]: s["spec"] for s in objects if s["kind"] == "Service"}
    assert services["vae-serve-headless"]["clusterIP"] == "None"
    for spec in services.values():
        assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(defaults.port, "grpc")]
    rules = only(objects, "NetworkPolicy")["spec"]["ingress"]
    assert sorted(p["port"] for rule in rules for p in rule["ports"]) == ["grpc", "metrics"]
    assert only(objects, "NetworkPolicy")["spec"]["egress"] == []

    # Metrics: the PodMonitor scrapes the named port; the HPA's pods metric is exported.
    monitor = only(objects, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]] == [
        ("metrics", "/metrics")]
    hpa = only(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == only(objects, "Deployment")["metadata"]["name"]
    custom = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert custom == ["vae_queue_rows"] and set(custom) <= set(METRIC_NAMES)
    assert hpa["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, a drain keeps one serving
    assert only(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_overlay_differences(rendered: dict[str, tuple[Path, list[Obj]]]) -> None:
    gpu, cpu = rendered["gpu"][1], rendered["cpu"][1]
    assert server_config(gpu).device == "cuda" and server_config(cpu).device == "cpu"
    _, gpu_server, _ = containers(gpu)
    gpu_pod = only(gpu, "Deployment")["spec"]["template"]["spec"]
    assert gpu_server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_server["image"].endswith("-cuda")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    cpu_pod, cpu_server, _ = containers(cpu)
    assert "nvidia.com/gpu" not in json.dumps(cpu_pod)
    assert cpu_server["image"].endswith("-cpu")


def instructions(text: str) -> list[str]:
    """A Dockerfile's instructions: continuation lines joined, comments and blank lines dropped."""
    lines = (line.strip() for line in re.sub(r"\\\n", " ", text).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def dockerfile_stages(text: str) -> dict[str, list[str]]:
    """Instructions of each named stage."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in instructions(text):
        match = re.match(r"FROM \S+ AS (\S+)", line)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def test_dockerfile_agreement(rendered: dict[str, tuple[Path, list[Obj]]]) -> None:
    """Both runtime targets: the server's ports, in-container settings, user and entry point."""
    stages = dockerfile_stages(DOCKERFILES[0].read_text())
    defaults = ServerConfig()
    _, server, _ = containers(rendered["cpu"][1])
    run_as = f"{server['securityContext']['runAsUser']}:{server['securityContext']['runAsGroup']}"
    for target in ("cpu", "cuda"):
        lines = stages[target]
        assert f"EXPOSE {defaults.port} {defaults.metrics_port}" in lines
        env = " ".join(line for line in lines if line.startswith("ENV "))
        assert "VAE_SERVE_HOST=0.0.0.0" in env and "VAE_SERVE_MODEL_REPO=/models" in env
        assert set(re.findall(r"\bVAE_SERVE_\w+", env)) <= env_names()
        user = next(line for line in lines if line.startswith("USER "))
        assert user == f"USER {run_as}"
        assert lines[-1] == 'ENTRYPOINT ["vae-serve"]'
        assert not any("torch" in line for line in lines)
    assert list(stages)[-1] == "cpu"  # a build without --target gives the CPU image
    # No packaging tools in a runtime image (scanners flag their old versions): the venv's
    # go in the builders, the base's own and ensurepip with its wheels (the official python
    # image's under /usr/local, Debian's under /usr) in the cpu runtime.
    for stage in ("cpu-builder", "cuda-builder", "cpu"):
        text = " ".join(stages[stage])
        assert re.search(r"pip uninstall --yes --quiet setuptools wheel pip", text), stage
    assert ("rm -rf /usr/local/lib/python3.*/ensurepip /usr/lib/python3.*/ensurepip /usr/share/python-wheels"
            in " ".join(stages["cpu"]))
    model = DOCKERFILES[1].read_text()
    assert re.search(r"^USER 10001:10001$", model, re.MULTILINE)
    assert 'ENTRYPOINT ["cp", "-R", "-v", "/models-src/.", "/models/"]' in model


# What a RUN may call: commands that every base has (the official python image, a Debian base
# with only the python3 and python3-venv packages, which deploy/smoke.sh makes where the pull
# fails, and the CUDA base with python3 from apt), and the venv that a builder makes. Not
# `python` or `pip`: only the official python image has those.
BASE_COMMANDS = {"apt-get", "chmod", "find", "groupadd", "mkdir", "rm", "test", "useradd",
                 "python3 -c", "python3 -m venv", "/opt/venv/bin/pip", "/opt/venv/bin/python"}
# The base's own pip, where it has one, is called only behind this probe.
BASE_PIP = re.compile(r"if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip uninstall [^;]*; fi")


def run_commands(instruction: str) -> list[str]:
    """The commands a RUN calls: the first word after each shell separator, with the option of
    `python3 -c` and `python3 -m <module>`; quoted arguments dropped, `$(command)` kept."""
    script = BASE_PIP.sub("", instruction.removeprefix("RUN "))
    script = re.sub(r"'[^']*'", "''", re.sub(r'"(?:[^"$]|\$(?!\())*"', '""', script))
    commands = []
    for part in re.split(r"&&|\|\||[;|]|\$\(|\b(?:if|then|else|fi)\b", script):
        words = part.split()
        if words:
            length = 3 if words[:2] == ["python3", "-m"] else 2 if words[0] == "python3" else 1
            commands.append(" ".join(words[:length]))
    return commands


@pytest.mark.parametrize(("instruction", "want"), [
    ("RUN python -m pip uninstall --yes pip && rm -rf /x", ["python", "rm"]),
    ("RUN python3 -m pip uninstall --yes pip", ["python3 -m pip"]),
    ("RUN pip install x || true", ["pip", "true"]),
    ("RUN if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip uninstall --yes pip; fi"
     " && mkdir /m", ["mkdir"]),
    ("RUN python3 -c \"import a; b('c')\" && test -n \"$(find /m -name x)\"", ["python3 -c", "test", "find"]),
])
def test_run_commands(instruction: str, want: list[str]) -> None:
    assert run_commands(instruction) == want


def test_dockerfile_runs_on_every_base() -> None:
    """Every RUN calls only what each base has: `python3`, never `python`, and the base's pip
    only behind a probe (the debootstrap base has neither: `python` there is exit 127)."""
    for dockerfile in DOCKERFILES:
        runs = [line for line in instructions(dockerfile.read_text()) if line.startswith("RUN ")]
        assert runs, dockerfile
        for instruction in runs:
            unknown = set(run_commands(instruction)) - BASE_COMMANDS
            assert not unknown, f"{dockerfile.name} calls {sorted(unknown)}: {instruction}"


def exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def exported(name: str) -> bool:
    """Whether a series name is one the server exports: a METRIC_NAMES entry, or a histogram's
    _bucket/_sum/_count or a counter's _total of one (METRIC_NAMES may spell counters either way)."""
    bases = {m.removesuffix("_total") for m in METRIC_NAMES}
    for suffix in ("", "_bucket", "_sum", "_count", "_total"):
        if name.endswith(suffix) and name.removesuffix(suffix).removesuffix("_total") in bases:
            return True
    return False


def test_dashboard_metrics() -> None:
    """Every series the Grafana dashboard queries is a metric the server exports."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = list(exprs(dashboard["panels"]))
    assert len(queries) >= 8
    referenced = {name for q in queries for name in re.findall(r"\bvae_[a-z_]+", q)}
    unknown = sorted(name for name in referenced if not exported(name))
    assert not unknown, f"not exported by the server: {unknown}"
    text = "\n".join(queries)
    assert "histogram_quantile(0.5" in text and "histogram_quantile(0.99" in text
    assert "vae_batch_rows_sum" in text and "vae_batch_rows_count" in text
    for needed in ("vae_requests_total", "vae_queue_rows", "vae_inflight_requests", "vae_items_total"):
        assert needed in text, needed
    score = next(p for p in dashboard["panels"] if p["title"] == "Anomaly score quantiles")
    assert [t["expr"].split(",", 1)[0] for t in score["targets"]] == [
        f"histogram_quantile({q}" for q in ("0.1", "0.5", "0.9")]
    for target in score["targets"]:
        assert "sum by (le, version, bound) (rate(vae_score_nats_bucket{" in target["expr"]
        assert "{{version}}" in target["legendFormat"] and "{{bound}}" in target["legendFormat"]
