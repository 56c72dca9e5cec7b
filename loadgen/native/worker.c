/*
 * The compiled load worker: the same worker as `python -m loadgen`, without the interpreter.
 *
 * It speaks the manager protocol of loadgen/control.py on stdin/stdout (JSON lines):
 *   -> {"event":"connected", ...}  once its connections are open (or have failed, by kind)
 *   <- {"event":"schedule","start_at":S,"window_start":A,"window_end":B}  (CLOCK_MONOTONIC s)
 *   -> {"event":"result", ...}     after the window
 * Latencies travel as sparse [[microseconds, count], ...] lists whose buckets are exactly those
 * of an HdrHistogram with lowest value 1 us and 3 significant digits (sub-bucket count 2048:
 * HdrHistogram_c, src/hdr_histogram.c, counts_index_for): the manager folds them into the
 * same HdrHistograms as the Python worker's, losing nothing.
 *
 * Workloads (loadgen/request_loop.py and loadgen/churn.py hold the reference semantics):
 *   closed  each active connection sends a payload, waits for the whole echo, verifies it
 *           byte for byte (connection id + sequence number in every 16 bytes), repeats;
 *   open    each active connection sends on a fixed schedule (rate / connections per s);
 *           latency counts from the intended send time (coordinated omission corrected, as
 *           wrk2 does); the service time from the actual send is kept beside it; the loop
 *           wakes at each send time to the microsecond (a timerfd on epoll, the wait's own
 *           nanosecond timeout on io_uring);
 *   idle    silent connections held open beside the active ones, watched for closes;
 *   churn   N slots each connect, send one request, verify the echo, close, again.
 * The request loop of closed, open and idle points runs on io_uring (Linux 6.1+) or on epoll
 * (--io auto|epoll|io_uring, auto by default; see "io_uring: the request loop's other back
 * end"); churn and the connect phase always use epoll. The connected message says which
 * ("io") and, when auto fell back to epoll, why ("io_why").
 * A request counts in the window when its echo was verified at t, window_start <= t < window_end.
 * Beside the window's figures, a timeline counts verified echoes (churn: cycles) and errors per
 * 100 ms bin from start_at to the window's end (loadgen/timeline.py holds the reference rules).
 *
 * Plain C99 + Linux headers; every system call's result is checked. Built on first use by
 * loadgen/c_worker.py through cbuild (cc -O2 -Wall -Wextra).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/io_uring.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24 /* include/uapi/linux/in.h, Linux 4.2 */
#endif

/* Same constants as the Python worker (loadgen/request_loop.py, connect.py, churn.py). */
#define RECV_SIZE 65536
#define CONNECT_IN_FLIGHT 256
#define MAX_EVENTS 1024
#define TIMEOUT_SCAN_NS 250000000LL
#define CONNECT_SCAN_NS 50000000LL
#define NS 1000000000LL
#define HIST_MAX_US 60000000LL
#define PATTERN_MAX 65536
#define RAMP_MAX_NS 1000000000LL

enum kind { CONNECT_REFUSED, CONNECT_TIMEOUT, CONNECT_OTHER, RESET, SHORT_READ, MISMATCH, TIMEOUT, NKINDS };
static const char *const kind_name[NKINDS] = {"connect_refused", "connect_timeout", "connect_error", "reset",
                                              "short_read",      "mismatch",        "timeout"};
static uint64_t errs[NKINDS];
/* Connections the server closed or reset before their first echo (a subset of reset and
 * short_read): what a server shedding connections at its descriptor limit looks like from here. */
static uint64_t closed_before_echo;

/* ---- options ---------------------------------------------------------------------------- */

enum workload { CLOSED, OPEN, IDLE, CHURN };
enum io_backend { IO_AUTO, IO_EPOLL, IO_URING };
static struct {
    const char *host;
    int port;
    long connections, idle, payload, worker_id, first_index, spread;
    enum workload workload;
    double rate, connect_timeout_s, request_timeout_s;
    const char *cpus;
    int die_with_parent;
    enum io_backend io;
} opt = {.host = "127.0.0.1", .port = -1, .connections = -1, .payload = 64, .spread = 1,
         .connect_timeout_s = 5.0, .request_timeout_s = 2.0, .cpus = ""};

static void usage_error(const char *what)
{
    fprintf(stderr, "loadgen-worker: %s\n", what);
    exit(2);
}

static void fail_errno(const char *what)
{
    fprintf(stderr, "loadgen-worker: %s: %s\n", what, strerror(errno));
    exit(3);
}

static long parse_long(const char *text, const char *name, long min)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min) {
        fprintf(stderr, "loadgen-worker: %s takes an integer >= %ld, not '%s'\n", name, min, text);
        exit(2);
    }
    return v;
}

static double parse_double(const char *text, const char *name)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= 0) || isinf(v)) {
        fprintf(stderr, "loadgen-worker: %s takes a finite number >= 0, not '%s'\n", name, text);
        exit(2);
    }
    return v;
}

static void parse_options(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},          {"port", required_argument, 0, 'p'},
        {"connections", required_argument, 0, 'c'},   {"workload", required_argument, 0, 'w'},
        {"payload", required_argument, 0, 'l'},       {"rate", required_argument, 0, 'r'},
        {"idle", required_argument, 0, 'i'},          {"worker-id", required_argument, 0, 'W'},
        {"first-index", required_argument, 0, 'f'},   {"spread", required_argument, 0, 's'},
        {"connect-timeout", required_argument, 0, 'T'}, {"request-timeout", required_argument, 0, 'R'},
        {"cpus", required_argument, 0, 'C'},          {"die-with-parent", no_argument, 0, 'D'},
        {"io", required_argument, 0, 'I'},            {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = (int)parse_long(optarg, "--port", 1); break;
        case 'c': opt.connections = parse_long(optarg, "--connections", 1); break;
        case 'l': opt.payload = parse_long(optarg, "--payload", 1); break;
        case 'r': opt.rate = parse_double(optarg, "--rate"); break;
        case 'i': opt.idle = parse_long(optarg, "--idle", 0); break;
        case 'W': opt.worker_id = parse_long(optarg, "--worker-id", 0); break;
        case 'f': opt.first_index = parse_long(optarg, "--first-index", 0); break;
        case 's': opt.spread = parse_long(optarg, "--spread", 1); break;
        case 'T': opt.connect_timeout_s = parse_double(optarg, "--connect-timeout"); break;
        case 'R': opt.request_timeout_s = parse_double(optarg, "--request-timeout"); break;
        case 'C': opt.cpus = optarg; break;
        case 'D': opt.die_with_parent = 1; break;
        case 'I':
            if (!strcmp(optarg, "auto")) opt.io = IO_AUTO;
            else if (!strcmp(optarg, "epoll")) opt.io = IO_EPOLL;
            else if (!strcmp(optarg, "io_uring")) opt.io = IO_URING;
            else usage_error("--io is auto, epoll or io_uring");
            break;
        case 'w':
            if (!strcmp(optarg, "closed")) opt.workload = CLOSED;
            else if (!strcmp(optarg, "open")) opt.workload = OPEN;
            else if (!strcmp(optarg, "idle")) opt.workload = IDLE;
            else if (!strcmp(optarg, "churn")) opt.workload = CHURN;
            else usage_error("--workload is closed, open, idle or churn");
            break;
        default: usage_error("unknown option (see loadgen/native/worker.c)");
        }
    }
    if (optind < argc)
        usage_error("unexpected argument");
    if (opt.port > 65535 || opt.port < 1)
        usage_error("--port 1..65535 is required");
    if (opt.connections < 1)
        usage_error("--connections N >= 1 is required");
    if (opt.payload > 0x7fffffffL)
        usage_error("--payload is at most 2 GiB");
    if (opt.workload == OPEN && !(opt.rate > 0))
        usage_error("--workload open needs --rate > 0");
}

/* ---- child set-up: die with the harness, pin ------------------------------------------- */

static void die_with_parent(void)
{
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0) < 0)
        fail_errno("prctl(PR_SET_PDEATHSIG)");
    /* The parent may have died before prctl took effect: we were re-parented already (to init,
     * or to a subreaper, either way a different process). */
    if (getppid() != parent || parent == 1)
        exit(3);
}

