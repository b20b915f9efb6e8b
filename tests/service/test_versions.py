"""New model versions are taken while traffic flows: zero failed requests, no mixed versions."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from service.fronts.tensors import to_array, to_tensor
from service.operations.draws import prior_latents
from service.transport.server import RunningServer
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer, as_schema_1, server_config, spawn_server
from tests.service.conftest import publish

CLIENTS = 32
POLL_S = 0.1


class Reference:
    """What each version gives for one input, run alone in-process on CPU."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self._sessions: dict[tuple[int, str], ort.InferenceSession] = {}

    def _run(self, version: int, graph: str, feed: np.ndarray) -> list[np.ndarray]:
        key = (version, graph)
        if key not in self._sessions:
            path = self.repo / "vae" / str(version) / f"{graph}.onnx"
            self._sessions[key] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = ["mean", "log_var"] if graph == "encoder" else ["x_hat"]
        return list(self._sessions[key].run(names, {"x" if graph == "encoder" else "z": feed}))

    def expected(self, method: str, version: int, x: np.ndarray, seed: int) -> list[np.ndarray]:
        if method == "Encode":
            return self._run(version, "encoder", x)
        if method == "Decode":
            return self._run(version, "decoder", x)
        if method == "Sample":
            return self._run(version, "decoder", prior_latents(len(x), 8, seed, 1.0))
        return self._run(version, "decoder", self._run(version, "encoder", x)[0])


@dataclass
class Load:
    """CLIENTS concurrent callers mixing all four methods until stopped; every answer kept."""

    stub: vae_pb2_grpc.VaeServiceStub
    images: np.ndarray
    latents: np.ndarray
    answers: list[tuple[str, int, int, list[np.ndarray], int, int]] = field(default_factory=list)
    """(method, first input, rows, outputs, seed, version) of every OK answer."""
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _one(self, method: str, i: int) -> None:
        n = 1 + i % 3
        if method == "Encode":
            r = await self.stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(self.images[i:i + n])))
            outputs, seed = [to_array(r.mean), to_array(r.log_var)], 0
        elif method == "Decode":
            r = await self.stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(self.latents[i:i + n])))
            outputs, seed = [to_array(r.images)], 0
        elif method == "Sample":
            r = await self.stub.Sample(vae_pb2.SampleRequest(count=n, seed=100 + i))
            outputs, seed = [to_array(r.images)], int(r.seed)
        else:
            r = await self.stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(self.images[i:i + n])))
            outputs, seed = [to_array(r.images)], 0
        self.answers.append((method, i, n, outputs, seed, r.version))

    async def _client(self, k: int) -> None:
        methods = ("Encode", "Decode", "Sample", "Denoise")
        calls = 0
        while not self.stop.is_set():
            method, i = methods[(k + calls) % 4], (k * 7 + calls) % 20
            calls += 1
            try:
                await self._one(method, i)
            except grpc.aio.AioRpcError as err:
                self.failures.append(f"{method}: {err.code().name} {err.details()}")

    async def run_until(self, done: Callable[[], Awaitable[None]]) -> None:
        clients = [asyncio.ensure_future(self._client(k)) for k in range(CLIENTS)]
        try:
            await done()
        finally:
            self.stop.set()
            await asyncio.gather(*clients)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_digits

    latents = np.random.default_rng(9).standard_normal((24, 8)).astype(np.float32)
    return np.ascontiguousarray(load_digits().test[:24]), latents


async def _wait_for_version(stub: vae_pb2_grpc.VaeServiceStub, version: int, timeout_s: float = 60
                            ) -> None:
    async with asyncio.timeout(timeout_s):
        while (await stub.GetModelInfo(vae_pb2.GetModelInfoRequest())).version != version:
            await asyncio.sleep(POLL_S)


def _check_answers(load: Load, repo: Path) -> set[int]:
    reference, seen = Reference(repo), set()
    for method, i, n, outputs, seed, version in load.answers:
        x = load.latents[i:i + n] if method == "Decode" else load.images[i:i + n]
        expected = reference.expected(method, version, x, seed)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(outputs, expected, strict=True)), (
            f"{method} item {i} differs from version {version} run alone")
        seen.add(version)
    return seen


