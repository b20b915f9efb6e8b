"""One tritonclient infer of any model, in a process of its own (see tritonclient_calls.py).

python -m tests.service.tritonclient_infer PORT MODEL INPUTS.npz OUT_DIR
sends every array of INPUTS.npz as the input of that name (datatype from its dtype) and
writes OUT_DIR/metadata.json (model metadata and config) and OUT_DIR/outputs.npz.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import np_to_triton_dtype


def main(port: str, model: str, inputs_file: str, out: str) -> None:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    metadata = {"metadata": client.get_model_metadata(model, as_json=True),
                "config": client.get_model_config(model, as_json=True)["config"],
                "ready": client.is_model_ready(model)}
    inputs = []
    for name, array in np.load(inputs_file).items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    names = [output["name"] for output in metadata["metadata"]["outputs"]]
    np.savez(Path(out) / "outputs.npz", **{name: result.as_numpy(name) for name in names})
    (Path(out) / "metadata.json").write_text(json.dumps(metadata))


if __name__ == "__main__":
    main(*sys.argv[1:])