static void pin(const char *spec)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    int any = 0;
    const char *p = spec;
    while (*p) {
        char *end;
        long lo = strtol(p, &end, 10), hi = lo;
        if (end == p || lo < 0 || lo >= CPU_SETSIZE)
            usage_error("--cpus takes a list such as 1 or 0,2-3");
        if (*end == '-') {
            p = end + 1;
            hi = strtol(p, &end, 10);
            if (end == p || hi < lo || hi >= CPU_SETSIZE)
                usage_error("--cpus takes a list such as 1 or 0,2-3");
        }
        for (long c = lo; c <= hi; c++)
            CPU_SET((int)c, &set);
        any = 1;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            usage_error("--cpus takes a list such as 1 or 0,2-3");
    }
    if (any && sched_setaffinity(0, sizeof set, &set) < 0)
        fail_errno("sched_setaffinity");
}

/* ---- clock, histograms ------------------------------------------------------------------ */

static int64_t now_ns(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC is system-wide: Python's time.monotonic() in the manager reads it too. */
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        fail_errno("clock_gettime");
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

/* HdrHistogram's layout for lowest 1, 3 significant digits: values below 2048 exactly, then
 * each power of two split into 1024 sub-buckets. Up to 60 s (2^26 us): 2048 + 15 * 1024. */
#define HIST_SLOTS (2048 + 15 * 1024)
struct hist {
    uint64_t count[HIST_SLOTS];
};

static int hist_index(int64_t us)
{
    if (us < 1)
        us = 1;
    if (us > HIST_MAX_US)
        us = HIST_MAX_US;
    if (us < 2048)
        return (int)us;
    int msb = 63 - __builtin_clzll((unsigned long long)us);
    int shift = msb - 10; /* >= 1 */
    return 2048 + (shift - 1) * 1024 + (int)((us >> shift) - 1024);
}

static int64_t hist_value(int index)
{
    if (index < 2048)
        return index;
    int shift = (index - 2048) / 1024 + 1;
    return (int64_t)((index - 2048) % 1024 + 1024) << shift;
}

static struct hist *hist_new(void)
{
    struct hist *h = calloc(1, sizeof *h);
    if (!h)
        fail_errno("calloc");
    return h;
}

static void hist_record_ns(struct hist *h, int64_t ns)
{
    h->count[hist_index(ns / 1000)]++;
}

/* ---- the timeline: completions and errors per 100 ms (loadgen/timeline.py) -------------- */

#define TL_STEP_NS 100000000LL
#define TL_SNAP_NS 1000LL /* a bin edge this close to a window edge is moved onto it */
#define TL_MAX_BINS 36000L /* an hour; a longer point keeps its first hour */

static struct {
    int64_t start;
    int64_t *edge;   /* edge[i]: bin i's start; edge[n]: the end; edge[n + 1]: INT64_MAX */
    long n, cur;     /* cur: the bin of the latest time seen (times only grow, so it walks) */
    uint64_t *completed, *errors; /* n + 1 each: bin n holds what came after the end, unreported */
} tl;

/* Bins from start_at to the window's end, edges snapped onto the window's, so that a window of
 * whole bins starts and ends on edges and its bins hold exactly the requests counted in it. */
static void tl_init(int64_t start, int64_t window_start, int64_t window_end)
{
    int64_t span = window_end - start - TL_SNAP_NS;
    long n = span > 0 ? (long)((span + TL_STEP_NS - 1) / TL_STEP_NS) : 1;
    if (n < 1)
        n = 1;
    if (n > TL_MAX_BINS)
        n = TL_MAX_BINS;
    tl.edge = calloc((size_t)n + 2, sizeof *tl.edge);
    tl.completed = calloc((size_t)n + 1, sizeof *tl.completed);
    tl.errors = calloc((size_t)n + 1, sizeof *tl.errors);
    if (!tl.edge || !tl.completed || !tl.errors)
        fail_errno("calloc");
    for (long i = 0; i < n; i++) {
        int64_t e = start + i * TL_STEP_NS;
        tl.edge[i] = llabs(e - window_start) <= TL_SNAP_NS ? window_start : e;
    }
    tl.edge[n] = n < TL_MAX_BINS ? window_end : start + n * TL_STEP_NS;
    tl.edge[n + 1] = INT64_MAX;
    tl.start = start, tl.n = n, tl.cur = 0;
}

/* The bin of time t: a comparison per call while t stays in the current bin. */
static long tl_bin(int64_t t)
{
    while (t >= tl.edge[tl.cur + 1])
        tl.cur++;
    while (tl.cur > 0 && t < tl.edge[tl.cur])
        tl.cur--;
    return tl.cur;
}

/* An error of this kind, counted for the result and, once the schedule is known, in the timeline. */
static void count_error(int kind)
{
    errs[kind]++;
    if (tl.edge)
        tl.errors[tl_bin(now_ns())]++;
}

static void put_counts(const char *key, const uint64_t *v, long n)
{
    printf("\"%s\":[", key);
    for (long i = 0; i < n; i++)
        printf(i ? ",%llu" : "%llu", (unsigned long long)v[i]);
    printf("]");
}

static void put_timeline(void)
{
    if (!tl.edge)
        return;
    printf(",\"timeline\":{\"start\":%.9f,\"step_s\":%.1f,", (double)tl.start / NS, (double)TL_STEP_NS / NS);
    put_counts("completed", tl.completed, tl.n);
    putchar(',');
    put_counts("errors", tl.errors, tl.n);
    putchar('}');
}

/* ---- output ----------------------------------------------------------------------------- */

static void put_hist(const char *key, const struct hist *h)
{
    printf(",\"%s\":[", key);
    int first = 1;
    for (int i = 0; h && i < HIST_SLOTS; i++) {
        if (!h->count[i])
            continue;
        printf("%s[%lld,%llu]", first ? "" : ",", (long long)hist_value(i), (unsigned long long)h->count[i]);
        first = 0;
    }
    printf("]");
}

static void put_errors(void)
{
    printf(",\"errors\":{");
    int first = 1;
    for (int k = 0; k < NKINDS; k++) {
        if (!errs[k])
            continue;
        printf("%s\"%s\":%llu", first ? "" : ",", kind_name[k], (unsigned long long)errs[k]);
        first = 0;
    }
    printf("}");
}

static void put_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void flush_line(void)
{
    printf("}\n");
    /* The manager gone means nobody wants the result: end quietly. */
    if (fflush(stdout) != 0)
        exit(3);
}

/* Distinct notes (why connections failed), as the Python worker keeps them. */
#define MAX_NOTES 8
static char notes[MAX_NOTES][160];
static int nnotes;

static void note(const char *call, int err)
{
    char text[160];
    snprintf(text, sizeof text, "%s: %s", call, strerror(err));
    for (int i = 0; i < nnotes; i++)
        if (!strcmp(notes[i], text))
            return;
    if (nnotes < MAX_NOTES)
        memcpy(notes[nnotes++], text, sizeof text);
}

/* ---- payloads --------------------------------------------------------------------------- */

/* loadgen.request_loop.make_payload: struct.pack("<IIQ", id, seq, 0x5EEDF00DCAFE0000 | seq & 0xFFFF)
 * repeated, so a misrouted or stale echo is caught. One pattern buffer serves every
 * connection; it is refilled when another (id, seq) needs it. */
static unsigned char pattern[PATTERN_MAX + 16];
static size_t pattern_filled; /* bytes of the pattern written for (pattern_id, pattern_seq) */
static uint32_t pattern_id, pattern_seq;
static unsigned char stamp[16];

static void put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Bytes [off, off+n) of request (id, seq), n at most PATTERN_MAX: a pointer into the pattern,
 * written only as far as asked, so a small payload costs a few stores per request. */
static const unsigned char *payload_at(uint32_t id, uint32_t seq, size_t off, size_t n)
{
    if (!pattern_filled || pattern_id != id || pattern_seq != seq) {
        put_le(stamp, id, 4);
        put_le(stamp + 4, seq, 4);
        put_le(stamp + 8, 0x5EEDF00DCAFE0000ULL | (seq & 0xFFFF), 8);
        pattern_id = id, pattern_seq = seq, pattern_filled = 0;
    }
    for (size_t need = off % 16 + n; pattern_filled < need; pattern_filled += 16)
        memcpy(pattern + pattern_filled, stamp, 16);
    return pattern + off % 16;
}

static int payload_matches(uint32_t id, uint32_t seq, size_t off, const unsigned char *data, size_t n)
{
    while (n) {
        size_t chunk = n < PATTERN_MAX ? n : PATTERN_MAX;
        if (memcmp(data, payload_at(id, seq, off, chunk), chunk))
            return 0;
        data += chunk, off += chunk, n -= chunk;
    }
    return 1;
}

/* ---- sockets ---------------------------------------------------------------------------- */

static int ep = -1;
static unsigned char rbuf[RECV_SIZE];
static struct sockaddr_in server_addr;

static int connect_kind(int err)
{
    if (err == ECONNREFUSED)
        return CONNECT_REFUSED;
    if (err == ETIMEDOUT)
        return CONNECT_TIMEOUT;
    return CONNECT_OTHER;
}

static void watch(int op, int fd, uint32_t events, uint32_t index)
{
    struct epoll_event e = {.events = events, .data.u32 = index};
    if (epoll_ctl(ep, op, fd, &e) < 0)
        fail_errno("epoll_ctl");
}

/* A non-blocking socket with TCP_NODELAY, bound to the index-th spread source address when
 * `spread` > 1 (loadgen/source_addresses.py: 127.1.x.y, IP_BIND_ADDRESS_NO_PORT so that
 * connect() picks the port per destination), connect() started. Returns the descriptor, or
 * -1 with the error counted (and a note). *fatal is set when socket() itself failed: out of
 * descriptors, no later attempt can succeed. */
static int start_connect(long address_index, long spread, int *fatal, int64_t *started)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        note("socket()", errno);
        *fatal = 1;
        return -1;
    }
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
        note("setsockopt(TCP_NODELAY)", errno);
        goto other;
    }
    if (spread > 1) {
        long slot = address_index % spread;
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl((127u << 24) | (1u << 16) | ((uint32_t)(slot / 250) << 8) | (uint32_t)(slot % 250 + 1));
        if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) < 0) {
            note("setsockopt(IP_BIND_ADDRESS_NO_PORT)", errno);
            goto other;
        }
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
            note("bind()", errno);
            goto other;
        }
    }
    /* The clock starts before connect(): on loopback most of the handshake happens inside it. */
    *started = now_ns();
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 && errno != EINPROGRESS) {
        int err = errno;
        if (close(fd) < 0)
            fail_errno("close");
        count_error(connect_kind(err));
        return -1;
    }
    return fd;
