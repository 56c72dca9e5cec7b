"""Blocking I/O with one thread per connection: recv() and sendall() simply block."""

from __future__ import annotations

import socket
import threading

from servers.base import EchoServer

RECV_SIZE = 65536
# 256 KiB instead of the default 8 MiB so that thousands of connections fit in memory;
# the echo loop needs only a few frames.
THREAD_STACK = 256 * 1024


class ThreadsServer(EchoServer):
    name = "threads"
    category = "blocking"
    mechanism = "a thread per connection; blocking accept, recv and sendall"

    def serve(self, listener: socket.socket) -> None:
        threading.stack_size(THREAD_STACK)
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        while True:
            sock, _addr = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._socks.add(sock)
            threading.Thread(target=self._echo, args=(sock,), daemon=True).start()

    def _echo(self, sock: socket.socket) -> None:
        try:
            while data := sock.recv(RECV_SIZE):
                sock.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)
            sock.close()

    def close(self) -> None:
        # Daemon threads die with the process; shutting the sockets wakes them so none is
        # left mid-write while the interpreter tears down.
        for sock in list(getattr(self, "_socks", ())):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
