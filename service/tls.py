"""Server TLS from PEM files that may change on disk: grpc asks for them again on each handshake.

`server_credentials` gives grpc's dynamic SSL credentials. grpc core calls the fetcher before
every new handshake; it answers None (keep what you have) unless a file's mtime, size or inode
changed, and then a new configuration only once the files load and the cert matches the key.
Open connections keep the certificate they were made with.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)

FileStamp = tuple[int, int, int] | None
"""(mtime_ns, size, inode) of one file after symlinks (Kubernetes swaps a link), None if absent."""


class CertificateError(OSError):
    """A certificate, key or CA file that cannot be used; an OSError, as ssl.SSLError is, so the
    vae-serve CLI reports it in one line with exit code 2."""


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


def load_configuration(cert_file: Path, key_file: Path, client_ca_file: Path | None
                       ) -> grpc.ServerCertificateConfiguration:
    """Read and check the PEM files (with the standard ssl module, which grpc lacks a call for)."""
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
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


class CertificateReloader:
    """grpc's certificate configuration fetcher: a new configuration when the files changed and
    load, else None; a bad change is logged once and the previous certificate stays."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self.files = (cert_file, key_file, client_ca_file)
        self._seen = self._stamps()
        self.initial = load_configuration(*self.files)
        self._lock = threading.Lock()

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
            if stamps == self._seen:
                return None
            configuration, error = None, None
            try:
                configuration = load_configuration(*self.files)
            except CertificateError as err:
                error = err
            if self._stamps() != stamps:
                return None  # written to while we read: try again at the next handshake
            self._seen = stamps
            if configuration is None:
                logger.warning("TLS files changed but cannot be used: %s; keeping the previous "
                               "certificate", error)
                return None
            logger.info("TLS certificate reloaded from %s", self.files[0])
            return configuration


def server_credentials(cert_file: Path, key_file: Path, client_ca_file: Path | None
                       ) -> grpc.ServerCredentials:
    """TLS; with a client CA, mutual TLS: a client certificate signed by that CA is required."""
    reloader = CertificateReloader(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial, reloader, require_client_authentication=client_ca_file is not None)