other:
    if (close(fd) < 0)
        fail_errno("close");
    count_error(CONNECT_OTHER);
    return -1;
}

static int socket_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

static void close_fd(int fd)
{
    /* close() also drops the descriptor from the epoll set: nothing else holds its file. */
    if (close(fd) < 0 && errno != EINTR)
        fail_errno("close");
}

/* ---- io_uring: the request loop's other back end ---------------------------------------- */

/* The request loop runs on io_uring where the kernel has what it needs (Linux 6.1),
 * else on epoll (--io chooses; auto is the default). Per request, epoll costs an epoll_wait()
 * report, a recv() and a send(), each a system call, and the wake-up that puts the socket on
 * epoll's ready list. Here:
 *  - each active connection has one multishot recv (IORING_RECV_MULTISHOT, Linux 6.0) armed for
 *    its life: every segment of an echo lands in a kernel-provided buffer (a buffer ring,
 *    IORING_REGISTER_PBUF_RING, 5.19) and is announced by a completion, with no call of ours;
 *  - the sends a loop pass prepares are submitted by the same io_uring_enter() that waits for
 *    the next completions: one system call per pass for all of them (a wait hands over at most
 *    a few tens of completions since Linux 6.13, so passes are many at high rates);
 *  - DEFER_TASKRUN (6.1) runs the kernel's completion work when we wait, in a batch, on our CPU.
 * io_uring_setup(2), io_uring_enter(2), io_uring_register(2), io_uring_buf_ring(7) describe the
 * interface; liburing wraps the same calls, and we keep to the system calls and Linux headers.
 * README ("The load engines against a plain C client") has what it measured against the plain
 * epoll client. */

#define RING_MIN_ENTRIES 64UL
#define RING_MAX_ENTRIES 32768UL /* IORING_MAX_ENTRIES (io_uring/io_uring.h); also the buffer ring's */
/* A full submission queue is submitted and reused (ring_sqe), so its size only sets how many
 * operations one io_uring_enter() carries; 4096 keeps a pass of thousands of sends in a few
 * calls without pinning 64 B per connection. */
#define RING_SQ_MAX 4096UL
#define RING_BUF_MIN 128UL
#define RING_BUF_BUDGET (32UL << 20) /* bytes of receive buffers per worker at most, above the minimum */
#define RING_SEND_BUDGET (64UL << 20)
#define RING_SEND_MIN 4096UL

#ifndef IORING_ENTER_ABS_TIMER
#define IORING_ENTER_ABS_TIMER (1U << 5) /* include/uapi/linux/io_uring.h, Linux 6.12 */
#endif

enum ring_op { RING_RECV = 1, RING_SEND, RING_IDLE, RING_CANCEL };

static struct {
    int fd;        /* -1: the request loop is on epoll */
    int abs_timer; /* the wait's timeout can be a CLOCK_MONOTONIC instant (6.12), else relative */
    int settling;  /* the loop is over: completions only end operations, nothing new starts */
    long closing;  /* operations of closed connections not yet over (each holds its socket) */
    unsigned *sq_head, *sq_tail, *cq_head, *cq_tail;
    unsigned sq_mask, cq_mask, sq_entries, tail;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    struct io_uring_buf_ring *bufs;
    unsigned nbufs, buf_tail, buf_returned;
    size_t buf_size;
    unsigned char *buf_mem;
    /* Per active connection, the current request's 16-byte pattern repeated over a chunk + 16
     * bytes: a send reads its bytes until it completes, so they cannot be the shared pattern. */
    unsigned char *send_mem;
    size_t chunk, send_size;
} ring = {.fd = -1};
static char ring_why[200]; /* why the request loop is on epoll although io_uring was possible */

static unsigned long pow2_at_least(unsigned long n, unsigned long lo, unsigned long hi)
{
    unsigned long v = lo;
    while (v < n && v < hi)
        v <<= 1;
    return v;
}

static int ring_refuse(const char *call, int err, const char *hint)
{
    snprintf(ring_why, sizeof ring_why, "%s: %s%s", call, strerror(err), hint);
    if (ring.fd >= 0 && close(ring.fd) < 0)
        fail_errno("close(io_uring)");
    ring.fd = -1; /* what was mapped stays mapped, unused: a few pages, once */
    return -1;
}

/* Gives a provided buffer to the kernel; ring_publish_bufs() hands over all given so far. */
static void ring_give_back(unsigned bid)
{
    struct io_uring_buf *slot = &ring.bufs->bufs[ring.buf_tail++ & (ring.nbufs - 1)];
    slot->addr = (uint64_t)(uintptr_t)(ring.buf_mem + (size_t)bid * ring.buf_size);
    slot->len = (uint32_t)ring.buf_size;
    slot->bid = (uint16_t)bid;
    ring.buf_returned = 1;
}

static void ring_publish_bufs(void)
{
    if (ring.buf_returned) {
        __atomic_store_n(&ring.bufs->tail, (uint16_t)ring.buf_tail, __ATOMIC_RELEASE);
        ring.buf_returned = 0;
    }
}

/* Sets up the ring, its buffer ring and the send buffers for `active` active and `idle` idle
 * connections. Returns 0, or -1 with ring_why set and no descriptor left open (the request
 * loop then runs on epoll). Memory it cannot get is fatal, as everywhere in this worker. */
