"""What a stranger installs: public pins only, nothing pinned that we do not need, a client alone."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

DEV_EXTRAS = {"train", "cpu", "server", "dev"}
SERVER_ONLY = ("onnxruntime", "prometheus_client", "grpc_health", "grpc_reflection", "torch", "onnx",
               "sklearn", "scipy", "tqdm")


def _pins() -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines())
    return dict(line.split("==", 1) for line in lines if line)


def _needed(name: str, extras: set[str], seen: set[str]) -> set[str]:
    """Every distribution that `name[extras]` pulls in, from the installed metadata."""
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        marker = requirement.marker or Marker("python_version >= '0'")
        if not any(marker.evaluate({"extra": extra}) for extra in extras | {""}):
            continue
        key = canonicalize_name(requirement.name)
        if key not in seen:
            seen.add(key)
            _needed(requirement.name, set(requirement.extras), seen)
    return seen


def test_constraints_pin_public_versions_only() -> None:
    local = {name: version for name, version in _pins().items() if "+" in version}
    assert not local, f"local version labels are not on the public index: {local}"
    assert all(re.fullmatch(r"[0-9][0-9a-z.]*", version) for version in _pins().values())


def test_constraints_pin_nothing_pyproject_does_not_need() -> None:
    needed = _needed("vae-serve", DEV_EXTRAS, set())
    extra = sorted(name for name in _pins() if canonicalize_name(name) not in needed)
    assert not extra, f"constraints.txt pins packages no extra of pyproject.toml needs: {extra}"
    assert {"torch", "onnxruntime", "grpcio"} <= {canonicalize_name(n) for n in _pins()}


def test_client_runs_without_the_server_packages(tmp_path: Path) -> None:
    blocker = (
        "import sys\n"
        f"class Block:\n    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {SERVER_ONLY!r}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from service.client.cli import main\n"
        "sys.exit(main(['noise', '--in', sys.argv[1], '--out', sys.argv[2]]))\n"
    )
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    done = subprocess.run([sys.executable, "-c", blocker, str(tmp_path / "x.npy"),
                           str(tmp_path / "n.png")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "n.png").is_file()


@pytest.mark.parametrize(("script", "argv"), [
    ("training.cli", ["--epochs", "1"]),
    ("training.cli", ["--help"]),
    ("training.cli", ["evaluate", "runs/digits-mlp"]),
    ("export.cli", ["runs/digits-mlp"]),
    ("export.cli", ["--check", "models/vae/1"]),
])
def test_train_and_export_without_the_train_extra_say_what_to_install(script: str,
                                                                      argv: list[str]) -> None:
    """`pip install .` installs vae-train and vae-export too; there they name the extra."""
    blocker = (
        "import sys\n"
        f"class Block:\n    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {SERVER_ONLY!r}: raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"from {script} import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker, *argv], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "pip install 'vae-serve[train]'" in done.stderr and not done.stdout


def test_base_install_is_the_client() -> None:
    base = {Requirement(r).name for r in metadata.requires("vae-serve") or [] if "extra" not in r}
    assert base == {"numpy", "grpcio", "protobuf"}
