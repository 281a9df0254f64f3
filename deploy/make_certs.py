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
import re
import sys
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, fail, is_ip  # noqa: E402

from fedloom.privacy.files import write_private  # noqa: E402

LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")  # Flower connects its ServerApp via loopback
FILES = ("ca.crt", "ca.key", "server.pem", "server.key")
#: Host names of letters, digits and inner hyphens, dot-separated (RFC 1123).
DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


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


def new_ca(start: dt.datetime, end: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
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
    return ca_key, ca_cert


def load_ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA in ``folder`` (``ca.crt`` + ``ca.key`` of an earlier run); fails clearly."""
    try:
        cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        fail(f"--ca-dir {folder}: cannot read ca.crt and ca.key ({exc})")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        fail(f"--ca-dir {folder}: ca.key is not the key of ca.crt")
    # fail() exits; mypy sees _common's script import as Any, so it does not narrow key.
    return cast(ec.EllipticCurvePrivateKey, key), cert


def make_certs(out: Path, hosts: list[str], days: int, ca_dir: Path | None = None) -> None:
    """Write a CA-signed server certificate for ``hosts`` into ``out``, with a new
    self-signed CA, or the one in ``ca_dir`` (then the nodes keep their ``ca.crt``)."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key, ca_cert = load_ca(ca_dir) if ca_dir else new_ca(start, end)
    end = min(end, ca_cert.not_valid_after_utc)
    server_key = _key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
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
    if ca_dir is None:
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
    p.add_argument(
        "--ca-dir",
        help="sign with the CA in this folder (ca.crt, ca.key of an earlier run), so the nodes "
        "keep their ca.crt [default: a new CA]",
    )
    args = p.parse_args(argv)
    if args.days < 1:
        fail(f"invalid --days {args.days}; valid: >= 1")
    for host in args.host:
        if is_ip(host) and ipaddress.ip_address(host).is_unspecified:
            fail(f"invalid --host {host!r}: a listening address, not one clients connect to; "
                 "give the SuperLink's IP addresses or DNS names")
        if not is_ip(host) and not DNS_NAME.fullmatch(host):
            fail(f"invalid --host {host!r}; valid: an IP address or a DNS name, without a port")
    out = Path(args.out).expanduser().resolve()
    ca_dir = Path(args.ca_dir).expanduser().resolve() if args.ca_dir else None
    written = FILES if ca_dir is None else ("server.pem", "server.key") + (("ca.crt",) if ca_dir != out else ())
    existing = [name for name in written if (out / name).exists()]
    if existing and not args.force:
        fail(f"{out} already holds {', '.join(existing)}; use --force to overwrite them")
    make_certs(out, args.host, args.days, ca_dir)
    files = "ca.crt, ca.key" if ca_dir is None else f"ca.crt (the CA of {ca_dir})"
    print(f"wrote {out}/{files}, server.pem, server.key for {', '.join(args.host)}")


if __name__ == "__main__":
    main()
