"""A small io_uring binding of our own over the raw syscalls (x86-64 Linux only).

Why not a package: the PyPI `liburing` wheel dies with SIGILL on these CPUs (it is built with
AVX-512) and `pyuring` only does synchronous socket operations. This covers what a completion-
based echo server needs: multishot accept, recv into kernel-provided buffers, send, close,
cancel and a one-shot poll, batched submission, and reaping.

Safety rules the binding enforces, so that callers cannot corrupt memory by accident:

- Buffers stay alive until their operation is over: every prepared operation keeps a reference
  (a ctypes export of the buffer, which also stops a bytearray from being resized) until its
  last completion is reaped, i.e. the first one without IORING_CQE_F_MORE.
- user_data identifies one operation: preparing a second one with a user_data still in flight
  is refused.
- EINTR from io_uring_enter is retried as PEP 475 does: the Python signal handlers run first
  (an exception they raise propagates), then the call is repeated.
- Memory ordering: the SQ tail, CQ head and buffer-ring tail are shared with the kernel and are
  read and written here with plain ctypes loads and stores. On x86-64 (TSO) that is enough
  without SQPOLL: stores are not reordered with earlier stores (SQE bytes and buffer entries
  are visible before the tail that publishes them: the release the kernel pairs with its
  acquire) and loads are not reordered with later loads or stores (CQEs are read after the
  tail that announced them and before the head store that hands their slots back). Each ctypes
  access is an opaque C call, so no compiler can reorder them either. With SQPOLL (not used)
  checking IORING_SQ_NEED_WAKEUP would need a full barrier; other architectures would need
  real acquire/release operations, hence the x86-64 check in `support_problem`.
- Without SQPOLL the kernel only reads the SQ inside io_uring_enter, which is what makes
  `discard_unsubmitted` (moving the tail back) safe.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import socket
import struct
import time
from collections.abc import Callable

SYS_IO_URING_SETUP = 425
SYS_IO_URING_ENTER = 426
SYS_IO_URING_REGISTER = 427

OP_NOP = 0
OP_POLL_ADD = 6
OP_ACCEPT = 13
OP_ASYNC_CANCEL = 14
OP_CLOSE = 19
OP_SEND = 26
OP_RECV = 27

SETUP_CQSIZE = 1 << 3
SETUP_CLAMP = 1 << 4
SETUP_SUBMIT_ALL = 1 << 7  # 5.18: one bad SQE does not stop the rest of the batch
SETUP_COOP_TASKRUN = 1 << 8  # 5.19: no IPI to interrupt us for completions
SETUP_SINGLE_ISSUER = 1 << 12  # 6.0
SETUP_DEFER_TASKRUN = 1 << 13  # 6.1: completion work runs only when we ask for events
# Single-threaded server: completion work is done when we wait, not by interrupting us.
DEFAULT_SETUP_FLAGS = SETUP_SUBMIT_ALL | SETUP_COOP_TASKRUN | SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN
_BASIC_SETUP_FLAGS = SETUP_CQSIZE | SETUP_CLAMP

FEAT_SINGLE_MMAP = 1 << 0
FEAT_NODROP = 1 << 1
FEAT_EXT_ARG = 1 << 8

ENTER_GETEVENTS = 1 << 0
ENTER_EXT_ARG = 1 << 3

SQE_BUFFER_SELECT = 1 << 5
ACCEPT_MULTISHOT = 1 << 0  # in sqe->ioprio, Linux 5.19
ASYNC_CANCEL_ALL = 1 << 0
ASYNC_CANCEL_FD = 1 << 1
ASYNC_CANCEL_ANY = 1 << 2

CQE_F_BUFFER = 1 << 0
CQE_F_MORE = 1 << 1
CQE_BUFFER_SHIFT = 16

REGISTER_PBUF_RING = 22  # Linux 5.19

_OFF_SQ_RING = 0
_OFF_CQ_RING = 0x8000000
_OFF_SQES = 0x10000000
_U32 = 0xFFFFFFFF
_U16 = 0xFFFF

# struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off, addr, len, op flags,
# user_data, buf_index/buf_group, personality, splice_fd_in, addr3, pad.
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")
# struct io_uring_cqe (16 bytes): user_data, res, flags.
_CQE = struct.Struct("<QiI")
# struct io_uring_buf without its trailing `resv`: entry 0's resv *is* the ring tail, so
# writing the full 16 bytes of an entry would clobber the tail.
_BUF = struct.Struct("<QIH")
_BUF_TAIL_OFFSET = 14

# What the kernel reads from or writes into: anything exposing a contiguous byte buffer.
Buffer = bytes | bytearray | memoryview | mmap.mmap

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64


class _SqringOffsets(ctypes.Structure):
    _fields_ = [
        *((name, _u32) for name in ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array")),
        ("resv1", _u32),
        ("user_addr", _u64),
    ]


class _CqringOffsets(ctypes.Structure):
    _fields_ = [
        *((name, _u32) for name in ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags")),
        ("resv1", _u32),
        ("user_addr", _u64),
    ]


class _Params(ctypes.Structure):
    _fields_ = [
        *((name, _u32) for name in ("sq_entries", "cq_entries", "flags", "sq_thread_cpu", "sq_thread_idle")),
        ("features", _u32),
        ("wq_fd", _u32),
        ("resv", _u32 * 3),
        ("sq_off", _SqringOffsets),
        ("cq_off", _CqringOffsets),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class _GeteventsArg(ctypes.Structure):
    _fields_ = [("sigmask", _u64), ("sigmask_sz", _u32), ("pad", _u32), ("ts", _u64)]


class _BufReg(ctypes.Structure):
    _fields_ = [("ring_addr", _u64), ("ring_entries", _u32), ("bgid", ctypes.c_uint16), ("flags", ctypes.c_uint16)]
    _fields_ += [("resv", _u64 * 3)]


assert ctypes.sizeof(_Params) == 120 and ctypes.sizeof(_BufReg) == 40 and _SQE.size == 64

_libc = ctypes.CDLL(None, use_errno=True)


def _syscall(*argtypes: type) -> Callable[..., int]:
    # One function object per syscall, so each gets its own fixed argument types.
    func = _libc["syscall"]
    func.restype = ctypes.c_long
    func.argtypes = [ctypes.c_long, *argtypes]
    return func


_setup = _syscall(ctypes.c_uint, ctypes.c_void_p)
_enter = _syscall(ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t)
_register = _syscall(ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint)

# Runs the Python-level signal handlers now (GIL held); an exception they raise is re-raised
# by ctypes, since pythonapi calls check the error indicator.
_check_signals = ctypes.pythonapi.PyErr_CheckSignals
_check_signals.restype = ctypes.c_int
_check_signals.argtypes = []


def run_signal_handlers() -> None:
    """Run pending Python signal handlers now; what they raise propagates."""
    _check_signals()


# Keep-alive references of rings closed with operations still in flight: the kernel may touch
# those buffers until its own asynchronous teardown is done, so they are never freed.
_GRAVEYARD: list[object] = []


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _pin(buf: Buffer) -> tuple[object, int, int]:
    """(anchor, address, length) of a writable contiguous buffer; keep `anchor` alive while the
    kernel may use the address. Read-only buffers are copied first."""
    if type(buf) is bytearray and buf:
        # The common case, without the memoryview (this is per send, in a hot loop).
        anchor = ctypes.c_char.from_buffer(buf)
        return anchor, ctypes.addressof(anchor), len(buf)
    view = memoryview(buf)
    if view.readonly:
        view = memoryview(bytearray(view))
    if not view.c_contiguous or view.nbytes == 0:
        raise ValueError("io_uring buffers must be non-empty and contiguous")
    anchor = ctypes.c_char.from_buffer(view)
    return anchor, ctypes.addressof(anchor), view.nbytes


class Ring:
    """One io_uring instance: prepare operations, `submit` them (and wait), reap `completions`."""

    def __init__(self, entries: int = 256, cq_entries: int = 0, flags: int = DEFAULT_SETUP_FLAGS) -> None:
        params = _Params()
        params.flags = flags | SETUP_CLAMP | (SETUP_CQSIZE if cq_entries else 0)
        params.cq_entries = cq_entries
        fd = _setup(SYS_IO_URING_SETUP, entries, ctypes.byref(params))
        if fd < 0 and ctypes.get_errno() == errno.EINVAL and flags & ~_BASIC_SETUP_FLAGS:
            # An older kernel that lacks some optional flag: fall back to the basics.
            params = _Params()
            params.flags = SETUP_CLAMP | (SETUP_CQSIZE if cq_entries else 0)
            params.cq_entries = cq_entries
            fd = _setup(SYS_IO_URING_SETUP, entries, ctypes.byref(params))
        if fd < 0:
            raise _fail("io_uring_setup")
        self.fd = fd
        self.flags = params.flags
        self.features = params.features
        self.sq_entries = params.sq_entries
        self.cq_entries = params.cq_entries
        try:
            self._map(params)
        except BaseException:
            os.close(fd)
            raise
        self._sq_tail = self._sq_khead.value
        self._cq_head = self._cq_khead.value
        # SQ slot -> user_data of the SQE prepared there, for discard_unsubmitted.
        self._slot_user_data = [0] * self.sq_entries
        # user_data -> what must stay alive until that operation's last completion.
        self._inflight: dict[int, object] = {}

    def _map(self, p: _Params) -> None:
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * _CQE.size
        if p.features & FEAT_SINGLE_MMAP:
            sq_size = cq_size = max(sq_size, cq_size)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        # Python's mmap dup()s the ring fd for each mapping (so a ring shows up as two or three
        # io_uring fds in /proc); the price of mappings that cannot be used after close.
        self._sq_mm = mmap.mmap(self.fd, sq_size, flags, prot, offset=_OFF_SQ_RING)
        if p.features & FEAT_SINGLE_MMAP:
            self._cq_mm = self._sq_mm
        else:
            self._cq_mm = mmap.mmap(self.fd, cq_size, flags, prot, offset=_OFF_CQ_RING)
        self._sqes = mmap.mmap(self.fd, p.sq_entries * _SQE.size, flags, prot, offset=_OFF_SQES)
        self._sq_khead = _u32.from_buffer(self._sq_mm, p.sq_off.head)
        self._sq_ktail = _u32.from_buffer(self._sq_mm, p.sq_off.tail)
        self._cq_khead = _u32.from_buffer(self._cq_mm, p.cq_off.head)
        self._cq_ktail = _u32.from_buffer(self._cq_mm, p.cq_off.tail)
        self._sq_mask = _u32.from_buffer(self._sq_mm, p.sq_off.ring_mask).value
        self._cq_mask = _u32.from_buffer(self._cq_mm, p.cq_off.ring_mask).value
        self._cqes_offset = p.cq_off.cqes
        # Slot i of the SQ index array always names SQE i, so an SQE's slot is tail & mask.
        struct.pack_into(f"<{p.sq_entries}I", self._sq_mm, p.sq_off.array, *range(p.sq_entries))

    # -- state ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Operations prepared and not yet finished (their last completion not reaped)."""
        return len(self._inflight)

    def is_pending(self, user_data: int) -> bool:
        return user_data in self._inflight

    # -- preparing operations -----------------------------------------------------------

    def _prep(
        self,
        opcode: int,
        fd: int,
        user_data: int,
        keep: object = None,
        addr: int = 0,
        length: int = 0,
        op_flags: int = 0,
        ioprio: int = 0,
        sqe_flags: int = 0,
        buf_group: int = 0,
    ) -> None:
        if self.fd < 0:
            raise ValueError("ring is closed")
        if user_data in self._inflight:
            raise ValueError(f"user_data {user_data:#x} is already in flight")
        tail = self._sq_tail
        if (tail - self._sq_khead.value) & _U32 >= self.sq_entries:
            # The SQ is full: hand what is queued to the kernel (an extra io_uring_enter, only
            # when one loop iteration queues more than the ring holds).
            self.submit()
            if (tail - self._sq_khead.value) & _U32 >= self.sq_entries:
                raise OSError(errno.EBUSY, "io_uring submission queue full")
        slot = tail & self._sq_mask
        # Packing first: a value out of range raises here, before anything is recorded.
        _SQE.pack_into(
            self._sqes, slot * 64, opcode, sqe_flags, ioprio, fd, 0, addr, length, op_flags,
            user_data, buf_group, 0, 0, 0, 0,
        )  # fmt: skip
        # Recorded before the tail moves, so the SQE cannot reach the kernel with its buffer unkept.
        self._inflight[user_data] = keep
        self._slot_user_data[slot] = user_data
        self._sq_tail = (tail + 1) & _U32

    def nop(self, user_data: int) -> None:
        self._prep(OP_NOP, -1, user_data)

    def accept_multishot(self, listen_fd: int, user_data: int, flags: int = socket.SOCK_CLOEXEC) -> None:
        """One SQE, a completion per accepted connection (res = the new fd). A completion without
        IORING_CQE_F_MORE means the kernel stopped accepting: the caller must prepare it again."""
        self._prep(OP_ACCEPT, listen_fd, user_data, op_flags=flags, ioprio=ACCEPT_MULTISHOT)

    def poll_add(self, fd: int, events: int, user_data: int) -> None:
        """One completion when `fd` has any of `events` (POLLIN, ...): res = the events it has.
        One-shot: the caller prepares it again for the next readiness."""
        # poll32_events shares the op_flags word (the kernel reads it as native-endian u32).
        self._prep(OP_POLL_ADD, fd, user_data, op_flags=events)

    def recv(self, fd: int, buf: Buffer, user_data: int, flags: int = 0) -> None:
        """Receive into `buf` (writable); it is kept alive and unresizable until completion."""
        anchor, addr, length = _pin(buf)
        self._prep(OP_RECV, fd, user_data, anchor, addr=addr, length=length, op_flags=flags)

    def recv_provided(self, fd: int, group: BufferGroup, user_data: int, flags: int = 0) -> None:
        """Receive into a buffer the kernel picks from `group` when data arrives, so an idle
        connection holds no buffer. The completion has IORING_CQE_F_BUFFER and the buffer id
        in flags >> 16 (see BufferGroup.take), or res = -ENOBUFS when the group was empty."""
        # len must be the buffer size: some kernels clamp the receive to it, and 0 would read 0.
        self._prep(OP_RECV, fd, user_data, group, 0, group.buf_size, flags, 0, SQE_BUFFER_SELECT, group.bgid)

    def send(self, fd: int, buf: Buffer, user_data: int, flags: int = socket.MSG_NOSIGNAL) -> None:
        """Send from `buf` (kept alive until completion). res may be short: resubmit the rest."""
        anchor, addr, length = _pin(buf)
        self._prep(OP_SEND, fd, user_data, anchor, addr, length, flags)

    def close_fd(self, fd: int, user_data: int) -> None:
        """Close `fd` in the kernel, batched with the other SQEs. Only once nothing is in flight
        on it: a queued operation would otherwise run on whatever next gets that number."""
        self._prep(OP_CLOSE, fd, user_data)

    def cancel(self, target_user_data: int, user_data: int) -> None:
        self._prep(OP_ASYNC_CANCEL, -1, user_data, addr=target_user_data)

    def cancel_fd(self, fd: int, user_data: int) -> None:
        """Cancel every operation in flight on `fd` (Linux 5.19)."""
        self._prep(OP_ASYNC_CANCEL, fd, user_data, op_flags=ASYNC_CANCEL_FD | ASYNC_CANCEL_ALL)

    def cancel_all(self, user_data: int) -> None:
        """Cancel every operation in flight on this ring (Linux 5.19)."""
        self._prep(OP_ASYNC_CANCEL, -1, user_data, op_flags=ASYNC_CANCEL_ANY | ASYNC_CANCEL_ALL)

    # -- submitting and reaping ---------------------------------------------------------

    def submit(self, wait_nr: int = 0, timeout: float | None = None) -> int:
        """Submit everything prepared, in one io_uring_enter, and wait until at least `wait_nr`
        completions are ready (or `timeout` seconds pass). Returns the number of SQEs the kernel
        took. Completions are always flushed into the CQ (needed with DEFER_TASKRUN)."""
        if self.fd < 0:
            raise ValueError("ring is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        submitted = 0
        while True:
            # Plain store: on x86-64 the SQE bytes written before it are visible first.
            self._sq_ktail.value = self._sq_tail
            to_submit = (self._sq_tail - self._sq_khead.value) & _U32
            flags, arg, arg_size = ENTER_GETEVENTS, None, 0
            if deadline is not None and wait_nr:
                remaining = max(deadline - time.monotonic(), 0.0)
                ts = _Timespec(int(remaining), int(remaining % 1 * 1e9))
                getevents = _GeteventsArg(ts=ctypes.addressof(ts))
                flags |= ENTER_EXT_ARG
                arg, arg_size = ctypes.byref(getevents), ctypes.sizeof(getevents)
            ret = _enter(SYS_IO_URING_ENTER, self.fd, to_submit, wait_nr, flags, arg, arg_size)
            if ret >= 0:
                submitted += ret
                if not wait_nr or self.ready() >= wait_nr:
                    return submitted
                # A signal cut the wait short after the submission part: the kernel then
                # reports success (the count submitted) instead of EINTR. Same treatment.
            else:
                err = ctypes.get_errno()
                if err == errno.ETIME:
                    return submitted
                if err in (errno.EAGAIN, errno.EBUSY):
                    # Out of resources or completions backed up: reap, then call again.
                    return submitted
                if err != errno.EINTR:
                    raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
            # PEP 475: run the handlers (SIGTERM's raises and unwinds us), then wait again. The
            # kernel's SQ head says what it already took, so nothing is submitted twice.
            _check_signals()
            if deadline is not None and time.monotonic() >= deadline:
                return submitted

    def ready(self) -> int:
        """Completions in the CQ not yet reaped."""
        return (self._cq_ktail.value - self._cq_head) & _U32

    def completions(self) -> list[tuple[int, int, int]]:
        """Reap every ready completion as (user_data, res, flags); res < 0 is -errno."""
        if self.fd < 0:
            raise ValueError("ring is closed")
        head = self._cq_head
        tail = self._cq_ktail.value  # plain load, then the CQE loads: not reordered on x86-64
        if head == tail:
            return []
        out = []
        mm, base, mask, inflight = self._cq_mm, self._cqes_offset, self._cq_mask, self._inflight
        unpack = _CQE.unpack_from
        while head != tail:
            cqe = unpack(mm, base + (head & mask) * 16)
            if not cqe[2] & CQE_F_MORE:
                # The operation is over: its buffer may go. pop(.., None): a reap interrupted by
                # an exception before the head store below can see the same CQE again.
                inflight.pop(cqe[0], None)
            out.append(cqe)
            head = (head + 1) & _U32
        self._cq_head = head
        self._cq_khead.value = head  # after every CQE was read: hands the slots back
        return out

    def discard_unsubmitted(self) -> list[int]:
        """Drop the SQEs prepared but not yet taken by the kernel; their user_data values."""
        khead = self._sq_khead.value
        dropped = []
        pos = khead
        while pos != self._sq_tail:
            user_data = self._slot_user_data[pos & self._sq_mask]
            self._inflight.pop(user_data, None)
            dropped.append(user_data)
            pos = (pos + 1) & _U32
        self._sq_tail = khead
        self._sq_ktail.value = khead
        return dropped

    def close(self) -> None:
        """Close the ring. Cancel and reap first where possible: whatever is still in flight
        here has its buffers kept for the life of the process."""
        if self.fd < 0:
            return
        if self._inflight:
            _GRAVEYARD.append(self._inflight)
            self._inflight = {}
        # ctypes views export the mappings; they must go before the mappings can be closed.
        del self._sq_khead, self._sq_ktail, self._cq_khead, self._cq_ktail
        for mm in {id(m): m for m in (self._sqes, self._cq_mm, self._sq_mm)}.values():
            mm.close()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BufferGroup:
    """A ring of `count` buffers of `buf_size` bytes registered with the kernel (Linux 5.19
    IORING_REGISTER_PBUF_RING), for `Ring.recv_provided`. The kernel takes a buffer only when a
    receive completes; `take` copies the data out and gives the buffer straight back."""

    def __init__(self, ring: Ring, bgid: int, count: int, buf_size: int) -> None:
        if count & (count - 1) or not 0 < count <= 32768:
            raise ValueError("count must be a power of two, at most 32768")
        self.bgid = bgid
        self.count = count
        self._mask = count - 1
        self.buf_size = buf_size
        # Anonymous mappings: page-aligned, as the kernel requires for the ring.
        self._ring_mm = mmap.mmap(-1, count * 16)
        self._pool = mmap.mmap(-1, count * buf_size)
        self.view = memoryview(self._pool)
        self._anchors = (ctypes.c_char.from_buffer(self._ring_mm), ctypes.c_char.from_buffer(self._pool))
        self._pool_addr = ctypes.addressof(self._anchors[1])
        self._ktail = ctypes.c_uint16.from_buffer(self._ring_mm, _BUF_TAIL_OFFSET)
        reg = _BufReg(ring_addr=ctypes.addressof(self._anchors[0]), ring_entries=count, bgid=bgid)
        if _register(SYS_IO_URING_REGISTER, ring.fd, REGISTER_PBUF_RING, ctypes.byref(reg), 1) < 0:
            raise _fail("io_uring_register(PBUF_RING)")
        self._tail = 0
        for bid in range(count):
            self.give_back(bid)

    def give_back(self, bid: int) -> None:
        """Return buffer `bid` to the kernel."""
        tail = self._tail
        _BUF.pack_into(self._ring_mm, (tail & self._mask) * 16, self._pool_addr + bid * self.buf_size,
                       self.buf_size, bid)  # fmt: skip
        self._tail = tail = (tail + 1) & _U16
        self._ktail.value = tail  # after the entry: x86-64 keeps the two stores in order

    def take(self, flags: int, res: int) -> bytearray:
        """The `res` bytes a completion with these `flags` received, copied; the buffer goes back."""
        bid = flags >> CQE_BUFFER_SHIFT
        start = bid * self.buf_size
        data = bytearray(self.view[start : start + res]) if res > 0 else bytearray()
        self.give_back(bid)
        return data


def kernel_release() -> str:
    return platform.release()


def support_problem() -> str | None:
    """Why this binding cannot serve sockets here, or None. Creates and probes a real ring (a
    millisecond or so): cache the answer."""
    machine = platform.machine()
    if machine != "x86_64":
        return f"the io_uring binding is x86-64 only (syscall numbers, memory ordering); this is {machine}"
    try:
        ring = Ring(8)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return f"io_uring_setup: ENOSYS: kernel {kernel_release()} built without io_uring"
        if exc.errno == errno.EPERM:
            try:
                with open("/proc/sys/kernel/io_uring_disabled") as fh:
                    setting = f"kernel.io_uring_disabled={fh.read().strip()}"
            except OSError:
                setting = "seccomp or a security policy"
            return f"io_uring_setup: EPERM: io_uring is disabled here ({setting})"
        return f"io_uring_setup failed: {exc}"
    with ring:
        if not ring.features & FEAT_EXT_ARG:
            return f"kernel {kernel_release()} lacks IORING_FEAT_EXT_ARG (needs Linux 5.11+)"
        try:
            BufferGroup(ring, 0, 2, 64)
        except OSError as exc:
            return f"kernel {kernel_release()} lacks provided buffer rings (needs Linux 5.19+): {exc}"
        return _probe_multishot_accept(ring)


def _probe_multishot_accept(ring: Ring) -> str | None:
    lacks = f"kernel {kernel_release()} lacks multishot accept (needs Linux 5.19+)"
    with socket.socket() as listener, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        # A loopback connect completes in the kernel, so the accept below finds it queued.
        client.connect(listener.getsockname())
        ring.accept_multishot(listener.fileno(), 1)
        ring.submit(wait_nr=1, timeout=2.0)
        first = next((c for c in ring.completions() if c[0] == 1), None)
        if first is not None and first[1] >= 0:
            os.close(first[1])
        # Stop the accept before its listener is closed (it may have ended already).
        if ring.is_pending(1):
            ring.cancel(1, 2)
        deadline = time.monotonic() + 2.0
        while ring.in_flight and time.monotonic() < deadline:
            ring.submit(wait_nr=1, timeout=0.5)
            for user_data, res, _flags in ring.completions():
                if user_data == 1 and res >= 0:
                    os.close(res)
    if first is None:
        return f"multishot accept probe: no completion within 2 s (kernel {kernel_release()})"
    if first[1] == -errno.EINVAL or (first[1] >= 0 and not first[2] & CQE_F_MORE):
        return lacks
    if first[1] < 0:
        return f"multishot accept probe failed: {os.strerror(-first[1])}"
    return None
