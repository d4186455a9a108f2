"""A TCP proxy in front of the machine's real PostgreSQL, which a test controls.

It passes connections through, refuses them (closed at once: the server
gone), or answers each as a server shutting down does (SQLSTATE 57P03),
while the real server stays up for everyone else. Tests of how the service
meets a database that goes away, or comes up late, use it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from infrastructure.database import PgTarget


def _error_response(sqlstate: str, message: str) -> bytes:
    """A PostgreSQL ErrorResponse message, as the server sends it before closing."""
    fields = (
        b"SFATAL\x00VFATAL\x00C" + sqlstate.encode() + b"\x00M" + message.encode() + b"\x00\x00"
    )
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


class PgProxy:
    """A TCP proxy to PostgreSQL: ``passing``, ``refusing`` or ``shutting_down``.

    It listens on ``port`` (0: any free one, then ``self.port``) until closed.
    """

    def __init__(self, upstream: PgTarget, port: int = 0) -> None:
        self.upstream = (upstream.host, upstream.port)
        self.mode = "passing"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, mode: str) -> None:
        """Close every proxied connection, and treat new ones per ``mode``."""
        with self._lock:
            self.mode = mode
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def close(self) -> None:
        """Stop listening (new connections are refused) and cut every open one."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.cut("refusing")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            mode = self.mode
            if mode == "refusing":
                client.close()
            elif mode == "shutting_down":
                threading.Thread(target=self._shut_down, args=(client,), daemon=True).start()
            else:
                upstream = socket.create_connection(self.upstream)
                with self._lock:
                    self._open += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _shut_down(client: socket.socket) -> None:
        """Read the startup (after declining SSL), answer as a server shutting down."""
        try:
            while True:
                length = struct.unpack("!I", client.recv(4, socket.MSG_WAITALL))[0]
                body = client.recv(length - 4, socket.MSG_WAITALL)
                if body[:4] == struct.pack("!I", 80877103):  # SSLRequest
                    client.sendall(b"N")
                    continue
                client.sendall(_error_response("57P03", "the database system is shutting down"))
                return
        except (OSError, struct.error):
            pass
        finally:
            client.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown, not just close: the other direction's thread may sit in
            # recv on the same socket, and would keep it open (no FIN sent).
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
