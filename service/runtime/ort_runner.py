"""The only module that imports onnxruntime: sessions, execution providers, I/O binding."""

from __future__ import annotations

import functools
import logging
import math
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.errors import ModelUnavailable, first_line
from service.plane.repository import GraphError

logger = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def choose_providers(device: str) -> list[str]:
    """auto: CUDA first when this onnxruntime has it; cuda: CUDA or refuse; cpu: CPU."""
    has_cuda = CUDA in available_providers()
    if device == "cuda" and not has_cuda:
        raise ModelUnavailable(
            "--device cuda: this onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available_providers())}); install the gpu extra "
            "(onnxruntime-gpu) on a machine with a GPU, or use --device auto"
        )
    return [CUDA, CPU] if device in ("cuda", "auto") and has_cuda else [CPU]


Signature = dict[str, list[int | str | None]]
"""Tensor name -> dimensions (an int, or a name/None for a dynamic axis)."""


def _open_session(path: Path, providers: list[str], intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning intra-op threads would steal the cores the event loop needs between batches
    # (measured: Encode at concurrency 64 went from 1350 to 2227 requests/s without it).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # ONNX Runtime's errors share no public base class
        reason = first_line(err)
        raise GraphError(f"{path}: ONNX Runtime cannot load this graph ({reason}); "
                         "re-export it with vae-export") from err


def pack_rows(*arrays: np.ndarray) -> np.ndarray:
    """The one batch array a runner of these inputs takes: a single array as it is; several
    (same row count, in the runner's input order) flattened per row and joined along axis 1,
    so the batcher can concatenate and split rows without knowing how many inputs there are."""
    if len(arrays) == 1:
        return arrays[0]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"pack_rows: row counts {[len(a) for a in arrays]} differ")
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1, dtype=np.float32)


def _item_shape(path: Path, name: str, inputs: Signature) -> tuple[int, ...]:
    """The fixed shape of one row of input `name`; packed rows need every axis past 0 fixed."""
    dims = inputs.get(name)
    if dims is None or not all(isinstance(d, int) for d in dims[1:]):
        raise GraphError(f"{path}: input {name!r} has dimensions {dims} (inputs: "
                         f"{sorted(inputs)}); a graph of several inputs needs each named, with "
                         "fixed dimensions past the batch axis: re-export it with vae-export")
    return tuple(int(d) for d in dims[1:] if isinstance(d, int))


class OrtRunner:
    """One InferenceSession; `run` may be called from several threads at once (ORT allows it).

    `run` takes one array: the batch of a one-input graph, or the packed rows (`pack_rows`) of
    a graph of several inputs, which it splits back into `input_names`' item shapes.
    Outputs are fetched by name, in the order of `output_names`, never by graph position.
    On CPU a second, single-threaded session of the same graph (opened only when one of
    them can happen: `serial_below_rows` > 0, or `side_by_side` runs) takes two kinds of batch:
    those of fewer than `serial_below_rows` rows (without spinning, every parallel section
    of a multi-threaded run wakes a sleeping thread, which costs small batches more than
    the threads save) and those that start while another run is in progress (two
    multi-threaded runs side by side would ask for twice the cores there are).
    """

    def __init__(self, path: Path, device: str, intra_op_threads: int, input_names: list[str],
                 output_names: list[str], io_binding: bool | None = None,
                 serial_below_rows: int = 0, side_by_side: bool = False) -> None:
        providers = choose_providers(device)
        self.session = _open_session(path, providers, intra_op_threads)
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != CUDA:
            raise ModelUnavailable(f"--device cuda: CUDA could not be initialised for {path.name} "
                                   f"(got {self.provider}); is a GPU visible to this process?")
        threaded = self.provider == CPU and intra_op_threads != 1
        self.serial_below_rows = serial_below_rows if threaded else 0
        self.serial = (_open_session(path, providers, 1)
                       if threaded and (serial_below_rows or side_by_side) else None)
        self._running = 0
        """Runs in progress (instances > 1 run batches side by side); guarded by _lock."""
        self._lock = threading.Lock()
        self.inputs: Signature = {i.name: list(i.shape) for i in self.session.get_inputs()}
        self.outputs: Signature = {o.name: list(o.shape) for o in self.session.get_outputs()}
        self.path, self.input_names, self.output_names = path, input_names, output_names
        self.io_binding = self.provider == CUDA if io_binding is None else io_binding
        """On by default on CUDA only; on CPU it exists so its code path is tested without a GPU."""

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch; on CUDA through I/O binding so each tensor crosses the bus once."""
        if self.serial is None:  # one session: nothing to choose, nothing to count
            return self._run_on(self.session, batch)
        with self._lock:
            alone = self._running == 0
            self._running += 1
        try:
            session = (self.serial if not alone or len(batch) < self.serial_below_rows
                       else self.session)
            return self._run_on(session, batch)
        finally:
            with self._lock:
                self._running -= 1

    @functools.cached_property
    def _item_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input name -> the shape of one row, to split packed rows; read at the first run, so
        a loader's signature check comes first with its own message."""
        return {name: _item_shape(self.path, name, self.inputs) for name in self.input_names}

    def _feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Input name -> its array: the batch itself, or the packed rows split and reshaped."""
        if len(self.input_names) == 1:
            return {self.input_names[0]: batch}
        sizes = {name: math.prod(shape) for name, shape in self._item_shapes.items()}
        if batch.ndim != 2 or batch.shape[1] != sum(sizes.values()):
            raise ValueError(f"packed rows of {self.input_names} need shape "
                             f"[rows, {sum(sizes.values())}], got {list(batch.shape)}")
        feeds, start = {}, 0
        for name, shape in self._item_shapes.items():
            part = batch[:, start:start + sizes[name]]
            feeds[name] = np.ascontiguousarray(part).reshape(len(batch), *shape)
            start += sizes[name]
        return feeds

    def _run_on(self, session: ort.InferenceSession, batch: np.ndarray) -> list[np.ndarray]:
        feeds = self._feeds(batch)
        if not self.io_binding:
            return list(session.run(self.output_names, feeds))
        binding = session.io_binding()
        device = "cuda" if self.provider == CUDA else "cpu"
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())
