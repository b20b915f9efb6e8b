"""OrtRunner: every way it runs a batch (I/O binding, the single-threaded session) gives the
same bytes, here on CPU; outputs are bound by name, in whatever order a manifest lists them;
a graph of several inputs (the scorer) takes packed rows."""

import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from service.fronts.tensors import to_array, to_tensor
from service.runtime.ort_runner import OrtRunner, pack_rows
from service.transport.server import RunningServer, build_server
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import server_config, spawn_server


@pytest.mark.parametrize(("graph", "feed", "outputs"), [
    ("encoder.onnx", "x", ["mean", "log_var"]),
    ("decoder.onnx", "z", ["x_hat"]),
])
def test_io_binding_equals_the_plain_run(model_repo: Path, graph: str, feed: str,
                                         outputs: list[str]) -> None:
    path = model_repo / "vae" / "1" / graph
    shape = (5, 1, 8, 8) if feed == "x" else (5, 8)
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    plain = OrtRunner(path, "cpu", 1, [feed], outputs, io_binding=False).run(batch)
    bound_runner = OrtRunner(path, "cpu", 1, [feed], outputs, io_binding=True)
    assert bound_runner.io_binding
    bound = bound_runner.run(batch)
    assert [a.tobytes() for a in plain] == [b.tobytes() for b in bound]


@pytest.mark.parametrize("model", ["vae", "vae-conv", "vae-subpixel"])
@pytest.mark.parametrize(("graph", "feed", "outputs"), [
    ("encoder.onnx", "x", ["mean", "log_var"]),
    ("decoder.onnx", "z", ["x_hat"]),
])
@pytest.mark.parametrize("rows", [3, 40])
def test_the_single_threaded_session_gives_the_threaded_sessions_bytes(
        model_repo: Path, model: str, graph: str, feed: str, outputs: list[str],
        rows: int) -> None:
    path = model_repo / model / "1" / graph
    threaded = OrtRunner(path, "cpu", 2, [feed], outputs, serial_below_rows=0)
    assert threaded.serial is None  # nothing would ever run on it
    serial = OrtRunner(path, "cpu", 2, [feed], outputs, serial_below_rows=64)
    assert serial.serial is not None
    tail = tuple(d for d in serial.inputs[feed][1:] if isinstance(d, int))
    batch = np.random.default_rng(0).random((rows, *tail), dtype=np.float32)
    expected = threaded.run(batch)
    got = serial.run(batch)
    assert [a.tobytes() for a in got] == [b.tobytes() for b in expected]


def test_a_run_beside_another_takes_the_single_threaded_session(model_repo: Path) -> None:
    """Two multi-threaded runs side by side would ask for twice the cores there are."""
    runner = OrtRunner(model_repo / "vae" / "1" / "decoder.onnx", "cpu", 2, ["z"], ["x_hat"],
                       serial_below_rows=0, side_by_side=True)
    both_running = threading.Barrier(2, timeout=10)
    used: list[bool] = []
    run_on = runner._run_on

    def record(session: object, batch: np.ndarray) -> list[np.ndarray]:
        used.append(session is runner.serial)
        if len(used) <= 2:
            both_running.wait()  # breaks, failing the test, unless the two runs overlap
        return run_on(session, batch)

    runner._run_on = record  # type: ignore[method-assign]
    batch = np.zeros((16, 8), np.float32)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(runner.run, [batch, batch]))
    assert sorted(used) == [False, True]
    assert results[0][0].tobytes() == results[1][0].tobytes()
    runner.run(batch)
    assert used[-1] is False  # alone again: the threaded session


@pytest.mark.parametrize("io_binding", [False, True])
def test_outputs_come_in_the_order_they_are_asked_for(model_repo: Path, io_binding: bool) -> None:
    path = model_repo / "vae" / "1" / "encoder.onnx"
    batch = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    mean, log_var = OrtRunner(path, "cpu", 1, ["x"], ["mean", "log_var"], io_binding).run(batch)
    got = OrtRunner(path, "cpu", 1, ["x"], ["log_var", "mean"], io_binding).run(batch)
    assert [a.tobytes() for a in got] == [log_var.tobytes(), mean.tobytes()]
    assert mean.tobytes() != log_var.tobytes()