static int ring_setup(long active, long idle)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    unsigned long entries = pow2_at_least(2UL * (unsigned long)active, RING_MIN_ENTRIES, RING_SQ_MAX);
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
              IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    /* Room for every completion that can be outstanding at once (an echo's segments, bounded by
     * the buffers, one per active connection; a send per connection; a poll per idle one), so
     * that the kernel need not hold completions back on its overflow list (where they would
     * still not be lost: IORING_FEAT_NODROP). */
    p.cq_entries = (unsigned)pow2_at_least(2UL * (unsigned long)active + (unsigned long)idle + 64, 2 * entries,
                                           2 * RING_MAX_ENTRIES);
    int fd = (int)syscall(__NR_io_uring_setup, (unsigned)entries, &p);
    if (fd < 0)
        return ring_refuse("io_uring_setup", errno,
                           errno == EINVAL   ? " (DEFER_TASKRUN needs Linux 6.1)"
                           : errno == EPERM  ? " (kernel.io_uring_disabled, or a seccomp filter)"
                           : errno == ENOSYS ? " (a kernel without io_uring)"
                                             : "");
    ring.fd = fd;
    unsigned need = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP | IORING_FEAT_EXT_ARG;
    if ((p.features & need) != need)
        return ring_refuse("io_uring_setup", ENOTSUP, " (features SINGLE_MMAP, NODROP, EXT_ARG)");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    unsigned char *rings = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (rings == MAP_FAILED)
        return ring_refuse("mmap(io_uring)", errno, "");
    ring.sqes = mmap(NULL, p.sq_entries * sizeof *ring.sqes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                     IORING_OFF_SQES);
    if (ring.sqes == MAP_FAILED)
        return ring_refuse("mmap(io_uring SQEs)", errno, "");
    ring.sq_head = (unsigned *)(rings + p.sq_off.head);
    ring.sq_tail = (unsigned *)(rings + p.sq_off.tail);
    ring.sq_mask = *(unsigned *)(rings + p.sq_off.ring_mask);
    ring.sq_entries = p.sq_entries;
    ring.cq_head = (unsigned *)(rings + p.cq_off.head);
    ring.cq_tail = (unsigned *)(rings + p.cq_off.tail);
    ring.cq_mask = *(unsigned *)(rings + p.cq_off.ring_mask);
    ring.cqes = (struct io_uring_cqe *)(rings + p.cq_off.cqes);
    ring.tail = *ring.sq_tail;
    unsigned *array = (unsigned *)(rings + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++)
        array[i] = i; /* SQE slot i is submitted from ring slot i, always */

    /* A buffer per active connection: each has one echo in flight (open loop: at most one). */
    ring.nbufs = (unsigned)pow2_at_least((unsigned long)active, RING_MIN_ENTRIES, RING_MAX_ENTRIES);
    size_t want = ((size_t)opt.payload + 63) & ~(size_t)63, most = RING_BUF_BUDGET / ring.nbufs;
    ring.buf_size = want < RING_BUF_MIN ? RING_BUF_MIN : want > most ? (most > RING_BUF_MIN ? most : RING_BUF_MIN) : want;
    if (ring.buf_size > RECV_SIZE)
        ring.buf_size = RECV_SIZE;
    ring.bufs = mmap(NULL, ring.nbufs * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring.bufs == MAP_FAILED)
        fail_errno("mmap(buffer ring)");
    ring.buf_mem = malloc(ring.nbufs * ring.buf_size);
    if (!ring.buf_mem)
        fail_errno("malloc(receive buffers)");
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)ring.bufs;
    reg.ring_entries = ring.nbufs;
    reg.bgid = 0;
    if (syscall(__NR_io_uring_register, fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        return ring_refuse("io_uring_register(PBUF_RING)", errno, errno == EINVAL ? " (needs Linux 5.19)" : "");
    for (unsigned b = 0; b < ring.nbufs; b++)
        ring_give_back(b);
    ring_publish_bufs();

    unsigned long per = RING_SEND_BUDGET / (unsigned long)(active > 0 ? active : 1);
    size_t chunk = per < RING_SEND_MIN ? RING_SEND_MIN : per;
    if (chunk > (size_t)opt.payload)
        chunk = (size_t)opt.payload;
    if (chunk > PATTERN_MAX - 16)
        chunk = PATTERN_MAX - 16;
    ring.chunk = chunk;
    ring.send_size = ((chunk + 15) & ~(size_t)15) + 16;
    ring.send_mem = malloc((size_t)(active > 0 ? active : 1) * ring.send_size);
    if (!ring.send_mem)
        fail_errno("malloc(send buffers)");
    /* An absolute timeout (IORING_ENTER_ABS_TIMER, on the ring's clock, CLOCK_MONOTONIC by
     * default) is measured from our own reading of the clock: a relative one counts from when
     * the kernel starts waiting, after this pass's sends, and each wake-up would come that late. */
    struct __kernel_timespec zero = {0, 0};
    struct io_uring_getevents_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.ts = (uint64_t)(uintptr_t)&zero;
    unsigned probe = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG | IORING_ENTER_ABS_TIMER;
    if (syscall(__NR_io_uring_enter, fd, 0, 0, probe, &arg, sizeof arg) == 0)
        ring.abs_timer = 1;
    else if (errno != EINVAL)
        fail_errno("io_uring_enter");
    return 0;
}

/* Submits what was prepared. With `wait`, also waits until `deadline` (CLOCK_MONOTONIC ns) for a
 * completion. */
static void ring_enter(int wait, int64_t deadline)
{
    __atomic_store_n(ring.sq_tail, ring.tail, __ATOMIC_RELEASE);
    unsigned pending = ring.tail - __atomic_load_n(ring.sq_head, __ATOMIC_ACQUIRE);
    int64_t at = 0;
    if (wait) {
        at = ring.abs_timer ? deadline : deadline - now_ns();
        if (at < 0)
            at = 0;
    }
    struct __kernel_timespec ts = {.tv_sec = at / NS, .tv_nsec = at % NS};
    struct io_uring_getevents_arg arg;
    memset(&arg, 0, sizeof arg);
    arg.ts = (uint64_t)(uintptr_t)&ts;
    /* GETEVENTS even without waiting: with DEFER_TASKRUN it is what runs the completion work. */
    unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG | (ring.abs_timer ? IORING_ENTER_ABS_TIMER : 0);
    if (syscall(__NR_io_uring_enter, ring.fd, pending, wait ? 1 : 0, flags, &arg, sizeof arg) < 0 &&
        errno != ETIME && errno != EINTR && errno != EAGAIN && errno != EBUSY)
        fail_errno("io_uring_enter");
    /* ETIME: nothing completed in time; EINTR: a signal; EAGAIN/EBUSY: the kernel could not take
     * the SQEs just now (no memory for requests; before 5.19/6.x, completions on the overflow
     * list). Either way the caller reaps what there is and comes back; SQEs not taken stay
     * queued for the next call (pending is recounted from the kernel's head). */
}

/* A zeroed submission queue entry; when the queue is full, what it holds is submitted first. */
static struct io_uring_sqe *ring_sqe(void)
{
    for (int tries = 0; ring.tail - __atomic_load_n(ring.sq_head, __ATOMIC_ACQUIRE) >= ring.sq_entries; tries++) {
        if (tries == 100) {
            errno = EBUSY;
            fail_errno("io_uring submission queue stays full");
        }
        ring_enter(0, 0);
    }
    struct io_uring_sqe *sqe = &ring.sqes[ring.tail++ & ring.sq_mask];
    memset(sqe, 0, sizeof *sqe);
    return sqe;
}

/* Asks the kernel to cancel the operation tagged `tag` (IORING_OP_ASYNC_CANCEL by user_data, a
 * hash lookup): submitted with the next pass, its own completion ignored. */
static void ring_cancel(uint64_t tag)
{
    struct io_uring_sqe *sqe = ring_sqe();
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->addr = tag;
    sqe->user_data = RING_CANCEL;
}

/* ---- connections of closed, open and idle points ---------------------------------------- */

struct conn {
    int fd;            /* -1 once closed */
    uint32_t id;       /* connection id in the payload: the point-wide index */
    uint32_t seq;
    uint32_t waiting;  /* open loop: waiting for its next send time, nothing in flight */
    uint32_t writing;  /* epoll: EPOLLOUT registered, part of the request is still to be sent;
                          io_uring: a send of the current request is in flight */
    uint32_t armed;    /* io_uring: its recv (idle: its poll) is in flight */
    uint32_t answered; /* an echo of it was verified */
    size_t sent, received;
    int64_t t_send, t_intended, t_connect;
};

static struct conn *conns;
static long nconns, nactive;
static uint64_t connected;
#define TIMER_INDEX UINT32_MAX

/* The connect phase: open opt.connections + opt.idle connections with at most
 * CONNECT_IN_FLIGHT connects in flight, each given opt.connect_timeout_s. */
static void connect_all(struct hist *h, double *seconds)
{
    long want = opt.workload == CHURN ? 0 : opt.connections + opt.idle;
    conns = calloc((size_t)(want ? want : 1), sizeof *conns);
    if (!conns)
        fail_errno("calloc");
    int64_t started = now_ns(), timeout = (int64_t)(opt.connect_timeout_s * NS);
    long launched = 0, in_flight = 0, finished = 0, oldest = 0;
    int64_t last_scan = started;
    static struct epoll_event events[MAX_EVENTS];
    while (finished < want) {
        while (launched < want && in_flight < CONNECT_IN_FLIGHT) {
            int fatal = 0;
            struct conn *c = &conns[launched];
            c->fd = start_connect(opt.first_index + launched, opt.spread, &fatal, &c->t_connect);
            launched++;
            if (fatal) {
                /* Out of descriptors: every connection not yet launched fails the same way. */
                errs[CONNECT_OTHER] += (uint64_t)(want - launched + 1);
                finished += want - launched + 1;
                for (long i = launched; i < want; i++)
                    conns[i].fd = -1;
                launched = want;
                break;
            }
            if (c->fd < 0) {
                finished++;
                continue;
            }
            watch(EPOLL_CTL_ADD, c->fd, EPOLLOUT, (uint32_t)(c - conns));
            in_flight++;
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 50);
        if (n < 0 && errno != EINTR)
            fail_errno("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = &conns[events[i].data.u32];
            if (c->fd < 0 || c->t_connect == 0)
                continue;
            int err = socket_error(c->fd);
            in_flight--, finished++;
            if (err) {
                close_fd(c->fd);
                c->fd = -1;
                errs[connect_kind(err)]++;
                continue;
            }
            hist_record_ns(h, now_ns() - c->t_connect);
            c->t_connect = 0;
            /* Out of the set until the request loop gives it its role: even with no events
             * asked for, a hang-up would be reported on every epoll_wait of this phase. */
            if (epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL) < 0)
                fail_errno("epoll_ctl");
            connected++;
        }
        int64_t now = now_ns();
        /* Connects finish roughly in launch order: those before `oldest` are all done, so the
         * scan for stale ones covers about the connects in flight, not every one launched. */
        while (oldest < launched && (conns[oldest].fd < 0 || !conns[oldest].t_connect))
            oldest++;
        if (in_flight && now - last_scan > CONNECT_SCAN_NS) {
            last_scan = now;
            for (long i = oldest; i < launched; i++) {
                struct conn *c = &conns[i];
                if (c->fd >= 0 && c->t_connect && now - c->t_connect > timeout) {
                    close_fd(c->fd);
                    c->fd = -1;
                    errs[CONNECT_TIMEOUT]++;
                    in_flight--, finished++;
                }
            }
        }
    }
    /* Pack the open connections to the front: the first opt.connections are the active ones. */
    long kept = 0;
    for (long i = 0; i < want; i++)
        if (conns[i].fd >= 0)
            conns[kept++] = conns[i];
    nconns = kept;
    nactive = kept < opt.connections ? kept : opt.connections;
    *seconds = (double)(now_ns() - started) / NS;
}

