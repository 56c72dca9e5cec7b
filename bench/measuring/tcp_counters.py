"""The kernel's TCP counters over a point, and what they say about its tail and its errors.

/proc/net/netstat (TcpExt, IpExt, ...) and /proc/net/snmp (Ip, Icmp, Tcp, Udp, ...) hold pairs
of lines: a header "TcpExt: Name1 Name2 ..." and then a value line "TcpExt: v1 v2 ..." (proc(5);
written by netstat_seq_show and snmp_seq_show in the kernel's net/ipv4/proc.c). A point takes a
snapshot before its load engine starts connecting and another after the window, and records
the difference of the counters that explain loss and tails (bench.storing.columns: tcp_*).

The counters belong to the network namespace, not to a process: every connection in the same
namespace counts, our load generator's and server's but also anything else running beside them.
A finding therefore says what the kernel counted during the point, not what the server did.
Because the "after" snapshot follows the load engine's teardown, the resets and aborts of the
clients closing their connections at the window's end are counted too: a finding blames
resets only for errors the load generator saw in the window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.storing.columns import STATUS_FAILED, STATUS_OK
from bench.storing.statistics import POINT_KEY
from bench.wording import and_list

NETSTAT = Path("/proc/net/netstat")
SNMP = Path("/proc/net/snmp")
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")

# points.csv column -> (line prefix, counter name). Meanings from the kernel's
# include/uapi/linux/snmp.h and where net/ipv4 increments them.
COUNTERS: dict[str, tuple[str, str]] = {
    # Accept queue full when a SYN or the handshake's last ACK arrived (tcp_conn_request,
    # tcp_v4_syn_recv_sock): the packet is dropped. ListenDrops counts every drop at a listener.
    "tcp_listen_overflows": ("TcpExt", "ListenOverflows"),
    "tcp_listen_drops": ("TcpExt", "ListenDrops"),
    # SYN and SYN-ACK retransmissions (both ends are in this namespace on loopback).
    "tcp_syn_retrans": ("TcpExt", "TCPSynRetrans"),
    "tcp_retrans_segs": ("Tcp", "RetransSegs"),
    "tcp_timeouts": ("TcpExt", "TCPTimeouts"),
    # Socket backlog (packets queued while the socket was owned by a process) over its limit.
    "tcp_backlog_drop": ("TcpExt", "TCPBacklogDrop"),
    # SYN queue full (inet_csk_reqsk_queue_is_full, bounded by the listen backlog): dropped, or
    # answered with a SYN cookie (net.ipv4.tcp_syncookies).
    "tcp_reqq_full_drop": ("TcpExt", "TCPReqQFullDrop"),
    "tcp_reqq_full_do_cookies": ("TcpExt", "TCPReqQFullDoCookies"),
    "tcp_syncookies_sent": ("TcpExt", "SyncookiesSent"),
    # Connections ended with a RST: data arriving after close, close with unread data, out of
    # memory or orphans, retransmissions exhausted (tcp_close, tcp_out_of_resources, tcp_write_timeout).
    "tcp_abort_on_data": ("TcpExt", "TCPAbortOnData"),
    "tcp_abort_on_close": ("TcpExt", "TCPAbortOnClose"),
    "tcp_abort_on_memory": ("TcpExt", "TCPAbortOnMemory"),
    "tcp_abort_on_timeout": ("TcpExt", "TCPAbortOnTimeout"),
    # ESTABLISHED or CLOSE_WAIT straight to CLOSED (tcp_set_state): a reset, sent or received.
    "tcp_estab_resets": ("Tcp", "EstabResets"),
    "tcp_attempt_fails": ("Tcp", "AttemptFails"),
    "tcp_out_rsts": ("Tcp", "OutRsts"),
    "tcp_ofo_queue": ("TcpExt", "TCPOFOQueue"),
    "tcp_rcvq_drop": ("TcpExt", "TCPRcvQDrop"),
    "tcp_zero_window_drop": ("TcpExt", "TCPZeroWindowDrop"),
    "tcp_memory_pressures": ("TcpExt", "TCPMemoryPressures"),
    "tcp_time_wait_overflow": ("TcpExt", "TCPTimeWaitOverflow"),
}

# TCP_TIMEOUT_INIT (include/net/tcp.h; RFC 6298 §2.1): the first retransmission of an unanswered
# SYN (or SYN-ACK) comes 1 s after it, the next ones 2 s, 4 s, ... after the one before
# (exponential backoff).
TCP_TIMEOUT_INIT_US = 1_000_000
# TCP_RTO_MIN (include/net/tcp.h): no retransmission of data comes sooner than 200 ms.
TCP_RTO_MIN_US = 200_000
# A handshake retransmitted once takes at least TCP_TIMEOUT_INIT; a little slack for the timer's
# granularity (jiffies) and for where the client's clock started.
SYN_TAIL_US = 0.9 * TCP_TIMEOUT_INIT_US
# listen(2)'s backlog is an int.
MAX_BACKLOG = 2**31 - 1
# The report states at most this many points' findings, then counts the rest.
MAX_REPORT_FINDINGS = 6

Counters = dict[tuple[str, str], int]


def parse(text: str) -> Counters:
    """Counters of one /proc/net/netstat or /proc/net/snmp text, keyed by (prefix, name), e.g.
    ("TcpExt", "ListenOverflows"); the prefix matters, since Ip and Tcp lines share names.

    Lines pair up by prefix (a header, then its values). A field that is not an integer, or a
    header without a value line, is left out: a counter this kernel lacks is absent, not 0."""
    counters: Counters = {}
    headers: dict[str, list[str]] = {}
    for line in text.splitlines():
        prefix, colon, rest = line.partition(":")
        if not colon:
            continue
        fields = rest.split()
        names = headers.pop(prefix, None)
        if names is None:
            headers[prefix] = fields
            continue
        for name, value in zip(names, fields, strict=False):
            try:
                counters[(prefix, name)] = int(value)
            except ValueError:
                continue
    return counters


def snapshot(paths: Sequence[Path] = (NETSTAT, SNMP)) -> Counters | None:
    """All counters of `paths` now, or None when none of them could be read."""
    counters: Counters = {}
    read = False
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        read = True
        counters.update(parse(text))
    return counters if read else None


def deltas(before: Mapping[tuple[str, str], int], after: Mapping[tuple[str, str], int]) -> dict[str, int | None]:
    """points.csv column -> how much the counter grew from `before` to `after`; None when either
    snapshot lacks it, or it went backwards (a namespace change: the counters only grow)."""
    out: dict[str, int | None] = {}
    for column, key in COUNTERS.items():
        if key in before and key in after and after[key] >= before[key]:
            out[column] = after[key] - before[key]
        else:
            out[column] = None
    return out


def fill_row(row: dict[str, Any], before: Counters | None) -> None:
    """Set the tcp_* columns of `row` to the counters' growth since `before` (a snapshot);
    all None when a snapshot is missing."""
    after = snapshot() if before is not None else None
    row.update(deltas(before or {}, after or {}))


def somaxconn(path: Path = SOMAXCONN) -> int | None:
    """net.core.somaxconn, the cap the kernel puts on listen()'s backlog (man 2 listen), or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def check_backlog(value: int) -> int:
    """A --backlog value: an integer 1 .. 2**31-1 (listen(2) takes an int); UsageError otherwise."""
    if not 1 <= value <= MAX_BACKLOG:
        raise UsageError(f"--backlog must be an integer from 1 to {MAX_BACKLOG}, got {value}")
    return value


