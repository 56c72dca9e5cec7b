"""Blocking I/O with threads: every socket call blocks, and a thread waits in each one.

One thread that reads and writes a connection in turn (recv, then sendall) deadlocks with a
client that writes a lot before it reads: the server's sendall waits for the client to read,
the client's send waits for the server to read, and once both directions' socket buffers are
full neither ever does. A blocking thread can wait for only one thing, so the honest blocking
design gives each direction of a connection its own thread:

- the reader blocks in recv() and queues what it got for the writer; past HIGH_WATER bytes
  queued it blocks until the writer has sent some (the bound the non-blocking models keep,
  so a client that never reads cannot exhaust the server's memory);
- the writer blocks in the queue's get() until there is data, then in sendall().

The writer starts with the first data, so an idle connection costs one thread. Threads get a
small stack (the echo needs a few C frames) so that 10,000 connections, up to 20,000 threads,
fit in memory: about 40 KiB resident per connection. Every thread is also a kernel task, so
pid_max (32768 here) caps the model near 15,000 busy connections; running out of threads is
reported as a fatal failure, the model's own limit.

What CPython adds: every thread needs the GIL to run between its blocking calls, and each
thread waiting for it wakes every switch interval (5 ms by default) to ask the holder to let
go. With thousands of threads waiting at once (all readers wake when all clients send) that
thrashing all but stops the server. Measured here, one 100-byte echo on each of 10,000
connections took 30-45 s with one thread per connection and the default interval, more than
2 minutes with this design and the default interval, and about 4 s with this design and a
long interval. These threads never compute, they only block, so they give up the GIL at every
socket call anyway: a long interval removes the thrashing without changing what the model does.
Threads are started with _thread.start_new_thread, which, unlike threading.Thread.start, does
not wait for the new thread to take the GIL once before the accept loop may go on.
"""

from __future__ import annotations

import _thread
import queue
import signal
import socket
import sys
import threading

from servers.base import EchoServer, ServerFailure
from servers.connection import HIGH_WATER

RECV_SIZE = 65536
THREAD_STACK = 256 * 1024
SWITCH_INTERVAL = 30.0  # seconds; see the module docstring
# Signals only the accepting (main) thread takes: shutdown, and the stats request.
_MAIN_THREAD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}

_EOF = b""  # queued by the reader after the client's FIN: flush everything, then close
_DEAD = None  # queued on reset: stop at once


class _Connection:
    """One connection: the queue from its reader to its writer thread, and its byte budget."""

    __slots__ = ("sock", "lock", "queue", "queued", "room", "reader_waits", "dead", "writer", "threads")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = _thread.allocate_lock()  # guards the fields below
        self.queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.queued = 0  # bytes read and not yet sent
        # A lock used as a binary semaphore: the reader waits on it for room, the writer
        # releases it once `queued` drops below HIGH_WATER again.
        self.room = _thread.allocate_lock()
        self.room.acquire()
        self.reader_waits = False
        self.dead = False
        self.writer = False
        self.threads = 1  # threads still using the socket; the last one out closes it


class ThreadsServer(EchoServer):
    name = "threads"
    category = "blocking"
    reports_shedding = True
    mechanism = "a reader and a writer thread per connection; blocking accept, recv and sendall"

    def serve(self, listener: socket.socket) -> None:
        threading.stack_size(THREAD_STACK)
        sys.setswitchinterval(SWITCH_INTERVAL)
        # Past the descriptor limit the gate sheds in this thread, blocked in accept() in the
        # spare descriptor's place; the connections' threads go on serving meanwhile.
        gate = self.accept_gate(listener)
        connections = 0
        while True:
            sock = gate.accept_blocking()
            connections += 1
            # A new thread inherits its creator's signal mask, so every reader (and the writer
            # each reader starts) runs with SIGTERM, SIGINT and SIGUSR1 blocked and the kernel
            # can only deliver them to this thread, the one where Python runs signal handlers.
            # Delivered to another thread they would leave this one blocked in accept() for ever.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
            try:
                _thread.start_new_thread(self._read, (_Connection(sock),))
            except RuntimeError as exc:  # "can't start new thread": out of tasks or memory
                sock.close()
                raise ServerFailure(f"cannot start a thread for connection {connections}: {exc}") from exc
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _read(self, conn: _Connection) -> None:
        sock = conn.sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := sock.recv(RECV_SIZE):
                with conn.lock:
                    if conn.dead:
                        break
                    conn.queued += len(data)
                    full = conn.reader_waits = conn.queued >= HIGH_WATER
                    if not conn.writer:
                        # Under the lock, so the writer cannot finish before it is counted.
                        _thread.start_new_thread(self._write, (conn,))
                        conn.writer = True
                        conn.threads += 1
                conn.queue.put(data)
                if full:
                    conn.room.acquire()
            else:
                conn.queue.put(_EOF)
        except (OSError, RuntimeError):  # RuntimeError: no thread for the writer
            self._kill(conn)
        finally:
            self._leave(conn)

    def _write(self, conn: _Connection) -> None:
        get = conn.queue.get
        try:
            while (chunk := get()) is not None:
                # Coalesce what queued up meanwhile into one sendall.
                chunks = [chunk]
                while chunk and not conn.queue.empty():
                    chunk = get()
                    if chunk is None:
                        return
                    chunks.append(chunk)
                data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
                if data:
                    conn.sock.sendall(data)
                if not chunk:
                    return  # EOF, and everything before it is sent
                with conn.lock:
                    conn.queued -= len(data)
                    wake = conn.reader_waits and conn.queued < HIGH_WATER
                    if wake:
                        conn.reader_waits = False
                if wake:
                    conn.room.release()
        except OSError:
            self._kill(conn)
        finally:
            self._leave(conn)

    def _kill(self, conn: _Connection) -> None:
        """Stop both threads of a dead connection, wherever each is waiting."""
        with conn.lock:
            conn.dead = True
            wake = conn.reader_waits
            conn.reader_waits = False
        if wake:
            conn.room.release()
        conn.queue.put(_DEAD)
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or sendall
        except OSError:
            pass

    def _leave(self, conn: _Connection) -> None:
        with conn.lock:
            conn.threads -= 1
            last = conn.threads == 0
        if last:
            # Only now, with no thread in a call on it, may the descriptor be closed (and its
            # number reused).
            conn.sock.close()

    def close(self) -> None:
        # Nothing to release: the threads are daemonic and die with the process, and the
        # kernel closes their sockets. Waking them all instead would make every one of them
        # queue for the GIL, and shutdown would take seconds at 10,000 connections.
        return None
