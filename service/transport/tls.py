"""Server TLS from PEM files that may change on disk: grpc asks for them again on each handshake.

`server_credentials` gives grpc's dynamic SSL credentials. grpc core calls the fetcher before
every new handshake; it answers None (keep what you have) unless a file's mtime, size or inode
changed, and then a new configuration only once the files load, the cert matches the key, its
key is one grpc can serve and it is valid now. Open connections keep the certificate they were
made with.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc

from service.metrics import TlsMetrics
from service.transport.x509 import Certificate, read_certificate

logger = logging.getLogger(__name__)

FileStamp = tuple[int, int, int] | None
"""(mtime_ns, size, inode) of one file after symlinks (Kubernetes swaps a link), None if absent."""
GRPC_KEY_TYPES = ("RSA", "ECDSA P-256", "ECDSA P-384")
"""Server keys both sides of grpc's TLS (BoringSSL) handshake with: grpc cannot load secp256k1,
P-224, brainpool, Ed448, RSASSA-PSS or DSA keys ("Failed to bind"), and grpc clients offer no
signature algorithm for P-521 or Ed25519 ones (NO_COMMON_SIGNATURE_ALGORITHMS); grpcio 1.85."""
EXPIRY_WARNING_S = 7 * 86400
"""A certificate loaded with less time than this left logs a WARNING."""


class CertificateError(OSError):
    """A certificate, key or CA file that cannot be used; an OSError, as ssl.SSLError is, so the
    vae-serve CLI reports it in one line with exit code 2."""


class CertificateNotYetValid(CertificateError):
    """A certificate valid from a time still to come: worth trying again at valid_from_s."""

    def __init__(self, message: str, valid_from_s: float) -> None:
        super().__init__(message)
        self.valid_from_s = valid_from_s


def _refuse_password() -> bytes:
    raise CertificateError("the private key is encrypted; give an unencrypted PEM key")


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CertificateError(f"{flag} {path}: cannot read it: {err.strerror or err}") from None


def _ssl_reason(err: ValueError | ssl.SSLError) -> str:
    """OpenSSL's reason in words: "no start line", "key values mismatch"."""
    reason = getattr(err, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return re.sub(r"^\[\w+\] |\s*\(_ssl\.c:\d+\)$", "", str(err)).lower()


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_certificate(cert: bytes, cert_file: Path, now_s: float) -> Certificate:
    """Refuse what grpc's handshake fails on although OpenSSL loads it: a key type grpc cannot
    use, a date outside the certificate's validity."""
    try:
        leaf = read_certificate(cert)
    except ValueError as err:
        raise CertificateError(f"--tls-cert-file {cert_file}: cannot read its first "
                               f"certificate ({err})") from None
    if leaf.key_type not in GRPC_KEY_TYPES:
        raise CertificateError(f"--tls-cert-file {cert_file}: grpc's TLS (BoringSSL) cannot use "
                               f"its {leaf.key_type} key; use an RSA (2048 bits or more), "
                               "ECDSA P-256 or ECDSA P-384 key")
    if now_s < leaf.not_before_s:
        raise CertificateNotYetValid(f"--tls-cert-file {cert_file}: not valid before "
                                     f"{_date(leaf.not_before_s)}", leaf.not_before_s)
    if now_s >= leaf.not_after_s:
        raise CertificateError(f"--tls-cert-file {cert_file}: expired on "
                               f"{_date(leaf.not_after_s)}")
    return leaf


def load_configuration(cert_file: Path, key_file: Path, client_ca_file: Path | None
                       ) -> tuple[grpc.ServerCertificateConfiguration, Certificate]:
    """Read and check the PEM files (with the standard ssl module, which grpc lacks a call for,
    then _check_certificate); the configuration and the certificate it serves."""
    cert, key = _read(cert_file, "--tls-cert-file"), _read(key_file, "--tls-key-file")
    client_ca = None if client_ca_file is None else _read(client_ca_file, "--tls-client-ca-file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=cert.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as err:
        raise CertificateError(f"--tls-cert-file {cert_file}: no PEM certificate in it "
                               f"({_ssl_reason(err)})") from None
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except (ssl.SSLError, ValueError) as err:
        raise CertificateError(f"--tls-key-file {key_file}: not a PEM private key of the "
                               f"certificate in {cert_file} ({_ssl_reason(err)})") from None
    except CertificateError as err:
        raise CertificateError(f"--tls-key-file {key_file}: {err}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as err:
            raise CertificateError(f"--tls-client-ca-file {client_ca_file}: no PEM CA "
                                   f"certificate in it ({_ssl_reason(err)})") from None
    leaf = _check_certificate(cert, cert_file, time.time())
    return (grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca),
            leaf)


class CertificateReloader:
    """grpc's certificate configuration fetcher: a new configuration when the files changed and
    load, else None; a bad change is logged and counted once and the previous certificate stays.
    One not valid yet is tried again when it becomes valid."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None,
                 metrics: TlsMetrics) -> None:
        self.files = (cert_file, key_file, client_ca_file)
        self._metrics = metrics
        self._seen = self._stamps()
        self.initial, leaf = load_configuration(*self.files)
        self._serving(leaf)
        self._retry_at_s: float | None = None
        self._lock = threading.Lock()
        for result in ("loaded", "refused"):  # both series from the start, for increase()
            metrics.reloads.labels(result)

    def _serving(self, leaf: Certificate) -> None:
        """The expiry metric follows the certificate grpc serves; a short life left warns."""
        self._metrics.expiry.set(leaf.not_after_s)
        left_s = leaf.not_after_s - time.time()
        if left_s < EXPIRY_WARNING_S:
            logger.warning("TLS certificate %s expires on %s, in %.1f days: renew it",
                           self.files[0], _date(leaf.not_after_s), left_s / 86400)

    def _stamps(self) -> tuple[FileStamp, ...]:
        stamps: list[FileStamp] = []
        for path in self.files:
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            stamps.append(None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc core before each new handshake, on its own threads."""
        with self._lock:
            stamps = self._stamps()
            if stamps == self._seen and (self._retry_at_s is None or
                                         time.time() < self._retry_at_s):
                return None
            loaded, error = None, None
            try:
                loaded = load_configuration(*self.files)
            except CertificateError as err:
                error = err
            if self._stamps() != stamps:
                return None  # written to while we read: try again at the next handshake
            self._seen = stamps
            self._retry_at_s = (error.valid_from_s if isinstance(error, CertificateNotYetValid)
                                else None)
            if loaded is None:
                self._metrics.reloads.labels("refused").inc()
                logger.warning("TLS files changed and were refused: %s; keeping the previous "
                               "certificate", error)
                return None
            self._metrics.reloads.labels("loaded").inc()
            logger.info("TLS certificate reloaded from %s", self.files[0])
            self._serving(loaded[1])
            return loaded[0]


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None,
                       metrics: TlsMetrics) -> grpc.ServerCredentials:
    """TLS; with a client CA, mutual TLS: a client certificate signed by that CA is required."""
    reloader = CertificateReloader(cert_file, key_file, client_ca_file, metrics)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial, reloader, require_client_authentication=client_ca_file is not None)