async def test_a_manifest_listing_log_var_first_still_answers_mean_as_mean(
        server: RunningServer, model_repo: Path, tmp_path: Path) -> None:
    """The manifest's outputs are names: their order binds nothing."""
    shutil.copytree(model_repo / "vae", tmp_path / "models" / "vae")
    manifest = tmp_path / "models" / "vae" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "outputs": {**data["outputs"],
                                                        "encoder": ["log_var", "mean"]}}))
    reordered = await build_server(server_config(tmp_path / "models"))
    images = to_tensor(np.random.default_rng(1).random((5, 1, 8, 8), dtype=np.float32))
    try:
        answers = []
        for port in (server.port, reordered.port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = vae_pb2_grpc.VaeServiceStub(channel)
                answers.append(await stub.Encode(vae_pb2.EncodeRequest(images=images)))
    finally:
        await reordered.stop(1.0)
    expected, got = answers
    assert to_array(got.mean).tobytes() == to_array(expected.mean).tobytes()
    assert to_array(got.log_var).tobytes() == to_array(expected.log_var).tobytes()


def _scorer_rows(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rows)
    return (rng.standard_normal((rows, 8), dtype=np.float32),
            (rng.random((rows, 1, 8, 8)) > 0.5).astype(np.float32))


@pytest.mark.parametrize("io_binding", [False, True])
@pytest.mark.parametrize("serial_below_rows", [0, 64])
def test_packed_rows_give_the_scorers_own_answer(model_repo: Path, io_binding: bool,
                                                 serial_below_rows: int) -> None:
    path = model_repo / "vae" / "1" / "scorer.onnx"
    z, x = _scorer_rows(5)
    (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["log_px_z"], {"z": z, "x": x})
    runner = OrtRunner(path, "cpu", 2, ["z", "x"], ["log_px_z"], io_binding,
                       serial_below_rows=serial_below_rows)
    (got,) = runner.run(pack_rows(z, x))
    assert got.shape == (5,) and got.tobytes() == expected.tobytes()
    (first_two,) = runner.run(pack_rows(z, x)[:2])  # rows stay rows: a batcher may cut anywhere
    assert first_two.tobytes() == expected[:2].tobytes()


def test_pack_rows_joins_each_rows_inputs_and_passes_one_array_through() -> None:
    z, x = _scorer_rows(3)
    packed = pack_rows(z, x)
    assert packed.shape == (3, 8 + 64) and packed.dtype == np.float32
    assert packed[1].tobytes() == z[1].tobytes() + x[1].tobytes()
    assert pack_rows(x) is x
    with pytest.raises(ValueError, match=r"row counts \[3, 2\] differ"):
        pack_rows(z, x[:2])


def test_packed_rows_of_another_width_are_refused(model_repo: Path) -> None:
    runner = OrtRunner(model_repo / "vae" / "1" / "scorer.onnx", "cpu", 1, ["z", "x"],
                       ["log_px_z"])
    with pytest.raises(ValueError, match=r"need shape \[rows, 72\], got \[3, 71\]"):
        runner.run(np.zeros((3, 71), np.float32))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to confine to one")
async def test_a_server_confined_to_one_core_keeps_every_thread_there(model_repo: Path) -> None:
    """As under taskset or a cpuset: ONNX Runtime's own default pool would pin threads to
    every physical core, so --intra-op-threads 0 must resolve to the allowed cores."""
    allowed = os.sched_getaffinity(0)
    core = min(allowed)
    os.sched_setaffinity(0, {core})  # the server inherits it
    try:
        process, port = await spawn_server(model_repo)
    finally:
        os.sched_setaffinity(0, allowed)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(
                vae_pb2.GetModelInfoRequest(), wait_for_ready=True, timeout=60)
        threads = list(Path(f"/proc/{process.pid}/task").iterdir())
        assert set().union(*(os.sched_getaffinity(int(t.name)) for t in threads)) == {core}
    finally:
        process.terminate()
        await process.wait()