/* ---- the schedule ----------------------------------------------------------------------- */

static double field(const char *line, const char *key)
{
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *p = strstr(line, quoted);
    if (!p)
        return -1;
    p = strchr(p + strlen(quoted), ':');
    if (!p)
        return -1;
    char *end;
    double v = strtod(p + 1, &end);
    return end == p + 1 ? -1 : v;
}

static int read_schedule(int64_t *start_at, int64_t *window_start, int64_t *window_end)
{
    static char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        if (!strstr(line, "\"event\"") || !strstr(line, "\"schedule\""))
            continue; /* not a control message */
        double s = field(line, "start_at"), a = field(line, "window_start"), b = field(line, "window_end");
        if (s < 0 || a < 0 || b < a)
            return -1;
        *start_at = (int64_t)(s * NS), *window_start = (int64_t)(a * NS), *window_end = (int64_t)(b * NS);
        return 0;
    }
    return -1;
}

/* After the result the connections stay open until the manager closes our stdin: it reads
 * the server's counters (context switches, memory, threads) at the window's end, and a
 * thread- or process-per-connection server whose connections closed at that moment would have
 * taken its threads' counts with them. */
static void hold_until_released(void)
{
    static char line[256];
    while (fgets(line, sizeof line, stdin))
        ;
}

static void sleep_until(int64_t when)
{
    /* A start shared by every worker on the system-wide clock, not a pause. */
    struct timespec ts = {.tv_sec = when / NS, .tv_nsec = when % NS};
    int rc;
    while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)) == EINTR)
        ;
    if (rc) {
        errno = rc;
        fail_errno("clock_nanosleep");
    }
}

/* ---- the window and what was measured in it --------------------------------------------- */

static struct {
    int64_t start, end;        /* the scheduled window */
    int64_t measured_start;    /* 0 until the loop first saw the window open */
    int64_t measured_end;
    struct rusage usage_start, usage_end;
    uint64_t requests, sent_in_window;
    struct hist *corrected, *uncorrected, *connect;
} win;

static void maybe_open_window(int64_t now)
{
    if (!win.measured_start && now >= win.start) {
        win.measured_start = now;
        if (getrusage(RUSAGE_SELF, &win.usage_start) < 0)
            fail_errno("getrusage");
    }
}

/* By the completion's own time, as the timeline's bins count it. */
static int in_window(int64_t t)
{
    return t >= win.start && t < win.end;
}

/* A verified echo (churn: cycle) at `done`: counted in the timeline; true when it also counts in
 * the window's figures. */
static int completed_at(int64_t done)
{
    tl.completed[tl_bin(done)]++;
    return in_window(done);
}

/* ns from `now` to the window's next edge, at most backstop_ns, never negative. */
static int64_t until_edge_ns(int64_t now, int64_t backstop_ns)
{
    int64_t until = win.end - now;
    if (!win.measured_start && win.start - now < until)
        until = win.start - now;
    if (until > backstop_ns)
        until = backstop_ns;
    return until < 0 ? 0 : until;
}

static int epoll_timeout_ms(int64_t now, int64_t backstop_ns)
{
    /* Round up, as CPython's epoll.poll() does: never wake before the window's edge. */
    return (int)((until_edge_ns(now, backstop_ns) + 999999) / 1000000);
}

/* ---- open loop: a min-heap of (intended send time, connection) and a timerfd ----------- */

struct due {
    int64_t at;
    uint32_t index;
};
static struct due *heap;
static long heap_len;

