"""Shared fixtures: really trained tiny digits models, their exported repository, real servers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from service.config import ServerConfig
from service.transport.server import RunningServer, build_server
from service.vae.v1 import vae_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
"""The team's folder beside a checkout (MNIST files, ghz, grpcurl); tests needing it skip without it."""
SHARED_DATA = SHARED / "data"


def data_dir(dataset: str) -> Path:
    """Where a dataset's IDX files are: data/DATASET in the checkout (where the README says to
    put them), else the team's shared copy; tests needing them skip when neither has them."""
    own = ROOT / "data" / dataset
    return own if own.is_dir() else SHARED_DATA / dataset


SHARED_TOOLS = SHARED / "tools" / "bin"
DIGITS_EPOCHS = 30


def train_digits(out: Path, arch: str = "mlp", epochs: int = DIGITS_EPOCHS, **extra: object) -> Path:
    """Train a digits model with the real CLI code path and return its run folder."""
    from training.config import TrainConfig
    from training.model import ModelConfig
    from training.noise import Noise
    from training.pipeline import fit

    model = ModelConfig(arch=arch, latent_dim=8, hidden_dim=128, channels=8)
    config = TrainConfig(dataset="digits", model=model, epochs=epochs, batch_size=32,
                         noise=Noise.parse("gaussian:0.2"), iwae_samples=16, eval_images=64,
                         out=out, **extra)  # type: ignore[arg-type]
    fit(config)
    return out


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP trained on digits as a denoising VAE (what `make train` makes, smaller)."""
    return train_digits(tmp_path_factory.mktemp("runs") / "digits-mlp")


@pytest.fixture(scope="session")
def digits_conv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conv model on digits, so the conv graphs are exported and served too."""
    return train_digits(tmp_path_factory.mktemp("runs") / "digits-conv", arch="conv", epochs=10)


@pytest.fixture(scope="session")
def digits_subpixel_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MNIST default's architecture and schedule (subpixel, onecycle), small, on digits."""
    return train_digits(tmp_path_factory.mktemp("runs") / "digits-subpixel", arch="subpixel",
                        epochs=5, lr=3e-3, lr_schedule="onecycle")


def publish_run(run: Path, repo: Path, model_name: str = "vae") -> Path:
    from export.publish import publish

    return publish(run, repo, model_name)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory, digits_run: Path,
               digits_conv_run: Path, digits_subpixel_run: Path) -> Path:
    """A repository with models/vae/1 (MLP), models/vae-conv/1 (conv) and
    models/vae-subpixel/1, really exported."""
    repo = tmp_path_factory.mktemp("repo") / "models"
    publish_run(digits_run, repo, "vae")
    publish_run(digits_conv_run, repo, "vae-conv")
    publish_run(digits_subpixel_run, repo, "vae-subpixel")
    return repo


def as_schema_1(folder: Path) -> Path:
    """Rewrite a published version as vae-export wrote it before scorers: schema 1, encoder and
    decoder only, one input name per graph, no outputs key."""
    (folder / "scorer.onnx").unlink()
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("outputs")
    data.update(schema_version=1, inputs={"encoder": "x", "decoder": "z"},
                sha256={name: data["sha256"][name] for name in ("encoder.onnx", "decoder.onnx")})
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


StartServer = Callable[..., Awaitable[RunningServer]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def spawn_server(repo: Path, stderr: int | None = asyncio.subprocess.DEVNULL,
                       **settings: str) -> tuple[asyncio.subprocess.Process, int]:
    """`python -m service.cli` on a free port, metrics off, with VAE_SERVE_* settings."""
    port = free_port()
    env = {**os.environ, "VAE_SERVE_MODEL_REPO": str(repo), "VAE_SERVE_PORT": str(port),
           "VAE_SERVE_METRICS_PORT": "-1",
           **{f"VAE_SERVE_{name.upper()}": value for name, value in settings.items()}}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "service.cli", env=env,
                                                   cwd=ROOT, stderr=stderr)
    return process, port


def server_config(repo: Path, **overrides: object) -> ServerConfig:
    base = ServerConfig(model_repo=repo, port=0, metrics_port=-1, device="cpu", grace_s=2.0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def start_server(model_repo: Path) -> AsyncIterator[StartServer]:
    """Start servers with overridden settings; all are stopped when the test ends."""
    started: list[RunningServer] = []

    async def start(**overrides: object) -> RunningServer:
        running = await build_server(server_config(model_repo, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(1.0)


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server()


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> vae_pb2_grpc.VaeServiceStub:
    return vae_pb2_grpc.VaeServiceStub(channel)
