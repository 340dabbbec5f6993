"""A TCP proxy that a test can cut: while :meth:`down`, every connection through it is dropped and new ones are
refused (the port stops listening), as when the store behind it is stopped; :meth:`up` serves again on the
same port. Lets a test take PostgreSQL or the Chroma server away from memchat without touching the
session-wide servers other tests use."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """``127.0.0.1:port`` → ``host:target_port``."""

    def __init__(self, host: str, target_port: int) -> None:
        self.target = (host, target_port)
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        """Listen (again) and forward."""
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(128)
        self.port = srv.getsockname()[1]
        with self._lock:
            self._listener = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True, name=f"netcut:{self.port}").start()

    def down(self) -> None:
        """Stop listening and drop every open connection."""
        with self._lock:
            srv, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        for s in ([srv] if srv else []) + conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    close = down

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not srv:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
