#!/usr/bin/env python
"""Generate a certificate authority and the SuperLink's TLS certificate.

Example: python deploy/make_certs.py --out certs --host 10.0.0.5 --host superlink.example.org

Writes ``ca.crt`` (give it to every SuperNode and to whoever runs ``flwr run``),
``ca.key`` (keep it offline; it signs certificates), ``server.pem`` and
``server.key`` (the SuperLink's only). The server certificate's subject
alternative names are the given hosts plus 127.0.0.1 and localhost, which the
SuperLink's own ServerApp subprocess uses to reach it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import APP_DIR, Parser, fail, is_ip  # noqa: E402

sys.path.insert(0, str(APP_DIR))
from privacy.files import write_private  # noqa: E402

LOCAL_NAMES = ("127.0.0.1", "localhost")
FILES = ("ca.crt", "ca.key", "server.pem", "server.key")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a PEM private key readable by its owner only."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, data)


def subject_alt_names(hosts: list[str]) -> list[x509.GeneralName]:
    """IP addresses and DNS names for the server certificate (loopback always included)."""
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOCAL_NAMES]):
        if is_ip(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        else:
            names.append(x509.DNSName(host))
    return names


def make_certs(out: Path, hosts: list[str], days: int) -> None:
    """Write a self-signed CA and a CA-signed server certificate for ``hosts`` into ``out``."""
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedloom CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = _key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(hosts)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", ca_key)
    (out / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "server.key", server_key)


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Generate a CA and the SuperLink's TLS server certificate.")
    p.add_argument("--out", required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    p.add_argument(
        "--host",
        action="append",
        required=True,
        help="IP address or DNS name the SuperNodes use to reach the SuperLink (repeatable)",
    )
    p.add_argument("--days", type=int, default=365, help="validity in days [default: 365]")
    p.add_argument("--force", action="store_true", help="overwrite existing files in --out")
    args = p.parse_args(argv)
    if args.days < 1:
        fail(f"invalid --days {args.days}; valid: >= 1")
    for host in args.host:
        if not host or host.strip() != host or "/" in host or ":" in host and not is_ip(host):
            fail(f"invalid --host {host!r}; valid: an IP address or a DNS name, without a port")
    out = Path(args.out).expanduser().resolve()
    existing = [name for name in FILES if (out / name).exists()]
    if existing and not args.force:
        fail(f"{out} already holds {', '.join(existing)}; use --force to overwrite them")
    make_certs(out, args.host, args.days)
    print(f"wrote {out}/ca.crt, ca.key, server.pem, server.key for {', '.join(args.host)}")


if __name__ == "__main__":
    main()