def _count(row: Mapping[str, Any], key: str) -> int:
    """A counter or count of a row (dict or CSV record) as an int; empty (None, NaN, '') is 0."""
    value = _value(row, key)
    return int(value) if value is not None else 0


def _value(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _error_kinds(text: Any) -> dict[str, int]:
    """'reset=3 timeout=2' (the error_kinds column) -> {'reset': 3, 'timeout': 2}."""
    kinds: dict[str, int] = {}
    if not isinstance(text, str):
        return kinds
    for item in text.split():
        name, _, count = item.partition("=")
        if count.isdigit():
            kinds[name] = int(count)
    return kinds


def _duration(us: float) -> str:
    return f"{us / 1e6:.1f} s" if us >= 1e6 else f"{us / 1e3:.0f} ms"


def _where(row: Mapping[str, Any]) -> str:
    n = _count(row, "connections")
    if row.get("workload") == "churn":
        return f"{n:,} churn slot" + ("" if n == 1 else "s")
    return f"{n:,} connection" + ("" if n == 1 else "s")


def _backlog_fix(backlog: int | None, cap: int | None) -> str:
    """How to make the listen queue longer, given the backlog the server asked for and somaxconn."""
    if backlog is None:
        return "raise the server's listen backlog, or net.core.somaxconn, which caps it (man 2 listen)"
    if cap is not None and backlog > cap:
        return (
            f"--backlog {backlog:,} was capped at net.core.somaxconn = {cap:,} (man 2 listen): raise net.core.somaxconn"
        )
    if cap is not None and backlog == cap:
        return f"raise net.core.somaxconn and the backlog (--backlog, {backlog:,} here)"
    return f"raise the backlog (--backlog, {backlog:,} here) or net.core.somaxconn"


def explain(row: Mapping[str, Any], somaxconn: int | None = None) -> str | None:
    """A sentence saying which of the kernel's TCP counters explain the point's latency tail or
    errors, with the cause and the fix; None when they explain nothing (or were not read).

    `row` is a points.csv row (dict; empty values may be None, '' or NaN); `somaxconn` is the
    host's net.core.somaxconn, to tell when the backlog asked for was capped (man 2 listen).
    The causes, each stated only when the numbers support it:
    - a full accept or SYN queue (ListenOverflows, TCPReqQFullDrop) with a tail of about
      TCP_TIMEOUT_INIT (1 s) or more, a slow connect phase, or errors: handshakes were dropped
      and retransmitted after 1 s;
    - resets and aborts (EstabResets, TCPAbortOn*, AttemptFails) behind reset or refused errors;
    - TCP memory pressure (TCPMemoryPressures, TCPAbortOnMemory): net.ipv4.tcp_mem;
    - retransmitted data (RetransSegs less TCPSynRetrans, TCPTimeouts): on loopback nothing is
      lost on a wire, so the stack dropped segments, each costing at least TCP_RTO_MIN (200 ms);
    - TIME_WAIT overflow (net.ipv4.tcp_max_tw_buckets), beside errors.
    """
    if _value(row, "tcp_listen_overflows") is None and _value(row, "tcp_retrans_segs") is None:
        return None
    p99, p999 = _value(row, "p99_us"), _value(row, "p999_us")
    tail = max((p for p in (p99, p999) if p is not None), default=0.0)
    connect_s = _value(row, "connect_s") if row.get("workload") != "churn" else None
    slow_connect = connect_s is not None and connect_s * 1e6 >= SYN_TAIL_US
    # A point that failed before its window has only its connect phase's errors.
    errors = _count(row, "errors") or _count(row, "connect_errors")
    kinds = _error_kinds(row.get("error_kinds"))
    c = {column: _count(row, column) for column in COUNTERS}
    causes: list[str] = []

    queue_drops = c["tcp_listen_overflows"] + c["tcp_reqq_full_drop"]
    # What a dropped handshake becomes: a connect that times out, a request that does (churn
    # times the connect too), or a RST when net.ipv4.tcp_abort_on_overflow is set.
    queue_errors = sum(kinds.get(k, 0) for k in ("connect_timeout", "connect_refused", "connect_error", "timeout"))
    if queue_drops and (tail >= SYN_TAIL_US or slow_connect or queue_errors):
        counted = []
        if c["tcp_listen_overflows"]:
            counted.append(f"{c['tcp_listen_overflows']:,} listen overflows")
        if c["tcp_reqq_full_drop"]:
            counted.append(f"{c['tcp_reqq_full_drop']:,} SYNs dropped at a full SYN queue")
        if c["tcp_syn_retrans"]:
            counted.append(f"{c['tcp_syn_retrans']:,} SYN retransmissions")
        text = f"the kernel counted {and_list(counted)} during the point; "
        text += "the listen queue was full, so handshakes were dropped"
        if c["tcp_syn_retrans"]:
            text += " and SYNs retransmitted after 1 s (TCP's initial RTO, TCP_TIMEOUT_INIT in include/net/tcp.h)"
            # The RTO doubles: a second retransmission lands 3 s after the first SYN.
            if max(tail, _value(row, "max_us") or 0.0) >= 3 * SYN_TAIL_US:
                text += ", then after 2 s more"
        cookies = max(c["tcp_syncookies_sent"], c["tcp_reqq_full_do_cookies"])
        if cookies:
            text += (
                f"; {cookies:,} SYNs were answered with SYN cookies: the SYN queue, bounded by the same backlog, "
                "overflowed too"
            )
        backlog = _value(row, "backlog")
        causes.append(f"{text}; {_backlog_fix(int(backlog) if backlog is not None else None, somaxconn)}")

    resets = kinds.get("reset", 0) + kinds.get("short_read", 0)
    refused = kinds.get("connect_refused", 0) + kinds.get("connect_error", 0)
    counted = []
    if resets and c["tcp_estab_resets"]:
        counted.append(f"{c['tcp_estab_resets']:,} resets of established connections (EstabResets)")
    if resets and c["tcp_abort_on_close"]:
        counted.append(f"{c['tcp_abort_on_close']:,} closes with unread data, which send a RST (TCPAbortOnClose)")
    if resets and c["tcp_abort_on_data"]:
        counted.append(f"{c['tcp_abort_on_data']:,} RSTs for data arriving after close (TCPAbortOnData)")
    if (resets or kinds.get("timeout")) and c["tcp_abort_on_timeout"]:
        counted.append(
            f"{c['tcp_abort_on_timeout']:,} connections given up after their retransmissions ran out "
            "(TCPAbortOnTimeout, net.ipv4.tcp_retries2)"
        )
    if refused and c["tcp_attempt_fails"]:
        counted.append(f"{c['tcp_attempt_fails']:,} failed connection attempts (AttemptFails)")
    if counted:
        causes.append(
            f"the kernel counted {and_list(counted)} during the point: a side closed or aborted connections with "
            "requests in flight (a server that crashed, hit a limit or closed early; see its warnings)"
        )

    memory = c["tcp_memory_pressures"] + c["tcp_abort_on_memory"]
    if memory and (tail >= TCP_RTO_MIN_US or errors):
        counted = [f"{c['tcp_memory_pressures']:,} TCP memory pressure episodes (TCPMemoryPressures)"]
        if c["tcp_abort_on_memory"]:
            counted.append(f"{c['tcp_abort_on_memory']:,} connections aborted for memory (TCPAbortOnMemory)")
        if c["tcp_rcvq_drop"]:
            counted.append(f"{c['tcp_rcvq_drop']:,} segments dropped from receive queues (TCPRcvQDrop)")
        causes.append(
            f"the kernel counted {and_list(counted)} during the point: TCP's sockets used more memory than "
            "net.ipv4.tcp_mem allows (pages); raise net.ipv4.tcp_mem or hold fewer buffered bytes per connection"
        )

    data_retrans = max(c["tcp_retrans_segs"] - c["tcp_syn_retrans"], 0)
    if data_retrans and not queue_drops and (tail >= TCP_RTO_MIN_US or kinds.get("timeout")):
        counted = [f"{data_retrans:,} retransmitted segments besides SYNs (RetransSegs)"]
        if c["tcp_timeouts"]:
            counted.append(f"{c['tcp_timeouts']:,} retransmission timeouts (TCPTimeouts)")
        drops = [
            f"{c[col]:,} {what}"
            for col, what in (
                ("tcp_backlog_drop", "socket backlog drops (TCPBacklogDrop)"),
                ("tcp_rcvq_drop", "receive queue drops (TCPRcvQDrop)"),
                ("tcp_zero_window_drop", "zero-window drops (TCPZeroWindowDrop)"),
            )
            if c[col]
        ]
        text = (
            f"the kernel counted {and_list(counted)} during the point; loopback loses nothing on a wire, so the stack "
            "dropped them, and each loss costs at least TCP's minimum RTO (200 ms, TCP_RTO_MIN in include/net/tcp.h)"
        )
        if c["tcp_zero_window_drop"]:
            fix = "a receiver stopped reading (zero window): look at the slower side's CPU"
        elif c["tcp_backlog_drop"] or c["tcp_rcvq_drop"]:
            fix = "raise the receive buffers (net.ipv4.tcp_rmem, net.core.rmem_max)"
        else:
            fix = "find the drop with nstat -az (other traffic in this network namespace counts too)"
        causes.append(f"{text}: {and_list(drops)}; {fix}" if drops else f"{text}; {fix}")

    if c["tcp_time_wait_overflow"] and (causes or errors):
        causes.append(
            f"the kernel counted {c['tcp_time_wait_overflow']:,} TIME_WAIT overflows (TCPTimeWaitOverflow): "
            "net.ipv4.tcp_max_tw_buckets was reached and closed sockets skipped TIME_WAIT; raise it"
        )

    if not causes:
        return None
    symptoms = []
    if p99 is not None and p99 >= TCP_RTO_MIN_US:
        symptoms.append(f"p99 {_duration(p99)}")
    if (
        p999 is not None
        and p999 >= TCP_RTO_MIN_US
        and (p99 is None or p999 >= SYN_TAIL_US > p99 or p99 < TCP_RTO_MIN_US)
    ):
        symptoms.append(f"p99.9 {_duration(p999)}")
    if slow_connect:
        symptoms.append(f"connecting took {connect_s:.1f} s")
    if errors:
        symptoms.append(f"{errors:,} errors ({' '.join(f'{k}={v:,}' for k, v in kinds.items())})")
    head = f"{', '.join(symptoms) or 'the point'} at {_where(row)}"
    return f"{head}: {causes[0]}" + "".join(f"; also {cause}" for cause in causes[1:])


def tcp_findings(df: Any, meta: Mapping[str, Any] | None = None, limit: int = MAX_REPORT_FINDINGS) -> list[str]:
    """The report's findings from the TCP counters: for each (model, workload, connections) of
    the run's ok and failed points (a pandas DataFrame of points.csv) whose counters explain a
    tail or errors, one sentence (its first repeat's, with how many repeats showed it); at most
    `limit` of them, then a count of the rest. somaxconn comes from the run's host fingerprint
    (`meta`, run.json)."""
    if df.empty or "tcp_listen_overflows" not in df.columns:
        return []
    cap = (meta or {}).get("host", {}).get("sysctl", {}).get("net.core.somaxconn")
    cap = int(cap) if isinstance(cap, int | float) else None
    measured = df[df["status"].isin([STATUS_OK, STATUS_FAILED])]
    out: list[str] = []
    point = [c for c in POINT_KEY if c in measured.columns]
    for keys, group in measured.groupby(point, sort=False, dropna=False):
        model = keys[0] if isinstance(keys, tuple) else keys
        sentences = [s for record in group.to_dict("records") if (s := explain(record, cap))]
        if not sentences:
            continue
        repeats = f" (in {len(sentences)} of {len(group)} repeats)" if len(group) > 1 else ""
        out.append(f"{model}: {sentences[0]}{repeats}.")
    if len(out) > limit:
        rest = len(out) - limit
        out = [
            *out[:limit],
            f"The kernel's TCP counters explain a tail or errors at {rest} more point(s): see their reasons.",
        ]
    return out