async def test_three_new_versions_and_a_tampered_one_under_load(
        start_server: StartServer, live_repo: Path, variant_runs: list[Path]) -> None:
    running = await start_server(model_repo=live_repo, poll_interval_s=POLL_S)
    images, latents = _inputs()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        load = Load(stub, images, latents)

        async def publish_all() -> None:
            for version, run in enumerate(variant_runs, start=2):
                await asyncio.to_thread(publish, run, live_repo, version)
                await _wait_for_version(stub, version)
                await asyncio.sleep(0.3)
            await asyncio.to_thread(publish, variant_runs[0], live_repo, 5, True)
            await asyncio.sleep(20 * POLL_S)

        await load.run_until(publish_all)
        info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest())
    assert load.failures == []
    assert info.version == 4 and running.metrics.model_loads.labels("refused")._value.get() == 1
    assert _check_answers(load, live_repo) == {1, 2, 3, 4}
    denoised = [Reference(live_repo).expected("Denoise", v, images[:1], 0)[0] for v in (1, 2, 3, 4)]
    assert len({d.tobytes() for d in denoised}) == 4  # versions differ, so mixing would show


async def test_a_pinned_version_ignores_new_folders(start_server: StartServer, live_repo: Path,
                                                    variant_runs: list[Path]) -> None:
    running = await start_server(model_repo=live_repo, poll_interval_s=POLL_S, model_version=1)
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    await running.watcher.rescan()
    shutil.rmtree(live_repo / "vae" / "1")
    await running.watcher.rescan()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        answer = await stub.Sample(vae_pb2.SampleRequest(count=2, seed=1))
    assert answer.version == 1 and running.metrics.model_loads.labels("loaded")._value.get() == 0


def _rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


RSS_MARGIN_KIB = 4 * 1024
"""Measured: 20 swaps of the digits model grow the RSS by about 0.6 MiB after the first swap;
keeping every retired version alive instead (sessions never freed) grows it by 11 MiB."""


async def test_sessions_are_freed_after_20_swaps(start_server: StartServer, live_repo: Path,
                                                 variant_runs: list[Path]) -> None:
    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    await running.watcher.rescan()
    hidden = live_repo / "vae" / "hidden-2"
    after_first = 0
    for swap in range(20):
        if swap % 2:
            hidden.rename(live_repo / "vae" / "2")
        else:
            (live_repo / "vae" / "2").rename(hidden)
        await running.watcher.rescan()
        assert running.plane.current.number == (2 if swap % 2 else 1)
        await asyncio.sleep(0.05)  # let the retired version's close task run
        after_first = after_first or _rss_kib()
    assert running.metrics.model_loads.labels("loaded")._value.get() == 21
    grown_kib = _rss_kib() - after_first
    print(f"RSS after 20 swaps: {grown_kib} KiB more than after the first")
    assert grown_kib < RSS_MARGIN_KIB


async def test_sigterm_during_a_swap_drains_and_exits_0(live_repo: Path, variant_runs: list[Path]
                                                         ) -> None:
    staged = await asyncio.to_thread(publish, variant_runs[0], live_repo.parent / "later", 2)
    proc, port = await spawn_server(live_repo, stderr=asyncio.subprocess.PIPE,
                                    max_queue_delay_us="500000", grace_s="5", poll_interval_s="0")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), wait_for_ready=True, timeout=60)
        in_flight = [asyncio.ensure_future(stub.Sample(vae_pb2.SampleRequest(count=2, seed=s)))
                     for s in range(1, 9)]
        await asyncio.sleep(0.2)
        staged.rename(live_repo / "vae" / "2")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        done = await asyncio.gather(*in_flight)
    assert [r.seed for r in done] == list(range(1, 9))
    assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_a_copied_folder_whose_manifest_names_another_version_is_refused(
        start_server: StartServer, live_repo: Path) -> None:
    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    shutil.copytree(live_repo / "vae" / "1", live_repo / "vae" / "7")
    await running.watcher.rescan()
    await running.watcher.rescan()  # not retried while its files are unchanged
    assert running.plane.current.number == 1
    assert running.metrics.model_loads.labels("refused")._value.get() == 1


async def test_v2_repository_load_pins_a_version_and_an_empty_load_follows_the_newest(
        start_server: StartServer, live_repo: Path, variant_runs: list[Path]) -> None:
    from service.config import HeaderCredential
    from service.inference import grpc_service_pb2 as pb
    from service.inference import grpc_service_pb2_grpc as pb_grpc

    admin = HeaderCredential("x-vae-admin", "s3cret")
    running = await start_server(model_repo=live_repo, poll_interval_s=POLL_S,
                                 repository_control=True, repository_control_header=admin)
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        v1, v2 = vae_pb2_grpc.VaeServiceStub(channel), pb_grpc.GRPCInferenceServiceStub(channel)
        await _wait_for_version(v1, 2)
        one = pb.ModelRepositoryParameter(int64_param=1)
        await v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(
            model_name="vae", parameters={"version": one}), metadata=((admin.key, admin.value),))
        await asyncio.sleep(5 * POLL_S)  # polling must not move away from the loaded version
        pinned = (await v1.GetModelInfo(vae_pb2.GetModelInfoRequest())).version
        await v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="vae.decoder"),
                                     metadata=((admin.key, admin.value),))
        index = await v2.RepositoryIndex(pb.RepositoryIndexRequest())
    assert pinned == 1 and running.plane.current.number == 2
    states = {(m.name, m.version): m.state for m in index.models}
    assert states[("vae.decoder", "2")] == "READY" and states[("vae.decoder", "1")] == "UNAVAILABLE"


