"""TLS and mutual TLS on the real server, the plaintext health-only port, certificate rotation
without a restart, refusing what grpc's handshake cannot use, the expiry metric, the client's
TLS flags and its retry policy. Certificates come from the openssl CLI (EC P-256 unless a test
needs another key, so they take milliseconds)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from service.cli import main as serve_main
from service.client import cli as client_cli
from service.client.vae_client import RETRY_POLICY, VaeClient
from service.config import ConfigError, ServerConfig
from service.inference import grpc_service_pb2, grpc_service_pb2_grpc
from service.metrics import TlsMetrics
from service.transport.server import RunningServer
from service.transport.tls import CertificateError, server_credentials
from service.vae.v1 import vae_pb2, vae_pb2_grpc
from tests.conftest import StartServer, spawn_server
from tests.service.test_operations import scrape

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
KEYS = {"secp256k1": ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1", "-nodes"),
        "P-521": ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521", "-nodes"),
        "Ed25519": ("-newkey", "ed25519", "-nodes"), "Ed448": ("-newkey", "ed448", "-nodes")}
"""Keys OpenSSL (and so Python's ssl) serves, and grpc cannot: its BoringSSL does not load the
secp256k1 and Ed448 ones; grpc clients cannot verify a P-521 or Ed25519 server's signature."""
DAYS = "30"
"""Long enough that no certificate but the one made to be short warns about its expiry."""
SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"
LEAF_EXT = ("basicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid\n")


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_ca(folder: Path, name: str) -> Pair:
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    openssl("req", "-x509", *EC_KEY, "-keyout", pair.key, "-out", pair.cert, "-days", DAYS,
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return pair


def make_leaf(folder: Path, name: str, ca: Pair, serial: int, ext: str,
              key: tuple[str, ...] = EC_KEY, days: str = DAYS) -> Pair:
    """A certificate CN=name signed by ca; ext: its subjectAltName and extendedKeyUsage."""
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    csr, ext_file = folder / f"{name}.csr", folder / f"{name}.ext"
    ext_file.write_text(ext + LEAF_EXT)
    openssl("req", "-new", *key, "-keyout", pair.key, "-out", csr, "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial",
            str(serial), "-days", days, "-extfile", ext_file, "-out", pair.cert)
    return pair


def make_dated_leaf(folder: Path, name: str, ca: Pair, start: str, end: str) -> Pair:
    """A server certificate CN=name valid from start to end (YYYYMMDDHHMMSSZ): OpenSSL 3.0 sets
    notBefore only in `openssl ca`, which wants a config and a database."""
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    csr, ext_file, index = (folder / f"{name}.{s}" for s in ("csr", "ext", "index"))
    config, serial = folder / f"{name}.cnf", folder / f"{name}.serial"
    ext_file.write_text(SERVER_EXT + LEAF_EXT)
    index.write_text("")
    serial.write_text("0A\n")
    config.write_text(f"[ca]\ndefault_ca = dated\n[dated]\ndatabase = {index}\n"
                      f"new_certs_dir = {folder}\nserial = {serial}\ndefault_md = sha256\n"
                      "policy = any\n[any]\ncommonName = supplied\n")
    openssl("req", "-new", *EC_KEY, "-keyout", pair.key, "-out", csr, "-subj", f"/CN={name}")
    openssl("ca", "-batch", "-config", config, "-notext", "-in", csr, "-cert", ca.cert,
            "-keyfile", ca.key, "-startdate", start, "-enddate", end, "-extfile", ext_file,
            "-out", pair.cert)
    return pair


def not_after_s(cert: Path) -> float:
    """notAfter as openssl prints it, in Unix time."""
    done = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-enddate"],
                          capture_output=True, text=True, check=True)
    return float(ssl.cert_time_to_seconds(done.stdout.strip().removeprefix("notAfter=")))


@dataclass(frozen=True)
class Pki:
    ca: Pair
    server: Pair
    rotated: Pair
    """Another server certificate from the same CA (CN vae-serve-2, serial 2)."""
    client: Pair
    other_ca: Pair
    other_client: Pair
    """Signed by other_ca, which the server does not trust."""
    unusable: dict[str, Pair]
    """Server certificates from ca that grpc's handshake fails on, by what is wrong: a KEYS
    name, "expired" or "not yet valid"."""
    longer: Pair
    """A server certificate (CN vae-serve-3) valid for longer than the others."""
    short: Pair
    """A server certificate valid for one day only."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(folder, "test-ca"), make_ca(folder, "other-ca")
    unusable = {name: make_leaf(folder, name, ca, 10 + i, SERVER_EXT, key)
                for i, (name, key) in enumerate(KEYS.items())}
    unusable["expired"] = make_dated_leaf(folder, "expired", ca, "20200101000000Z",
                                          "20200201000000Z")
    unusable["not yet valid"] = make_dated_leaf(folder, "future", ca, "20500101000000Z",
                                                "20500201000000Z")
    return Pki(ca=ca, server=make_leaf(folder, "vae-serve-1", ca, 1, SERVER_EXT),
               rotated=make_leaf(folder, "vae-serve-2", ca, 2, SERVER_EXT),
               client=make_leaf(folder, "client", ca, 3, CLIENT_EXT), other_ca=other_ca,
               other_client=make_leaf(folder, "other-client", other_ca, 4, CLIENT_EXT),
               unusable=unusable, longer=make_leaf(folder, "vae-serve-3", ca, 5, SERVER_EXT,
                                                   days="60"),
               short=make_leaf(folder, "short", ca, 6, SERVER_EXT, days="1"))


def tls_settings(server: Pair, client_ca: Pair | None = None) -> dict[str, object]:
    return {"tls_cert_file": server.cert, "tls_key_file": server.key, "health_port": 0,
            "tls_client_ca_file": None if client_ca is None else client_ca.cert}


def secure_channel(port: int, ca: Pair, client: Pair | None = None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        ca.cert.read_bytes(), None if client is None else client.key.read_bytes(),
        None if client is None else client.cert.read_bytes())
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def model_info(channel: grpc.aio.Channel) -> vae_pb2.ModelInfo:
    stub = vae_pb2_grpc.VaeServiceStub(channel)
    info: vae_pb2.ModelInfo = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=5)
    return info


def peer_common_name(port: int, ca: Pair) -> str:
    """The CN of the certificate the server shows a brand-new connection (a raw TLS handshake)."""
    context = ssl.create_default_context(cafile=ca.cert)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        cert = tls.getpeercert()
    assert cert is not None and isinstance(cert["subject"], tuple)
    names = {attribute[0]: attribute[1] for rdn in cert["subject"] for attribute in rdn}
    return names["commonName"]


def replace_files(source: Pair, target: Pair) -> None:
    """What a secret mount or cert-manager does: new files, each swapped in whole."""
    for src, dst in ((source.cert, target.cert), (source.key, target.key)):
        shutil.copyfile(src, dst.with_suffix(".new"))
        os.replace(dst.with_suffix(".new"), dst)


# --- TLS and mutual TLS on --port ---------------------------------------------------------

async def test_tls_serves_both_fronts(start_server: StartServer, pki: Pki) -> None:
    running = await start_server(**tls_settings(pki.server))
    async with secure_channel(running.port, pki.ca) as channel:
        assert (await model_info(channel)).version == 1
        v2 = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert (await v2.ServerLive(grpc_service_pb2.ServerLiveRequest(), timeout=5)).live


async def test_plaintext_call_to_the_tls_port_fails(start_server: StartServer, pki: Pki) -> None:
    running = await start_server(**tls_settings(pki.server))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await model_info(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def mtls_server(start_server: StartServer, pki: Pki) -> RunningServer:
    return await start_server(**tls_settings(pki.server, client_ca=pki.ca))


@pytest.mark.parametrize("client", [None, "other_client"])
async def test_mtls_refuses_a_missing_or_foreign_client_certificate(
        mtls_server: RunningServer, pki: Pki, client: str | None) -> None:
    async with secure_channel(mtls_server.port, pki.ca,
                              None if client is None else getattr(pki, client)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await model_info(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_a_client_certificate_from_its_ca(mtls_server: RunningServer,
                                                            pki: Pki) -> None:
    async with secure_channel(mtls_server.port, pki.ca, pki.client) as channel:
        assert (await model_info(channel)).version == 1


# --- the plaintext health-only port ---------------------------------------------------------

@pytest.fixture
async def health_channel(mtls_server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    assert mtls_server.health_port not in (-1, 0, mtls_server.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mtls_server.health_port}") as channel:
        yield channel


@pytest.mark.parametrize("service", ["", "vae.v1.VaeService", "inference.GRPCInferenceService"])
async def test_health_port_answers_health_in_plaintext(health_channel: grpc.aio.Channel,
                                                       service: str) -> None:
    reply = await health_pb2_grpc.HealthStub(health_channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_port_refuses_every_other_service(health_channel: grpc.aio.Channel) -> None:
    calls = [model_info(health_channel),
             grpc_service_pb2_grpc.GRPCInferenceServiceStub(health_channel).ServerLive(
                 grpc_service_pb2.ServerLiveRequest(), timeout=5)]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    reflection = reflection_pb2_grpc.ServerReflectionStub(health_channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reflection.read()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_port_only_with_tls_and_not_at_minus_one(start_server: StartServer,
                                                             pki: Pki) -> None:
    plain = await start_server()  # health_port keeps its default, 50052: unused without TLS
    off = await start_server(**{**tls_settings(pki.server), "health_port": -1})
    assert (plain.health_port, plain.health_server, off.health_port) == (-1, None, -1)


# --- rotation -------------------------------------------------------------------------------

@pytest.fixture
def live_pair(tmp_path: Path, pki: Pki) -> Pair:
    """The server's cert and key at paths this test may overwrite."""
    pair = Pair(tmp_path / "tls.crt", tmp_path / "tls.key")
    replace_files(pki.server, pair)
    return pair


async def test_rotation_new_connections_get_the_new_certificate_old_ones_keep_working(
        start_server: StartServer, pki: Pki, live_pair: Pair) -> None:
    running = await start_server(**tls_settings(live_pair))
    async with secure_channel(running.port, pki.ca) as old:
        await model_info(old)
        assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-1"
        replace_files(pki.rotated, live_pair)
        assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-2"
        assert (await model_info(old)).version == 1  # the open connection is untouched
        async with secure_channel(running.port, pki.ca) as new:
            assert (await model_info(new)).version == 1


async def test_a_bad_rotation_keeps_the_old_certificate_and_warns_once(
        start_server: StartServer, pki: Pki, live_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(**tls_settings(live_pair))
    live_pair.cert.write_text("not a certificate\n")
    with caplog.at_level(logging.WARNING, logger="service.transport.tls"):
        for _ in range(3):
            assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-1"
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.transport.tls"]
    assert len(warnings) == 1 and "keeping the previous certificate" in warnings[0], warnings
    replace_files(pki.rotated, live_pair)  # fixed: the next handshake takes it
    assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-2"


@pytest.mark.parametrize("unusable", [*KEYS, "expired", "not yet valid"])
async def test_rotation_refuses_what_the_handshake_cannot_use_and_keeps_the_old_certificate(
        start_server: StartServer, pki: Pki, live_pair: Pair, unusable: str,
        caplog: pytest.LogCaptureFixture) -> None:
    running = await start_server(**tls_settings(live_pair), metrics_port=0)
    replace_files(pki.unusable[unusable], live_pair)
    for _ in range(2):  # new connections, each asks for the certificate again
        async with secure_channel(running.port, pki.ca) as channel:
            assert (await model_info(channel)).version == 1
    assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-1"
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "service.transport.tls" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refused" in warnings[0], warnings
    assert "keeping the previous certificate" in warnings[0], warnings
    assert scrape(running.metrics_port)[("vae_tls_reloads_total", (("result", "refused"),))] == 1


async def test_a_certificate_not_valid_yet_is_taken_when_it_becomes_valid(
        start_server: StartServer, pki: Pki, live_pair: Pair, tmp_path: Path) -> None:
    running = await start_server(**tls_settings(live_pair))
    valid_from_s = int(time.time()) + 6
    soon = make_dated_leaf(tmp_path, "soon", pki.ca, time.strftime(
        "%Y%m%d%H%M%SZ", time.gmtime(valid_from_s)), "20500101000000Z")
    replace_files(soon, live_pair)
    assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-1"
    await asyncio.sleep(max(0.0, valid_from_s + 1 - time.time()))
    assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "soon"


async def test_metrics_show_the_expiry_of_the_certificate_in_use(
        start_server: StartServer, pki: Pki, live_pair: Pair) -> None:
    running = await start_server(**tls_settings(live_pair), metrics_port=0)
    expiry = ("vae_tls_certificate_expiry_timestamp_seconds", ())
    assert scrape(running.metrics_port)[expiry] == not_after_s(pki.server.cert)
    replace_files(pki.unusable["expired"], live_pair)
    assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-1"
    assert scrape(running.metrics_port)[expiry] == not_after_s(pki.server.cert)
    replace_files(pki.longer, live_pair)
    assert await asyncio.to_thread(peer_common_name, running.port, pki.ca) == "vae-serve-3"
    metrics = scrape(running.metrics_port)
    assert metrics[expiry] == not_after_s(pki.longer.cert) > not_after_s(pki.server.cert)
    assert [metrics[("vae_tls_reloads_total", (("result", result),))]
            for result in ("loaded", "refused")] == [1, 1]


async def test_plaintext_server_has_no_tls_metrics(start_server: StartServer) -> None:
    running = await start_server(metrics_port=0)
    assert not [name for name, _ in scrape(running.metrics_port) if name.startswith("vae_tls")]


async def test_a_certificate_close_to_its_expiry_warns_at_start(
        start_server: StartServer, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    await start_server(**tls_settings(pki.short))
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.transport.tls"]
    assert len(warnings) == 1 and "expires on" in warnings[0] and "renew it" in warnings[0]


# --- start-up: settings and files ---------------------------------------------------------

@pytest.mark.parametrize(("settings", "message"), [
    ({"tls_cert_file": Path("a.crt")}, "--tls-cert-file (VAE_SERVE_TLS_CERT_FILE) and "
     "--tls-key-file (VAE_SERVE_TLS_KEY_FILE) go together"),
    ({"tls_client_ca_file": Path("ca.crt")}, "--tls-client-ca-file (VAE_SERVE_TLS_CLIENT_CA_FILE)"
     " needs --tls-cert-file"),
    ({"health_port": -2}, "--health-port (VAE_SERVE_HEALTH_PORT) must be within -1..65535"),
    ({"tls_cert_file": Path("a.crt"), "tls_key_file": Path("a.key"), "health_port": 50051},
     "must differ from --port"),
])
def test_tls_settings_that_do_not_go_together(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig(**settings)  # type: ignore[arg-type]
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_tls_settings_from_the_environment() -> None:
    env = {"VAE_SERVE_TLS_CERT_FILE": "/tls/tls.crt", "VAE_SERVE_TLS_KEY_FILE": "/tls/tls.key",
           "VAE_SERVE_TLS_CLIENT_CA_FILE": "", "VAE_SERVE_HEALTH_PORT": "50060"}
    config = ServerConfig.from_args([], environ=env)
    assert (config.tls, config.tls_key_file, config.tls_client_ca_file, config.health_port) == (
        True, Path("/tls/tls.key"), None, 50060)


@pytest.mark.parametrize(("broken", "message"), [
    ("missing_cert", "--tls-cert-file {d}/missing.crt: cannot read it: No such file"),
    ("garbage_cert", "--tls-cert-file {d}/garbage: no PEM certificate in it"),
    ("foreign_key", "--tls-key-file {d}/other-client.key: not a PEM private key of the "
     "certificate in {d}/vae-serve-1.crt"),
    ("garbage_ca", "--tls-client-ca-file {d}/garbage: no PEM CA certificate in it"),
    ("P-521", "--tls-cert-file {d}/P-521.crt: grpc's TLS (BoringSSL) cannot use its ECDSA P-521 "
     "key; use an RSA (2048 bits or more), ECDSA P-256 or ECDSA P-384 key"),
    ("Ed25519", "cannot use its Ed25519 key"),
    ("expired", "--tls-cert-file {d}/expired.crt: expired on 2020-02-01 00:00:00 UTC"),
    ("not yet valid", "--tls-cert-file {d}/future.crt: not valid before 2050-01-01 00:00:00 UTC"),
])
def test_unusable_files_stop_the_start_in_one_line(pki: Pki, broken: str, message: str) -> None:
    folder = pki.ca.cert.parent
    (folder / "garbage").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    cert, key, ca = pki.server.cert, pki.server.key, pki.ca.cert
    if broken in pki.unusable:
        cert, key = pki.unusable[broken].cert, pki.unusable[broken].key
    cert = {"missing_cert": folder / "missing.crt", "garbage_cert": folder / "garbage"}.get(broken, cert)
    key = pki.other_client.key if broken == "foreign_key" else key
    ca = folder / "garbage" if broken == "garbage_ca" else ca
    with pytest.raises(CertificateError) as caught:
        server_credentials(cert, key, ca, TlsMetrics(CollectorRegistry()))
    assert message.format(d=folder) in str(caught.value) and "\n" not in str(caught.value)


def test_serve_exits_2_with_one_line_on_a_bad_certificate(pki: Pki, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "tls.crt"
    garbage.write_text("garbage\n")
    argv = ["--tls-cert-file", str(garbage), "--tls-key-file", str(pki.server.key), "--port", "0",
            "--metrics-port", "-1", "--health-port", "-1", "--model-repo", str(tmp_path)]
    assert serve_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vae-serve: error: --tls-cert-file {garbage}: no PEM certificate in it "
                   "(no start line: cadata does not contain a certificate)"], err


@pytest.mark.parametrize("key", ["secp256k1", "Ed448"])
async def test_serve_exits_2_with_one_line_on_a_key_grpc_cannot_load(
        model_repo: Path, pki: Pki, key: str) -> None:
    pair = pki.unusable[key]
    process, _ = await spawn_server(model_repo, stderr=asyncio.subprocess.PIPE,
                                    tls_cert_file=str(pair.cert), tls_key_file=str(pair.key),
                                    health_port="-1")
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    key_type = {"secp256k1": "ECDSA secp256k1", "Ed448": "Ed448"}[key]
    assert (process.returncode, err.decode().strip().splitlines()) == (2, [
        f"vae-serve: error: --tls-cert-file {pair.cert}: grpc's TLS (BoringSSL) cannot use its "
        f"{key_type} key; use an RSA (2048 bits or more), ECDSA P-256 or ECDSA P-384 key"])


# --- the client: TLS flags and the retry policy ---------------------------------------------

async def test_vae_client_speaks_mutual_tls(mtls_server: RunningServer, pki: Pki) -> None:
    def info() -> int:
        with VaeClient(f"localhost:{mtls_server.port}", tls_ca_file=pki.ca.cert,
                       tls_cert_file=pki.client.cert, tls_key_file=pki.client.key) as client:
            return int(client.info().version)

    assert await asyncio.to_thread(info) == 1


async def test_vae_client_cli_tls_flags(mtls_server: RunningServer, pki: Pki,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", f"localhost:{mtls_server.port}", "--tls-ca-file", str(pki.ca.cert),
            "--tls-cert-file", str(pki.client.cert), "--tls-key-file", str(pki.client.key), "info"]
    assert await asyncio.to_thread(client_cli.main, argv) == 0
    assert '"version": 1' in capsys.readouterr().out
    assert await asyncio.to_thread(client_cli.main, [*argv[:4], "info"]) == 1  # no client cert
    assert client_cli.main([*argv[:6], "info"]) == 2  # a cert without its key
    assert "go together" in capsys.readouterr().err


class FlakyService(vae_pb2_grpc.VaeServiceServicer):
    """GetModelInfo fails with `code` `failures` times, then answers."""

    def __init__(self, failures: int, code: grpc.StatusCode) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    async def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ModelInfo:
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(self.code, "try again")
        return vae_pb2.ModelInfo(version=7)


@pytest.mark.parametrize(("failures", "code", "calls", "ok"), [
    (3, grpc.StatusCode.UNAVAILABLE, 4, True),
    (2, grpc.StatusCode.RESOURCE_EXHAUSTED, 3, True),
    (9, grpc.StatusCode.UNAVAILABLE, RETRY_POLICY["maxAttempts"], False),
    (9, grpc.StatusCode.INVALID_ARGUMENT, 1, False),
])
async def test_client_retries_unavailable_and_resource_exhausted(
        failures: int, code: grpc.StatusCode, calls: int, ok: bool) -> None:
    service = FlakyService(failures, code)
    server = grpc.aio.server()
    vae_pb2_grpc.add_VaeServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    def info() -> bool:
        with VaeClient(f"127.0.0.1:{port}", timeout_s=10) as client:
            try:
                return client.info().version == 7
            except grpc.RpcError:
                return False

    try:
        assert (await asyncio.to_thread(info), service.calls) == (ok, calls)
    finally:
        await server.stop(0)
