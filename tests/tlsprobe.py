"""One TLS handshake on loopback, for the tests of the webhook's certificates: a server
with ``certfile``/``keyfile`` sends b"ok" to a client that trusts only ``cadata`` and
checks ``server_hostname``, as the API server does against a caBundle."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


def handshake(certfile: Path, keyfile: Path, cadata: str, server_hostname: str) -> bytes:
    """What the client received (the server's b"ok"); an ssl error when it refuses."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile, keyfile)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass  # the client refused: its side raises

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cadata=cadata)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as conn:
            return conn.recv(2)
    finally:
        thread.join(5)
        listener.close()