ODD_FOLDERS = ("²", "002", "-1", "1e3")
"""Names that are not canonical versions: `²` passes str.isdigit, `002` would read as 2."""


async def _rescans(running: RunningServer, polls: int) -> None:
    """Let the server's own watcher loop run `polls` times (it polls every POLL_S)."""
    for _ in range(polls):
        running.watcher.rescan_soon()
        await asyncio.sleep(POLL_S)


async def test_odd_folders_are_ignored_with_one_warning_and_the_watcher_goes_on(
        start_server: StartServer, live_repo: Path, variant_runs: list[Path],
        caplog: pytest.LogCaptureFixture) -> None:
    from service.inference import grpc_service_pb2 as pb
    from service.inference import grpc_service_pb2_grpc as pb_grpc

    running = await start_server(model_repo=live_repo, poll_interval_s=POLL_S)
    for name in ODD_FOLDERS:
        shutil.copytree(live_repo / "vae" / "1", live_repo / "vae" / name)
    await _rescans(running, 3)  # the watcher's own loop meets the odd folders first
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        await _wait_for_version(vae_pb2_grpc.VaeServiceStub(channel), 2)
        index = await pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest())
    restarted = await start_server(model_repo=live_repo)  # and a server starts beside them
    warnings = [r.getMessage() for r in caplog.records if "not a version folder" in r.getMessage()]
    assert restarted.plane.current.number == 2 and {m.version for m in index.models} == {"1", "2"}
    assert sorted(warnings) == sorted(f"ignoring {live_repo / 'vae' / n}: not a version folder "
                                      "(versions are 1, 2, 3, ... without leading zeros)"
                                      for n in ODD_FOLDERS)


