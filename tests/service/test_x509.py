"""service/transport/x509.py reads what openssl wrote: the key's type and the validity window."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from service.transport.x509 import read_certificate
from tests.service.test_tls import make_ca, make_dated_leaf, not_after_s, openssl

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.mark.parametrize(("key", "key_type"), [
    (("rsa:2048",), "RSA"),
    (("rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048"), "RSASSA-PSS"),
    (("ec", "-pkeyopt", "ec_paramgen_curve:P-256"), "ECDSA P-256"),
    (("ec", "-pkeyopt", "ec_paramgen_curve:P-384"), "ECDSA P-384"),
    (("ec", "-pkeyopt", "ec_paramgen_curve:P-521"), "ECDSA P-521"),
    (("ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"), "ECDSA secp256k1"),
    (("ed25519",), "Ed25519"),
    (("ed448",), "Ed448"),
])
def test_key_type_and_validity(tmp_path: Path, key: tuple[str, ...], key_type: str) -> None:
    cert = tmp_path / "c.crt"
    openssl("req", "-x509", "-newkey", *key, "-nodes", "-keyout", tmp_path / "c.key", "-out",
            cert, "-days", "3", "-subj", "/CN=x")
    read = read_certificate(b"junk before\n" + cert.read_bytes() * 2)  # the first one counts
    assert read.key_type == key_type
    assert read.not_before_s <= time.time() < read.not_after_s == not_after_s(cert)


def test_dates_past_2049_are_generalized_time(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    pair = make_dated_leaf(tmp_path, "late", ca, "20491231235959Z", "20500101000000Z")
    read = read_certificate(pair.cert.read_bytes())  # UTCTime, then GeneralizedTime
    assert (read.not_before_s, read.not_after_s) == (2524607999.0, 2524608000.0)


@pytest.mark.parametrize("pem", [b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"])
def test_no_certificate_is_a_value_error(pem: bytes) -> None:
    with pytest.raises(ValueError):
        read_certificate(pem)
