"""What the ssl module cannot say about a PEM certificate: its validity window and its key's
type, read from the DER of tbsCertificate (RFC 5280, section 4.1)."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

UTC_TIME, GENERALIZED_TIME, OBJECT_IDENTIFIER, EXPLICIT_VERSION = 0x17, 0x18, 0x06, 0xA0
EC_PUBLIC_KEY = "1.2.840.10045.2.1"
KEY_TYPES = {
    "1.2.840.113549.1.1.1": "RSA",
    "1.2.840.113549.1.1.10": "RSASSA-PSS",
    "1.2.840.10040.4.1": "DSA",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
    "1.2.840.10045.3.1.7": "ECDSA P-256",
    "1.3.132.0.34": "ECDSA P-384",
    "1.3.132.0.35": "ECDSA P-521",
    "1.3.132.0.33": "ECDSA P-224",
    "1.3.132.0.10": "ECDSA secp256k1",
    "1.3.36.3.3.2.8.1.1.7": "ECDSA brainpoolP256r1",
}
"""Key algorithm OIDs, and for EC keys the named curve's OID, to the names messages use."""
PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----")


@dataclass(frozen=True)
class Certificate:
    """The first certificate of a PEM chain: the one the server presents."""

    not_before_s: float
    not_after_s: float
    """Unix time; the certificate is valid from not_before_s until not_after_s."""
    key_type: str
    """Its public key's type as KEY_TYPES names it ("RSA", "ECDSA P-256"), else "OID 1.2.3"."""


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, first byte of the value, end of the value) of the DER element starting at `at`."""
    tag, length, start = der[at], der[at + 1], at + 2
    if length & 0x80:
        start += length & 0x7F
        length = int.from_bytes(der[at + 2:start], "big")
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def _children(der: bytes, parent: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    children, at = [], parent[1]
    while at < parent[2]:
        children.append(_element(der, at))
        at = children[-1][2]
    return children


def _oid(value: bytes) -> str:
    arcs, arc = [], 0
    for byte in value:
        arc = arc << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _time_s(der: bytes, element: tuple[int, int, int]) -> float:
    tag, start, end = element
    text = der[start:end].decode("ascii")
    if tag == UTC_TIME:  # two-digit years: 50-99 are 19xx (RFC 5280, 4.1.2.5.1)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != GENERALIZED_TIME:
        raise ValueError(f"a validity time with tag {tag:#x}")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC).timestamp()


def _key_type(der: bytes, key_info: tuple[int, int, int]) -> str:
    algorithm = _children(der, _children(der, key_info)[0])
    oid = _oid(der[algorithm[0][1]:algorithm[0][2]])
    if oid == EC_PUBLIC_KEY:
        if len(algorithm) < 2 or algorithm[1][0] != OBJECT_IDENTIFIER:
            return "ECDSA with explicit curve parameters"
        oid = _oid(der[algorithm[1][1]:algorithm[1][2]])
    return KEY_TYPES.get(oid, f"OID {oid}")


def read_certificate(pem: bytes) -> Certificate:
    """The first PEM certificate in `pem`; ValueError if there is none or its DER is malformed."""
    found = PEM_CERTIFICATE.search(pem)
    if found is None:
        raise ValueError("no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(found.group().decode("ascii"))
    try:
        tbs = _children(der, _element(der, 0))[0]
        fields = _children(der, tbs)
        if fields[0][0] == EXPLICIT_VERSION:
            fields = fields[1:]
        not_before, not_after = _children(der, fields[3])
        return Certificate(_time_s(der, not_before), _time_s(der, not_after),
                           _key_type(der, fields[5]))
    except (IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed DER ({err})") from None
