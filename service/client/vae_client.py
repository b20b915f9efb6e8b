"""VaeClient: numpy in, numpy out over gRPC; needs grpcio and numpy only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from service.fronts.tensors import to_array, to_tensor
from service.vae.v1 import vae_pb2, vae_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
LB_POLICIES = ("pick_first", "round_robin")
RETRY_POLICY = {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]}
"""gRPC retries every VaeService call (all idempotent) on a draining pod or a full queue."""
SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name}],
    "retryPolicy": RETRY_POLICY}],
    # With round_robin: leave a replica as soon as its health says NOT_SERVING (a stopping one).
    "healthCheckConfig": {"serviceName": vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name}})


def channel_credentials(ca_file: Path | None, cert_file: Path | None = None,
                        key_file: Path | None = None) -> grpc.ChannelCredentials | None:
    """TLS trusting ca_file, with a client certificate for mutual TLS; None = plaintext."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("--tls-cert-file and --tls-key-file go together: set both or neither")
    if ca_file is None:
        if cert_file is not None:
            raise ValueError("a client certificate needs --tls-ca-file (the server's CA)")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes(),
        private_key=None if key_file is None else key_file.read_bytes(),
        certificate_chain=None if cert_file is None else cert_file.read_bytes())


@dataclass(frozen=True)
class Scores:
    """Score's answer, per image in nats, with what repeats it: the samples, seed and version."""

    neg_elbo: np.ndarray
    """[N] reconstruction + kl: an upper bound on -log p(x)."""
    reconstruction: np.ndarray
    """[N] -log p(x | z), averaged over the samples."""
    kl: np.ndarray
    """[N] KL(q(z | x) || N(0, I)), in closed form."""
    nll: np.ndarray
    """[N] the importance-weighted bound on -log p(x): tighter than neg_elbo as samples grow."""
    samples: int
    seed: int
    version: int

    def bounds(self) -> dict[str, np.ndarray]:
        """The four per-image arrays by name, in the order of the proto."""
        return {"neg_elbo": self.neg_elbo, "reconstruction": self.reconstruction, "kl": self.kl,
                "nll": self.nll}


class VaeClient:
    """Blocking client. For several replicas use target dns:///HOST:PORT with round_robin."""

    def __init__(self, target: str = DEFAULT_TARGET, *, lb_policy: str | None = None,
                 timeout_s: float = 30.0, max_message_bytes: int = 64 * 1024 * 1024,
                 tls_ca_file: Path | None = None, tls_cert_file: Path | None = None,
                 tls_key_file: Path | None = None) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", SERVICE_CONFIG),
        ]
        if lb_policy:
            options.append(("grpc.lb_policy_name", lb_policy))
        credentials = channel_credentials(tls_ca_file, tls_cert_file, tls_key_file)
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self.stub = vae_pb2_grpc.VaeServiceStub(self.channel)
        self.timeout_s = timeout_s

    def info(self) -> vae_pb2.ModelInfo:
        info: vae_pb2.ModelInfo = self.stub.GetModelInfo(vae_pb2.GetModelInfoRequest(),
                                                         timeout=self.timeout_s)
        return info

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images [N, C, H, W] in [0, 1] -> (mean, log_var) [N, latent]."""
        r = self.stub.Encode(vae_pb2.EncodeRequest(images=to_tensor(images)), timeout=self.timeout_s)
        return to_array(r.mean), to_array(r.log_var)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        r = self.stub.Decode(vae_pb2.DecodeRequest(latents=to_tensor(latents)),
                             timeout=self.timeout_s)
        return to_array(r.images)

    def sample(self, count: int, seed: int = 0, temperature: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray, int]:
        """Returns (images, latents, seed); seed 0 lets the server pick and report one."""
        r = self.stub.Sample(vae_pb2.SampleRequest(count=count, seed=seed, temperature=temperature),
                             timeout=self.timeout_s)
        return to_array(r.images), to_array(r.latents), int(r.seed)

    def denoise(self, images: np.ndarray) -> np.ndarray:
        r = self.stub.Denoise(vae_pb2.DenoiseRequest(images=to_tensor(images)),
                              timeout=self.timeout_s)
        return to_array(r.images)

    def score(self, images: np.ndarray, samples: int = 1, seed: int = 0) -> Scores:
        """images [N, C, H, W] in [0, 1] -> per-image bounds with `samples` importance draws;
        seed 0 lets the server pick and report one."""
        r = self.stub.Score(vae_pb2.ScoreRequest(images=to_tensor(images), samples=samples,
                                                 seed=seed), timeout=self.timeout_s)
        return Scores(to_array(r.neg_elbo), to_array(r.reconstruction), to_array(r.kl),
                      to_array(r.nll), int(r.samples), int(r.seed), int(r.version))

    def interpolate(self, images: np.ndarray | None = None, latents: np.ndarray | None = None,
                    steps: int = 8, spherical: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Two images [2, C, H, W] or two latents [2, latent] (exactly one) -> (images
        [steps, C, H, W], latents [steps, latent]) along the path, both ends included."""
        if (images is None) == (latents is None):
            raise ValueError("interpolate takes two images or two latents: give exactly one")
        path = (vae_pb2.INTERPOLATION_PATH_SPHERICAL if spherical
                else vae_pb2.INTERPOLATION_PATH_LINEAR)
        request = vae_pb2.InterpolateRequest(steps=steps, path=path)
        if images is not None:
            request.images.CopyFrom(to_tensor(images))
        if latents is not None:
            request.latents.CopyFrom(to_tensor(latents))
        r = self.stub.Interpolate(request, timeout=self.timeout_s)
        return to_array(r.images), to_array(r.latents)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
