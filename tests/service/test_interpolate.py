"""Interpolate: frames along the path between two codes, in one batch, with precise refusals."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from service.fronts.tensors import to_array, to_tensor
from service.operations.interpolate import path
from service.vae.v1 import vae_pb2, vae_pb2_grpc

SPHERICAL = vae_pb2.INTERPOLATION_PATH_SPHERICAL


def _digits(count: int) -> np.ndarray:
    from training.data import load_digits

    return np.ascontiguousarray(load_digits().test[:count])


async def test_image_ends_are_their_decoded_posterior_means(stub: vae_pb2_grpc.VaeServiceStub
                                                            ) -> None:
    x = _digits(2)
    out = await stub.Interpolate(vae_pb2.InterpolateRequest(images=to_tensor(x), steps=5))
    encoded = await stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(x)))
    frames, codes, mean = to_array(out.images), to_array(out.latents), to_array(encoded.mean)
    assert frames.shape == (5, *x.shape[1:]) and codes.shape == (5, mean.shape[1])
    np.testing.assert_array_equal(codes[[0, -1]], mean)
    np.testing.assert_allclose(codes[2], mean.mean(axis=0), atol=1e-6)
    decoded = await stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(codes)))
    assert to_array(decoded.images).tobytes() == frames.tobytes()


async def test_spherical_path_keeps_the_norm_of_equal_norm_codes(
        stub: vae_pb2_grpc.VaeServiceStub) -> None:
    ends = np.zeros((2, 8), np.float32)
    ends[0, 0], ends[1, 1] = 3.0, 3.0
    out = await stub.Interpolate(vae_pb2.InterpolateRequest(latents=to_tensor(ends), steps=9,
                                                            path=SPHERICAL))
    norms = np.linalg.norm(to_array(out.latents), axis=1)
    np.testing.assert_allclose(norms, 3.0, rtol=1e-5)  # a straight line dips to 2.12 midway


def test_parallel_codes_fall_back_to_the_straight_line() -> None:
    a = np.ones(4, np.float32)
    np.testing.assert_array_equal(path(a, 2 * a, 3, spherical=True), path(a, 2 * a, 3, False))


@pytest.mark.parametrize(("request_fields", "message"), [
    ({"steps": 1, "images": 2}, "steps: 1 is out of range; ask for 2..1024"),
    ({"steps": 1025, "images": 2}, "steps: 1025 is out of range"),
    ({"steps": 4, "images": 3}, "images: 3 items; interpolate takes exactly 2"),
    ({"steps": 4, "latents": 2, "latent_dim": 7}, "latents: shape [2, 7] does not match [N, 8]"),
    ({"steps": 4, "images": 0}, "send exactly one of images or latents; got none"),
])
async def test_bad_requests_are_refused_precisely(stub: vae_pb2_grpc.VaeServiceStub,
                                                  request_fields: dict[str, int],
                                                  message: str) -> None:
    fields = dict(request_fields)
    request = vae_pb2.InterpolateRequest(steps=fields.pop("steps"))
    if fields.get("images"):
        request.images.CopyFrom(to_tensor(_digits(fields["images"])))
    if "latents" in fields:
        request.latents.CopyFrom(to_tensor(np.zeros((2, fields["latent_dim"]), np.float32)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Interpolate(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(err.value.details())
