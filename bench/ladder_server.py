"""vae-serve with one layer stood in by zeros: the rungs of the cost ladder in bench.pinned_bench.

python -m bench.ladder_server --stand-in plane|compute [vae-serve's own arguments]

plane: the data plane answers every call at once with zeros of the declared output shapes.
  What is left is grpc.aio and the vae.v1 front: parsing, admission, metrics, the answer.
compute: each ONNX Runtime run returns zeros of its outputs' shapes. What is left is all of
  vae-serve but the arithmetic: the front, the data plane's checks, the batcher and its
  thread hand-offs.
Between the bare grpc.aio server, these two rungs and vae-serve itself, the differences in
server CPU per request are what each layer costs (docs/benchmarks.md, "Where the time goes").
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from service import cli
from service.context import RequestContext
from service.operations.spec import Inputs, Operation
from service.plane.dataplane import Answer, DataPlane
from service.runtime.ort_runner import OrtRunner


async def _answer_at_once(plane: DataPlane, operation: Operation, inputs: Inputs,
                          context: RequestContext) -> Answer:
    """Zeros of every declared output, as many rows as the first batched input has."""
    rows = next((len(v) for v in inputs.values() if isinstance(v, np.ndarray)), 1)
    manifest = plane.current.manifest
    outputs = {spec.name: np.zeros([rows if d == -1 else d for d in spec.shape(manifest)],
                                   np.float32)
               for spec in operation.outputs}
    return Answer(outputs, plane.current.number)


def _zeros_run(runner: OrtRunner, batch: np.ndarray) -> list[np.ndarray]:
    """Zeros of each output's shape for this batch, without running the graph."""
    shapes = {name: [len(batch), *(d for d in dims[1:] if isinstance(d, int))]
              for name, dims in runner.outputs.items()}
    return [np.zeros(shapes[name], np.float32) for name in runner.output_names]


STAND_INS = {"plane": (DataPlane, "run", _answer_at_once),
             "compute": (OrtRunner, "run", _zeros_run)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ladder_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stand-in", choices=sorted(STAND_INS), required=True,
                   help="the layer answered by zeros")
    args, serve_args = p.parse_known_args(argv)
    owner, method, stand_in = STAND_INS[args.stand_in]
    setattr(owner, method, stand_in)
    return cli.main(serve_args)


if __name__ == "__main__":
    sys.exit(main())