async def test_a_failing_rescan_is_logged_counted_and_retried(
        start_server: StartServer, live_repo: Path, variant_runs: list[Path],
        caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server(model_repo=live_repo, poll_interval_s=POLL_S)
    (live_repo / "vae" / "pin.json").write_text("{not json")  # every rescan now raises
    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    await _rescans(running, 3)
    errors = running.metrics.model_loads.labels("error")._value.get()
    served_while_broken = running.plane.current.number
    (live_repo / "vae" / "pin.json").unlink()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        await _wait_for_version(vae_pb2_grpc.VaeServiceStub(channel), 2)
    assert served_while_broken == 1 and errors >= 3
    assert any("rescan of" in r.getMessage() and "pin.json" in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR")


def _tiny_version(folder: Path, version: int, latent: int, runs: bool = True) -> None:
    """A real, loadable version of latent size `latent`: linear graphs, manifest to match;
    with runs=False its decoder gathers a pixel that is not there, which fails only when run."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from service.plane.repository import sha256_file

    def save(name: str, nodes: list[Any], inputs: list[Any], outputs: list[Any],
             weights: list[Any]) -> None:
        graph = helper.make_graph(nodes, name, inputs, outputs, weights)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]),
                  folder / f"{name}.onnx")

    shutil.copytree(folder.parent / "1", folder)
    value = helper.make_tensor_value_info
    save("encoder", [helper.make_node("Flatten", ["x"], ["f"]),
                     helper.make_node("MatMul", ["f", "we"], ["mean"]),
                     helper.make_node("Identity", ["mean"], ["log_var"])],
         [value("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
         [value("mean", TensorProto.FLOAT, ["batch", latent]),
          value("log_var", TensorProto.FLOAT, ["batch", latent])],
         [numpy_helper.from_array(np.zeros((64, latent), np.float32), "we")])
    save("decoder", [helper.make_node("MatMul", ["z", "wd"], ["h"]),
                     helper.make_node("Sigmoid", ["h"], ["s"]),
                     helper.make_node("Gather", ["s", "pixels"], ["p"], axis=1),
                     helper.make_node("Reshape", ["p", "shape"], ["x_hat"])],
         [value("z", TensorProto.FLOAT, ["batch", latent])],
         [value("x_hat", TensorProto.FLOAT, ["batch", 1, 8, 8])],
         [numpy_helper.from_array(np.zeros((latent, 64), np.float32), "wd"),
          numpy_helper.from_array(np.arange(64, dtype=np.int64) + (0 if runs else 1), "pixels"),
          numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "shape")])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(version=version, latent_dim=latent,
                    sha256={n: sha256_file(folder / n) for n in manifest["sha256"]})
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _copied_from_another_model(model_repo: Path) -> Callable[[Path], None]:
    def copy(folder: Path) -> None:
        import json

        shutil.copytree(model_repo / "vae-conv" / "1", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    return copy


@pytest.mark.parametrize(("case", "reason"), [
    ("latent", "latent_dim 5, the served vae/1 has 8"),
    ("model_name", "model_name 'vae-conv', the served vae/1 has 'vae'"),
])
async def test_a_version_with_another_signature_is_refused(
        start_server: StartServer, live_repo: Path, model_repo: Path, case: str,
        reason: str) -> None:
    from service.inference import grpc_service_pb2 as pb
    from service.inference import grpc_service_pb2_grpc as pb_grpc

    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    if case == "latent":
        _tiny_version(live_repo / "vae" / "2", 2, latent=5)
    else:
        _copied_from_another_model(model_repo)(live_repo / "vae" / "2")
    await running.watcher.rescan()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        index = await pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest())
    refused = {m.reason for m in index.models if m.version == "2"}
    assert running.plane.current.number == 1
    assert running.metrics.model_loads.labels("refused")._value.get() == 1
    assert len(refused) == 1 and reason in refused.pop()


async def test_a_version_that_fails_its_warm_up_is_refused_at_start(start_server: StartServer,
                                                                     live_repo: Path) -> None:
    _tiny_version(live_repo / "vae" / "2", 2, latent=8, runs=False)
    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    assert running.plane.current.number == 1
    assert "the warm-up run failed" in running.watcher.refusal(2)


async def test_a_version_listing_its_outputs_in_another_order_is_taken(
        start_server: StartServer, live_repo: Path) -> None:
    import json

    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    folder = shutil.copytree(live_repo / "vae" / "1", live_repo / "vae" / "2")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(version=2, outputs={**manifest["outputs"], "encoder": ["log_var", "mean"]})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    await running.watcher.rescan()
    assert running.plane.current.number == 2, running.watcher.refusal(2)


async def test_a_pin_naming_a_missing_version_follows_model_version(
        start_server: StartServer, live_repo: Path, variant_runs: list[Path]) -> None:
    """As a restarted worker would: every worker of a server then serves the same version."""
    from service.plane.pin import write_pin

    await asyncio.to_thread(publish, variant_runs[0], live_repo, 2)
    write_pin(live_repo, "vae", 1)
    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    assert running.plane.current.number == 1
    shutil.rmtree(live_repo / "vae" / "1")  # the pinned folder is deleted
    await running.watcher.rescan()
    assert running.plane.current.number == 2


def test_every_graph_a_version_holds_is_loaded_checked_and_warmed(model_repo: Path,
                                                                  tmp_path: Path) -> None:
    from service.plane.version import load_graphs
    from service.runtime.ort_runner import pack_rows

    old = as_schema_1(shutil.copytree(model_repo / "vae" / "1", tmp_path / "vae" / "1"))
    assert list(load_graphs(old, server_config(tmp_path)).runners) == ["encoder", "decoder"]
    loaded = load_graphs(model_repo / "vae" / "1", server_config(model_repo))
    assert list(loaded.runners) == ["encoder", "decoder", "scorer"]
    assert loaded.runners["decoder"].input_names == ["z"]
    z = 10 * np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    (log_px_z,) = loaded.runners["scorer"].run(pack_rows(z, np.ones((4, 1, 8, 8), np.float32)))
    assert log_px_z.shape == (4,) and np.all(np.isfinite(log_px_z)) and np.all(log_px_z < 0)


async def test_versions_with_and_without_a_scorer_replace_each_other(
        start_server: StartServer, live_repo: Path, model_repo: Path) -> None:
    import json

    as_schema_1(live_repo / "vae" / "1")
    running = await start_server(model_repo=live_repo, poll_interval_s=0)
    assert running.plane.current.manifest.graphs == ("encoder", "decoder")
    for version, old in ((2, False), (3, True)):
        folder = shutil.copytree(model_repo / "vae" / "1", live_repo / "vae" / str(version))
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
        if old:
            as_schema_1(folder)
        await running.watcher.rescan()
        assert running.plane.current.number == version, running.watcher.refusal(version)
