"""Probes that tell a SuperNode operator what is wrong before Flower retries forever.

Flower's SuperNode answers a TLS/CA mismatch or a plain-text/TLS mismatch with
``Connection attempt failed, retrying in N seconds`` and never says why. One TLS
handshake with the SuperLink's port tells: it speaks TLS or not, and its
certificate is signed by the given CA for the given host or not.
"""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path

#: A plain HTTP/1.1 request: a plain-text SuperLink (uvicorn) answers ``HTTP/1.1 4xx``, a
#: plain HTTP/2-only server (gRPC) its SETTINGS frame (type 4 in the frame header's 4th byte).
_PLAIN_REQUEST = b"GET / HTTP/1.1\r\nHost: superlink\r\nConnection: close\r\n\r\n"
_SETTINGS_FRAME = 0x04


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether another process listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose last connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _connect(host: str, port: int, timeout: float) -> socket.socket | None:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None  # not listening (yet): Flower's retries are right to wait for it


def _speaks_plain_http(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` answers a plain-text HTTP request (a SuperLink started with
    ``--insecure``)."""
    sock = _connect(host, port, timeout)
    if sock is None:
        return False
    with sock:
        try:
            sock.sendall(_PLAIN_REQUEST)
            head = sock.recv(9)
        except OSError:
            return False
    return head.startswith(b"HTTP/") or (len(head) >= 4 and head[3] == _SETTINGS_FRAME)


def _handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> ssl.SSLError | None:
    """None when a TLS handshake with ``host:port`` succeeds, else its error.

    ``OSError`` (connection refused, reset) propagates for the caller to read as "down".
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        with context.wrap_socket(sock, server_hostname=host):
            return None
    except ssl.SSLError as exc:
        return exc
    finally:
        sock.close()


def reachable(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None when something accepts TCP connections on ``host:port``, else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def transport_problem(
    host: str, port: int, *, ca: Path | None, where: str = "", who: str = "this node",
    timeout: float = 5.0,
) -> str | None:
    """What keeps ``who`` from talking to the SuperLink at ``host:port``, in one sentence,
    or None (the transports match, or nothing listens there yet).

    ``ca`` None: ``who`` uses plain text (``--insecure``); else TLS verified against ``ca``.
    """
    where = where or f"--superlink {host}:{port}"
    if ca is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            error = _handshake(host, port, context, timeout)
        except OSError:
            return None
        if error is None:
            return (
                f"{where} speaks TLS and {who} uses plain text (--insecure); drop --insecure "
                "and give the CA certificate (--ca ca.crt from make_certs.py)"
            )
        return None
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        return f"{ca} is not a PEM CA certificate ({exc}); give the ca.crt that make_certs.py wrote"
    try:
        error = _handshake(host, port, context, timeout)
    except OSError:
        return None
    if error is None:
        return None
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or str(error)
        if "mismatch" in reason or "match" in reason:
            return (
                f"{where}: the SuperLink's certificate does not name {host} ({reason}); use an "
                "address listed in make_certs.py --host, or reissue the certificate with this one "
                "(make_certs.py --out certs2 --host ... --ca-dir certs)"
            )
        return (
            f"{where}: the SuperLink's certificate is not signed by --ca {ca} ({reason}); give the "
            "ca.crt that make_certs.py wrote together with the SuperLink's server.pem"
        )
    if _speaks_plain_http(host, port, timeout):
        return (
            f"{where} speaks plain text (the SuperLink runs with --insecure) and {who} uses TLS; "
            f"start the SuperLink with --certs, or {who} with --insecure on a trusted test network"
        )
    return f"{where}: TLS handshake failed ({error.reason or error}); is it a SuperLink?"
