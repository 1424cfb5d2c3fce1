"""Homeport's own certificate authority, for what clients dial directly over TLS: a
sandbox's `encrypted_ports` tunnels (client 1.6.4 always makes a tunnel's URL `https://`)
and the task command router when the server is not on localhost (the client dials the
router with `https` then, checking the certificate against the system's CA store).

The CA is made once per data directory (`tls/ca.pem`, its key beside it, readable by root
only) with the `cryptography` library; server certificates are issued from it for the
names and addresses clients use. A user trusts it with `SSL_CERT_FILE=<data>/tls/ca-bundle.pem`
(the system's CAs plus this one, so other HTTPS keeps working) or by installing `ca.pem`
with `update-ca-certificates`.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Where distributions keep the system's CA bundle (OpenSSL's own default first).
SYSTEM_BUNDLES = (
    ssl.get_default_verify_paths().openssl_cafile,
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
)


def system_bundle() -> Path | None:
    """This machine's CA bundle, if it has one."""
    return next((Path(path) for path in SYSTEM_BUNDLES if path and os.path.isfile(path)), None)


CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)


class CertificateAuthority:
    def __init__(self, directory: Path, shared: Callable[[str], str] | None = None) -> None:
        """`shared` (cluster mode): offered a CA as JSON, answers the one all replicas use."""
        self.directory = directory
        self._shared = shared
        self._adopted = False
        self._lock = threading.Lock()
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def bundle_path(self) -> Path:
        """The system's CAs plus Homeport's: what SSL_CERT_FILE can point at."""
        return self.directory / "ca-bundle.pem"

    def ensure(self) -> None:
        """Make the CA (and the bundle users point SSL_CERT_FILE at) if there is none yet."""
        with self._lock:
            self._authority()

    def server_context(self, hosts: list[str], alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """A TLS server context whose certificate names `hosts` (and localhost), offering
        the `alpn` protocols (gRPC needs "h2"; a tunnel leaves it to the sandbox's server)."""
        names = tuple(sorted({*hosts, "localhost", "127.0.0.1", "::1"}))
        with self._lock:
            context = self._contexts.get((*names, "alpn", *alpn))
            if context is None:
                certificate, key = self._server_files(names)
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(certificate, key)
                if alpn:
                    context.set_alpn_protocols(list(alpn))
                self._contexts[(*names, "alpn", *alpn)] = context
            return context

    def _authority(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._shared is not None and not self._adopted:
            self._adopt_shared(self._shared)
        local = self._read_local()
        if local is not None:
            return local
        certificate, key = _new_authority()
        self._write_authority(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))
        return certificate, key

    def _read_local(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        key_path = self.directory / "ca.key"
        if not (self.ca_path.exists() and key_path.exists()):
            return None
        certificate = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return certificate, key

    def _adopt_shared(self, shared: Callable[[str], str]) -> None:
        """Replicas of one cluster share one CA (a user trusts it once): the first one's,
        kept in the database; this directory's copy follows it."""
        local = self._read_local()
        certificate, key = local or _new_authority()
        offered = {
            "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "key": _key_pem(key).decode(),
        }
        stored = json.loads(shared(json.dumps(offered)))
        if local is None or stored != offered:
            self._write_authority(stored["certificate"].encode(), stored["key"].encode())
            self._contexts.clear()
        self._adopted = True

    def _write_authority(self, certificate_pem: bytes, key_pem: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_private(self.directory / "ca.key", key_pem)
        self.ca_path.write_bytes(certificate_pem)
        found = system_bundle()
        system = found.read_bytes() if found is not None else b""
        self.bundle_path.write_bytes(system + b"\n" + certificate_pem)

    def server_pems(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """A certificate naming `hosts` (and localhost) and its key, as PEM: for a cluster
        node's router and tunnels."""
        names = tuple(sorted({*hosts, "localhost", "127.0.0.1", "::1"}))
        with self._lock:
            certificate, key = self._server_files(names)
        return certificate.read_bytes(), key.read_bytes()

    def _server_files(self, names: tuple[str, ...]) -> tuple[Path, Path]:
        authority, authority_key = self._authority()
        tag = hashlib.sha256("\0".join(names).encode()).hexdigest()[:16]
        certificate_path = self.directory / f"server-{tag}.pem"
        key_path = self.directory / f"server-{tag}.key"
        now = datetime.datetime.now(datetime.UTC)
        if certificate_path.exists() and key_path.exists():
            existing = x509.load_pem_x509_certificate(certificate_path.read_bytes())
            if existing.not_valid_after_utc - now > RENEW_BEFORE and _signed_by(existing, authority_key):
                return certificate_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        alternative_names: list[x509.GeneralName] = []
        for name in names:
            try:
                alternative_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternative_names.append(x509.DNSName(name))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(authority.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()), critical=False
            )
            .sign(authority_key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return certificate_path, key_path


def _new_authority() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Homeport CA ({os.uname().nodename})")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _signed_by(certificate: x509.Certificate, authority_key: ec.EllipticCurvePrivateKey) -> bool:
    """Whether this CA key signed it (a CA made again has the same name but a new key)."""
    try:
        authority_key.public_key().verify(
            certificate.signature, certificate.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