static void heap_push(int64_t at, uint32_t index)
{
    long i = heap_len++;
    while (i > 0) {
        long parent = (i - 1) / 2;
        if (heap[parent].at <= at)
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = (struct due){at, index};
}

static struct due heap_pop(void)
{
    struct due top = heap[0], last = heap[--heap_len];
    long i = 0;
    for (;;) {
        long child = 2 * i + 1;
        if (child >= heap_len)
            break;
        if (child + 1 < heap_len && heap[child + 1].at < heap[child].at)
            child++;
        if (heap[child].at >= last.at)
            break;
        heap[i] = heap[child];
        i = child;
    }
    if (heap_len)
        heap[i] = last;
    return top;
}

static int timer_fd = -1;
static int64_t timer_armed_at = -1;

static void arm_timer(int64_t at)
{
    if (at == timer_armed_at)
        return;
    /* Zero would disarm the timer: a time already past becomes the smallest one that fires. */
    int64_t t = at > 0 ? at : 1;
    struct itimerspec spec = {.it_value = {.tv_sec = t / NS, .tv_nsec = t % NS}};
    if (timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0)
        fail_errno("timerfd_settime");
    timer_armed_at = at;
}

static void consume_timer(void)
{
    uint64_t expirations;
    if (read(timer_fd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
        fail_errno("read(timerfd)");
    timer_armed_at = -1;
}

/* ---- the request loop ------------------------------------------------------------------- */

/* ---- one request's bytes on a socket: shared by the request loop and churn -------------- */

enum io { IO_DONE, IO_MORE, IO_FAILED };

/* Send what is left of request (id, seq) from *sent on; IO_MORE when the socket buffer is full. */
static enum io send_request(int fd, uint32_t id, uint32_t seq, size_t *sent)
{
    size_t size = (size_t)opt.payload;
    while (*sent < size) {
        size_t n = size - *sent;
        if (n > PATTERN_MAX)
            n = PATTERN_MAX;
        ssize_t k = send(fd, payload_at(id, seq, *sent, n), n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return IO_MORE;
            return IO_FAILED;
        }
        *sent += (size_t)k;
    }
    return IO_DONE;
}

/* Read what the socket holds of the echo of request (id, seq), checking it byte for byte
 * (length and content: connection id, sequence). IO_FAILED sets *kind: reset, short read (EOF),
 * or mismatch, which is also an echo that runs past the payload.
 *
 * Active connections are edge-triggered (see ACTIVE_EVENTS), so this reads until the echo is
 * whole or the socket is drained: a recv() that returns less than it asked for has emptied the
 * receive queue (tcp_recvmsg copies while data is queued), and the next segment raises a new
 * edge. Not so when the peer's FIN came in the same segment: recv() returns the data short and
 * the end of stream only at the next call, and no new edge will come. So with `hangup` (the
 * event carried EPOLLRDHUP, EPOLLHUP or EPOLLERR) it reads on until EAGAIN or the end.
 * Bytes beyond the echo stay queued: in the closed loop the next read, for the next request's
 * echo, finds them a mismatch (as the plain client in benchmarks/ reads); in the open loop, the
 * read at the next echo, or none when the window ends first. */
static enum io recv_echo(int fd, uint32_t id, uint32_t seq, size_t *received, int *kind, int hangup)
{
    for (;;) {
        size_t owed = (size_t)opt.payload - *received;
        size_t ask = owed < sizeof rbuf ? owed : sizeof rbuf;
        ssize_t n = recv(fd, rbuf, ask, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return IO_MORE;
            *kind = RESET;
            return IO_FAILED;
        }
        if (n == 0) {
            *kind = SHORT_READ;
            return IO_FAILED;
        }
        if (!payload_matches(id, seq, *received, rbuf, (size_t)n)) {
            *kind = MISMATCH;
            return IO_FAILED;
        }
        *received += (size_t)n;
        if (*received == (size_t)opt.payload)
            return IO_DONE;
        if ((size_t)n < ask && !hangup)
            return IO_MORE;
    }
}

/* Read from a connection with nothing in flight (open loop between sends, or before its first
 * send): a close is a short read, an error a reset, and any byte a mismatch. */
static enum io recv_unexpected(int fd, int *kind)
{
    ssize_t n;
    while ((n = recv(fd, rbuf, sizeof rbuf, 0)) < 0 && errno == EINTR)
        continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return IO_MORE;
    *kind = n < 0 ? RESET : n == 0 ? SHORT_READ : MISMATCH;
    return IO_FAILED;
}

static int64_t interval_ns; /* open loop: time between one connection's intended sends */

/* Active connections are edge-triggered. Level-triggered epoll puts every item it reports back
 * on the ready list, and the next epoll_wait() polls it again (fs/eventpoll.c, ep_send_events):
 * one more tcp_poll() per request, for a socket this loop has already drained. Edge-triggered,
 * an item is reported once per arrival of data (sk_data_ready -> ep_poll_callback), so every
 * reader here reads until the socket is drained or the echo is whole (epoll(7), "edge-triggered"). */
#define ACTIVE_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLET)
#define HANGUP (EPOLLRDHUP | EPOLLHUP | EPOLLERR)

/* user_data of a ring operation: connection index, for a send the request's sequence number
 * (so that a late completion of an earlier request's send is told apart), operation. */
static uint64_t ring_tag(const struct conn *c, enum ring_op op)
{
    uint64_t seq = op == RING_SEND ? c->seq & 0xFFFFFF : 0;
    return (uint64_t)(c - conns) << 32 | seq << 8 | (uint64_t)op;
}

static void drop(struct conn *c, int kind)
{
    count_error(kind);
    if ((kind == RESET || kind == SHORT_READ) && !c->answered)
        closed_before_echo++;
    if (ring.fd >= 0) {
        /* An operation in flight holds a reference to the socket's file: without the cancel,
         * close() would leave the connection open. The socket is released when the cancelled
         * operations end, at the next pass (at the latest in ring_settle()). */
        if (c->armed)
            ring_cancel(ring_tag(c, c < conns + nactive ? RING_RECV : RING_IDLE));
        if (c->writing)
            ring_cancel(ring_tag(c, RING_SEND));
        ring.closing += c->armed + c->writing;
    }
    close_fd(c->fd);
    c->fd = -1;
}

/* The connection's multishot recv: armed once, again only when the kernel ended it. */
static void ring_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = ring_sqe();
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = c->fd;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    sqe->user_data = ring_tag(c, RING_RECV);
    c->armed = 1;
}

/* An idle connection is watched by a one-shot poll: any event is its end. */
static void ring_watch_idle(struct conn *c)
{
    struct io_uring_sqe *sqe = ring_sqe();
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = c->fd;
    uint32_t events = POLLIN | POLLRDHUP;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    events = events << 16 | events >> 16; /* the kernel reads the field as two halfwords (liburing) */
#endif
    sqe->poll32_events = events;
    sqe->user_data = ring_tag(c, RING_IDLE);
    c->armed = 1;
}

/* Sends the next chunk of the current request. MSG_WAITALL: the kernel retries a short send
 * until the chunk is all sent or the connection fails (io_uring/net.c, io_net_retry). */
static void ring_send(struct conn *c)
{
    size_t size = (size_t)opt.payload, n = size - c->sent;
    unsigned char *mine = ring.send_mem + (size_t)(c - conns) * ring.send_size;
    if (!c->sent) {
        /* The pattern repeats every 16 bytes: chunk k starts at mine + (k * chunk) % 16. */
        size_t span = (size < ring.chunk ? size : ring.chunk) + 15;
        memcpy(mine, payload_at(c->id, c->seq, 0, span), span);
    }
    if (n > ring.chunk)
        n = ring.chunk;
    struct io_uring_sqe *sqe = ring_sqe();
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = c->fd;
    sqe->addr = (uint64_t)(uintptr_t)(mine + c->sent % 16);
    sqe->len = (uint32_t)n;
    sqe->msg_flags = MSG_NOSIGNAL | MSG_WAITALL;
    sqe->user_data = ring_tag(c, RING_SEND);
    c->writing = 1;
}

static void set_writing(struct conn *c, uint32_t want)
{
    if (want != c->writing) {
        c->writing = want;
        watch(EPOLL_CTL_MOD, c->fd, ACTIVE_EVENTS | (want ? EPOLLOUT : 0), (uint32_t)(c - conns));
    }
}

/* Send what is left of the current request; EPOLLOUT registered while the socket buffer is full.
 * On the ring, a send operation does that waiting. */
static void push(struct conn *c)
{
    if (ring.fd >= 0) {
        ring_send(c);
        return;
    }
    enum io r = send_request(c->fd, c->id, c->seq, &c->sent);
    if (r == IO_FAILED)
        drop(c, RESET);
    else
        set_writing(c, r == IO_MORE);
}

static void send_next(struct conn *c, int64_t intended, int64_t now)
{
    c->seq++;
    c->sent = c->received = 0;
    c->t_intended = intended;
    c->t_send = now;
    if (now >= win.start && now < win.end)
        win.sent_in_window++;
    push(c);
}

static void on_idle_event(struct conn *c, uint32_t ev)
{
    /* An idle connection the server closed or reset: it no longer counts. */
    drop(c, ev & EPOLLERR ? RESET : SHORT_READ);
}

/* A verified whole echo at `done`: counted (in the window's figures when it falls in it). */
static void record_echo(struct conn *c, int64_t done)
{
    c->answered = 1;
    if (completed_at(done)) {
        win.requests++;
        hist_record_ns(win.corrected, done - c->t_intended);
        if (opt.workload == OPEN)
            hist_record_ns(win.uncorrected, done - c->t_send);
    }
}

/* After an echo verified at `done`: the closed loop sends at once; the open loop sends when the
 * schedule says, keeping its place on it even when this echo was late. */
static void next_request(struct conn *c, int64_t done)
{
    if (opt.workload == OPEN) {
        int64_t intended = c->t_intended + interval_ns;
        if (intended <= done) {
            send_next(c, intended, done);
        } else {
            c->waiting = 1;
            heap_push(intended, (uint32_t)(c - conns));
        }
    } else {
        send_next(c, done, done);
    }
}

static void on_active_event(struct conn *c, uint32_t ev)
{
    if ((ev & EPOLLOUT) && c->writing) {
        push(c);
        if (c->fd < 0)
            return;
    }
    if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
        return;
    int kind = MISMATCH, hangup = (ev & HANGUP) != 0;
    enum io r = c->waiting ? recv_unexpected(c->fd, &kind)
                           : recv_echo(c->fd, c->id, c->seq, &c->received, &kind, hangup);
    if (r == IO_FAILED)
        drop(c, kind);
    if (r != IO_DONE)
        return;
    int64_t done = now_ns();
    record_echo(c, done);
    /* The echo was whole, and the peer had closed behind it: the edge that said so will not
     * come again, so the close (or bytes beyond the echo) is read now, as level-triggered
     * epoll would have reported it at the next wait. */
    if (hangup && recv_unexpected(c->fd, &kind) == IO_FAILED) {
        drop(c, kind);
        return;
    }
    next_request(c, done);
}

/* Bytes of a connection's stream, as a recv completion brought them: checked against the echo
 * owed, in order. Bytes past a whole echo belong to the next one (closed loop: its request is
 * sent first, and a mismatch shows there, as the epoll loop finds it at its next read); with
 * nothing in flight (open loop between sends), any byte is a mismatch at once, where the epoll
 * loop leaves them queued until the next echo's read. Likewise a close that follows a whole
 * echo is seen after the next request was sent (and counted in sent_in_window); the epoll loop
 * sees it first. Completions and every error count are the same. */
static void ring_feed(struct conn *c, const unsigned char *data, size_t n)
{
    while (n && c->fd >= 0) {
        size_t owed = (size_t)opt.payload - c->received, take = n < owed ? n : owed;
        if (c->waiting || !payload_matches(c->id, c->seq, c->received, data, take)) {
            drop(c, MISMATCH);
            return;
        }
        c->received += take, data += take, n -= take;
        if (c->received < (size_t)opt.payload)
            continue;
        int64_t done = now_ns();
        record_echo(c, done);
        next_request(c, done);
    }
}

/* One of the connection's operations is over; for a closed connection, one less holding its socket. */
static void ring_op_over(struct conn *c, uint32_t *in_flight)
{
    if (*in_flight && c->fd < 0)
        ring.closing--;
    *in_flight = 0;
}

static void ring_complete(uint64_t tag, int res, uint32_t flags)
{
    enum ring_op op = (enum ring_op)(tag & 0xFF);
    if (op == RING_CANCEL)
        return;
    struct conn *c = &conns[tag >> 32];
    int live = c->fd >= 0 && !ring.settling;
    if (op == RING_RECV) {
        int bid = flags & IORING_CQE_F_BUFFER ? (int)(flags >> IORING_CQE_BUFFER_SHIFT) : -1;
        int over = !(flags & IORING_CQE_F_MORE);
        if (over)
            ring_op_over(c, &c->armed);
        if (live) {
            if (res > 0 && bid >= 0)
                ring_feed(c, ring.buf_mem + (size_t)bid * ring.buf_size, (size_t)res);
            else if (res == 0)
                drop(c, SHORT_READ);
            else if (res != -ENOBUFS) /* no buffer free for a moment: armed again below */
                drop(c, RESET);
        }
        if (bid >= 0)
            ring_give_back((unsigned)bid);
        if (over && c->fd >= 0 && !ring.settling)
            ring_recv(c);
    } else if (op == RING_SEND) {
        if (((tag >> 8) & 0xFFFFFF) != (c->seq & 0xFFFFFF))
            return; /* an earlier request's send: its echo was whole already */
        ring_op_over(c, &c->writing);
        if (!live)
            return;
        if (res < 0) {
            drop(c, RESET);
        } else {
            c->sent += (size_t)res;
            if (c->sent < (size_t)opt.payload)
                ring_send(c);
        }
    } else {
        ring_op_over(c, &c->armed);
        if (live) /* an idle connection the server closed or reset: it no longer counts */
            drop(c, res < 0 || (res & POLLERR) ? RESET : SHORT_READ);
    }
}

/* Submits what the last pass prepared; with a deadline (CLOCK_MONOTONIC ns; 0: none) waits
 * until then for a completion; handles every completion there is. */
static void ring_pass(int64_t deadline)
{
    ring_enter(deadline > 0, deadline);
    unsigned head = *ring.cq_head;
    while (head != __atomic_load_n(ring.cq_tail, __ATOMIC_ACQUIRE)) {
        struct io_uring_cqe *cqe = &ring.cqes[head & ring.cq_mask];
        uint64_t tag = cqe->user_data;
        int res = cqe->res;
        uint32_t flags = cqe->flags;
        /* The slot is handed back before the completion is handled, which may submit. */
        __atomic_store_n(ring.cq_head, ++head, __ATOMIC_RELEASE);
        ring_complete(tag, res, flags);
    }
    ring_publish_bufs();
}

/* After the loop: submits what its last pass prepared (the epoll loop's sends leave at once),
 * then lets the kernel end the operations of every connection closed so far, so that their
 * sockets are closed before the worker holds the others open for the manager. Nothing new
 * starts. One pass is enough when the cancels are all served; one second bounds the wait. */
static void ring_settle(void)
{
    ring.settling = 1;
    int64_t give_up = now_ns() + NS;
    ring_pass(0);
    while (ring.closing > 0 && now_ns() < give_up)
        ring_pass(now_ns() + NS / 100);
}

static long expire_stuck(int64_t now)
{
    long live = 0;
    int64_t limit = (int64_t)(opt.request_timeout_s * NS);
    for (long i = 0; i < nactive; i++) {
        struct conn *c = &conns[i];
        if (c->fd < 0)
            continue;
        if (!c->waiting && now - c->t_send > limit)
            drop(c, TIMEOUT);
        else
            live++;
    }
    return live;
}

/* The closed loop's ramp: half the warm-up, at most RAMP_MAX_NS (none without a warm-up). */
static int64_t ramp_ns(int64_t start_at)
{
    int64_t ramp = (win.start - start_at) / 2;
    return ramp < 0 ? 0 : ramp > RAMP_MAX_NS ? RAMP_MAX_NS : ramp;
}

/* Waits up to timeout_ms for epoll's events and handles them. */
static void epoll_pass(int timeout_ms)
{
    static struct epoll_event events[MAX_EVENTS];
    int n = epoll_wait(ep, events, MAX_EVENTS, timeout_ms);
    if (n < 0 && errno != EINTR)
        fail_errno("epoll_wait");
    for (int i = 0; i < n; i++) {
        uint32_t index = events[i].data.u32;
        if (index == TIMER_INDEX) {
            consume_timer();
            continue;
        }
        struct conn *c = &conns[index];
        if (c->fd < 0)
            continue;
        if ((long)index < nactive)
            on_active_event(c, events[i].events);
        else
            on_idle_event(c, events[i].events);
    }
}

static long request_loop(int64_t start_at)
{
    for (long i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->id = (uint32_t)(opt.first_index + i);
        if (ring.fd < 0)
            watch(EPOLL_CTL_ADD, c->fd, i < nactive ? ACTIVE_EVENTS : EPOLLIN | EPOLLRDHUP, (uint32_t)i);
        else if (i < nactive)
            ring_recv(c);
        else
            ring_watch_idle(c);
    }
    heap = calloc((size_t)(nactive ? nactive : 1), sizeof *heap);
    if (!heap)
        fail_errno("calloc");
    if (ring.fd < 0)
        watch(EPOLL_CTL_ADD, timer_fd, EPOLLIN, TIMER_INDEX);
    if (opt.workload == OPEN) {
        /* A day at most: a rate so low that the interval overflows would mean no send anyway. */
        double interval = (double)nactive / opt.rate * NS;
        interval_ns = interval < 86400.0 * NS ? (int64_t)interval : 86400LL * NS;
    }
    sleep_until(start_at);
    int64_t first = now_ns();
    /* The first sends are staggered: over one interval in the open loop; over the ramp in the
     * closed loop, so that thousands of connections do not all send at the same instant and
     * charge the warm-up's first round of a cold server (accepts, first buffers) to a few. */
    int64_t spread = opt.workload == OPEN ? interval_ns : ramp_ns(start_at);
    for (long i = 0; i < nactive; i++) {
        conns[i].waiting = 1;
        heap_push(first + (int64_t)((double)spread * (double)i / (double)nactive), (uint32_t)i);
    }
    int64_t last_scan = first;
    long live = nactive;
    while (live > 0) {
        int64_t now = now_ns();
        while (heap_len && heap[0].at <= now) {
            struct due d = heap_pop();
            struct conn *c = &conns[d.index];
            if (c->fd >= 0) {
                c->waiting = 0;
                send_next(c, d.at, now_ns());
            }
        }
        maybe_open_window(now);
        if (now >= win.end)
            break;
        if (ring.fd >= 0) {
            /* The wait's deadline (ns, an hrtimer) is the open loop's send timer too. */
            int64_t deadline = now + until_edge_ns(now, NS / 10);
            if (heap_len && heap[0].at < deadline)
                deadline = heap[0].at;
            ring_pass(deadline > now ? deadline : 0);
        } else {
            if (heap_len)
                arm_timer(heap[0].at); /* the epoll timeout (whole ms) is only a backstop */
            epoll_pass(epoll_timeout_ms(now, NS / 10));
        }
        now = now_ns();
        if (now - last_scan > TIMEOUT_SCAN_NS) {
            last_scan = now;
            live = expire_stuck(now);
        }
    }
    win.measured_end = now_ns();
    if (getrusage(RUSAGE_SELF, &win.usage_end) < 0)
        fail_errno("getrusage");
    live = expire_stuck(win.measured_end);
    if (ring.fd >= 0)
        ring_settle();
    /* The connections stay open until the manager releases us (hold_until_released). */
    return live;
}

/* ---- churn ------------------------------------------------------------------------------ */

enum slot_state { SLOT_DEFERRED, SLOT_CONNECTING, SLOT_SENDING, SLOT_READING };
struct slot {
    int fd;
    enum slot_state state;
    uint32_t id;
    size_t sent, received;
    int64_t t_start, t_connected;
};
static struct slot *slots;
static uint32_t churn_started;

/* Connect the slot anew. A failure before the connect is under way leaves the slot deferred
 * until the next timeout scan: trying again at once would spin on a lasting error. */
static void churn_begin(struct slot *s)
{
    int fatal = 0;
    churn_started++;
    s->id = churn_started;
    s->sent = s->received = 0;
    s->state = SLOT_DEFERRED;
    /* Addresses rotate so that TIME_WAIT ports do not run out (the manager sends the spread). */
    s->fd = start_connect(opt.worker_id * 7919 + churn_started, opt.spread, &fatal, &s->t_start);
    if (fatal)
        count_error(CONNECT_OTHER);
    if (s->fd < 0)
        return;
    s->state = SLOT_CONNECTING;
    watch(EPOLL_CTL_ADD, s->fd, EPOLLOUT, (uint32_t)(s - slots));
}

static void churn_finish(struct slot *s, int kind)
{
    close_fd(s->fd);
    s->fd = -1;
    if (kind >= 0)
        count_error(kind);
    /* A churn connection has one request: any close or reset is before its echo. */
    if (kind == RESET || kind == SHORT_READ)
        closed_before_echo++;
    churn_begin(s);
}

static void churn_send(struct slot *s)
{
    enum io r = send_request(s->fd, (uint32_t)opt.worker_id, s->id, &s->sent);
    if (r == IO_FAILED) {
        churn_finish(s, RESET);
    } else if (r == IO_DONE) {
        s->state = SLOT_READING;
        watch(EPOLL_CTL_MOD, s->fd, EPOLLIN, (uint32_t)(s - slots));
    } else {
        /* A payload beyond the socket buffers: read the echo while sending the rest, or both
         * sides would wait on full buffers until the timeout. */
        watch(EPOLL_CTL_MOD, s->fd, EPOLLIN | EPOLLOUT, (uint32_t)(s - slots));
    }
}

static void churn_event(struct slot *s, uint32_t ev)
{
    uint32_t id = s->id;
    if (s->state == SLOT_CONNECTING) {
        int err = socket_error(s->fd);
        if (err) {
            churn_finish(s, connect_kind(err));
            return;
        }
        s->t_connected = now_ns();
        s->state = SLOT_SENDING;
    }
    if (s->state == SLOT_SENDING) {
        churn_send(s);
        /* Finished (and restarted) while sending, or nothing to read yet. */
        if (s->id != id || s->fd < 0 || !(ev & (EPOLLIN | EPOLLERR | EPOLLHUP)))
            return;
    }
    int kind = RESET;
    /* Level-triggered here: a short read leaves the rest, and a close, to the next wait. */
    enum io r = recv_echo(s->fd, (uint32_t)opt.worker_id, s->id, &s->received, &kind, 0);
    if (r == IO_FAILED)
        churn_finish(s, kind);
    if (r != IO_DONE)
        return;
    int64_t done = now_ns();
    if (completed_at(done)) {
        win.requests++;
        win.sent_in_window++;
        hist_record_ns(win.corrected, done - s->t_start);
        hist_record_ns(win.connect, s->t_connected - s->t_start);
    }
    churn_finish(s, -1);
}

static void churn_loop(int64_t start_at)
{
    long n_slots = opt.connections;
    slots = calloc((size_t)n_slots, sizeof *slots);
    if (!slots)
        fail_errno("calloc");
    sleep_until(start_at);
    for (long i = 0; i < n_slots; i++)
        churn_begin(&slots[i]);
    static struct epoll_event events[MAX_EVENTS];
    int64_t last_scan = now_ns(), limit = (int64_t)(opt.request_timeout_s * NS);
    for (;;) {
        int64_t now = now_ns();
        maybe_open_window(now);
        if (now >= win.end)
            break;
        int n = epoll_wait(ep, events, MAX_EVENTS, epoll_timeout_ms(now, NS / 10));
        if (n < 0 && errno != EINTR)
            fail_errno("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct slot *s = &slots[events[i].data.u32];
            if (s->fd >= 0)
                churn_event(s, events[i].events);
        }
        now = now_ns();
        if (now - last_scan > TIMEOUT_SCAN_NS) {
            last_scan = now;
            for (long i = 0; i < n_slots; i++) {
                struct slot *s = &slots[i];
                if (s->state == SLOT_DEFERRED)
                    churn_begin(s);
                else if (now - s->t_start > limit)
                    churn_finish(s, s->state == SLOT_CONNECTING ? CONNECT_TIMEOUT : TIMEOUT);
            }
        }
    }
    win.measured_end = now_ns();
    if (getrusage(RUSAGE_SELF, &win.usage_end) < 0)
        fail_errno("getrusage");
    for (long i = 0; i < n_slots; i++)
        if (slots[i].fd >= 0)
            close_fd(slots[i].fd);
}

/* ---- main ------------------------------------------------------------------------------- */

/* Peak resident memory of this program: VmHWM of /proc/self/status (proc(5)). Not ru_maxrss,
 * which keeps the peak of the Python parent this process was forked from across execve(2). */
static long long peak_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lld kB", &kib) == 1)
            break;
    if (fclose(f) != 0)
        return -1;
    return kib < 0 ? -1 : kib * 1024;
}

static double seconds_of(const struct timeval *tv)
{
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    if (opt.die_with_parent)
        die_with_parent();
    pin(opt.cpus);
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        fail_errno("signal(SIGPIPE)");
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1)
        usage_error("--host must be an IPv4 address");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        fail_errno("epoll_create1");
    /* Before the connections, which may take every descriptor left. */
    timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (timer_fd < 0)
        fail_errno("timerfd_create");
    if (opt.workload != CHURN && opt.io != IO_EPOLL &&
        ring_setup(opt.connections, opt.idle) < 0 && opt.io == IO_URING) {
        fprintf(stderr, "loadgen-worker: --io io_uring: %s\n", ring_why);
        exit(1);
    }

    struct hist *connect_hist = hist_new();
    double connect_s = 0;
    connect_all(connect_hist, &connect_s);
    printf("{\"event\":\"connected\",\"worker\":%ld,\"connected\":%llu,\"seconds\":%.6f", opt.worker_id,
           (unsigned long long)connected, connect_s);
    put_errors();
    put_hist("histogram_counts", connect_hist);
    printf(",\"io\":\"%s\"", ring.fd >= 0 ? "io_uring" : "epoll");
    if (ring_why[0]) {
        printf(",\"io_why\":");
        put_string(ring_why);
    }
    printf(",\"notes\":[");
    for (int i = 0; i < nnotes; i++) {
        if (i)
            putchar(',');
        put_string(notes[i]);
    }
    printf("]");
    flush_line();
    /* The result reports what happened after the connect phase only, as the Python worker's. */
    memset(errs, 0, sizeof errs);

    int64_t start_at;
    if (read_schedule(&start_at, &win.start, &win.end) < 0) {
        for (long i = 0; i < nconns; i++)
            close_fd(conns[i].fd);
        return 1;
    }
    tl_init(start_at, win.start, win.end);
    win.corrected = hist_new();
    win.uncorrected = opt.workload == OPEN ? hist_new() : NULL;
    win.connect = hist_new();
    long live = 0;
    if (opt.workload == CHURN)
        churn_loop(start_at);
    else if (nactive > 0)
        live = request_loop(start_at);
    else
        win.measured_end = now_ns(); /* every connection failed: nothing to drive */
    if (!win.measured_start) {
        /* Every connection died before the window opened: nothing was measured. */
        win.measured_start = win.measured_end;
        if (getrusage(RUSAGE_SELF, &win.usage_end) < 0)
            fail_errno("getrusage");
        win.usage_start = win.usage_end;
    }
    int64_t end = win.end > win.measured_start ? win.end : win.measured_start;
    if (win.measured_end < end)
        end = win.measured_end;
    printf("{\"event\":\"result\",\"worker\":%ld,\"requests\":%llu,\"sent_in_window\":%llu", opt.worker_id,
           (unsigned long long)win.requests, (unsigned long long)win.sent_in_window);
    printf(",\"window_start\":%.9f,\"window_end\":%.9f", (double)win.measured_start / NS, (double)end / NS);
    printf(",\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f,\"live_connections\":%ld",
           seconds_of(&win.usage_end.ru_utime) - seconds_of(&win.usage_start.ru_utime),
           seconds_of(&win.usage_end.ru_stime) - seconds_of(&win.usage_start.ru_stime), live);
    printf(",\"max_rss_bytes\":%lld,\"closed_before_echo\":%llu", peak_rss_bytes(),
           (unsigned long long)closed_before_echo);
    put_errors();
    put_hist("histogram_counts", win.corrected);
    if (win.uncorrected)
        put_hist("uncorrected_counts", win.uncorrected);
    put_hist("connect_histogram_counts", opt.workload == CHURN ? win.connect : NULL);
    put_timeline();
    flush_line();
    hold_until_released();
    return 0;
}
