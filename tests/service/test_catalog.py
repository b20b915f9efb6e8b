"""Operations declared once: a new declaration is a new v2 model with no front code changed."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from service.config import ServerConfig
from service.context import RequestContext
from service.operations.catalog import OPERATIONS
from service.operations.codec import IMAGES
from service.operations.spec import BATCH, Inputs, Operation, Outputs, TensorSpec
from service.plane.version import ModelVersion
from service.transport.server import build_server
from tests.conftest import ROOT, server_config


async def _code_norms(version: ModelVersion, inputs: Inputs, context: RequestContext,
                      config: ServerConfig) -> Outputs:
    mean, _ = await version.encode(inputs["x"], context)
    return {"norm": np.linalg.norm(mean, axis=1).astype(np.float32)}


CODE_NORM = Operation("code_norm", "images -> |posterior mean|", (IMAGES,),
                      (TensorSpec("norm", dims=(BATCH,)),), ("encoder",), _code_norms,
                      batched=True)
"""A small operation declared here only: the server has no code for it."""


async def test_a_declared_operation_is_served_to_tritonclient(model_repo: Path,
                                                               tmp_path: Path) -> None:
    from training.data import load_digits

    x = np.ascontiguousarray(load_digits().test[:5])
    np.savez(tmp_path / "inputs.npz", x=x)
    running = await build_server(server_config(model_repo), operations=(*OPERATIONS, CODE_NORM))
    try:
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.service.tritonclient_infer", str(running.port),
            "vae.code_norm", str(tmp_path / "inputs.npz"), str(tmp_path), cwd=ROOT,
            stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(client.communicate(), 120)
        assert client.returncode == 0, stderr.decode()
        mean, _ = await running.plane.current.encode(x, RequestContext())
    finally:
        await running.stop(1.0)
    described = json.loads((tmp_path / "metadata.json").read_text())
    assert described["metadata"]["outputs"] == [{"name": "norm", "datatype": "FP32",
                                                 "shape": ["-1"]}]
    assert described["config"]["max_batch_size"] > 0 and described["ready"]
    norms = np.load(tmp_path / "outputs.npz")["norm"]
    np.testing.assert_array_equal(norms, np.linalg.norm(mean, axis=1).astype(np.float32))
