"""Triton Python-backend model: one ONNX graph, one ONNX Runtime run per batch Triton forms.

bench/triton_peer.py copies this file to NAME.GRAPH/1/model.py of the repository it writes,
beside the graph; config.pbtxt names the graph file and the intra-op threads (parameters).
It runs in Triton's backend stub, as .venv-triton-server's interpreter (see triton_peer.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Concatenates the rows of every request in a batch, runs once, splits the outputs back."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters["intra_op_threads"])
        options.inter_op_num_threads = 1
        graph = Path(args["model_repository"]) / args["model_version"] / parameters["graph"]
        self.session = ort.InferenceSession(str(graph), options,
                                            providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        parts = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        values = self.session.run(self.outputs, {self.input: batch})
        bounds = np.cumsum([len(p) for p in parts])[:-1]
        split = [np.split(v, bounds) for v in values]
        return [pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, pieces[i]) for name, pieces in zip(self.outputs, split,
                                                                             strict=True)])
                for i in range(len(requests))]
