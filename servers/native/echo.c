/*
 * The native baseline: a level-triggered epoll echo server in C.
 *
 * It makes the same system calls as the Python `epoll` model (epoll_wait, accept4, one recv
 * per readable event, send, EPOLLOUT only while output is pending), so the gap between the
 * two is what the interpreter costs, not a different I/O strategy.
 *
 * Usage: echo HOST PORT BACKLOG. After listen() it prints one JSON line on stdout,
 * {"event":"ready","model":"native","pid":..,"host":..,"port":..}, and flushes it.
 * SIGTERM/SIGINT arrive through a signalfd in the same epoll set, so the server exits at
 * once however busy it is. Built by servers/native_server.py with `cc -O2`.
 *
 * Out of descriptors or memory at accept (EMFILE, ENFILE, ENOBUFS, ENOMEM: man 2 accept) it
 * sheds, as libuv's uv__emfile_trick (src/unix/stream.c) does: a spare descriptor is closed,
 * every queued connection is accepted in its place and closed, and the spare is opened again.
 * Where that cannot work (no spare to be had, or accept fails even with it free) it stops
 * watching the listener, as nginx's ngx_event_accept disables its accept events, until a
 * connection closes or a back-off (5 ms doubling to 1 s) passes. Each shedding episode ends
 * with a JSON line, and SIGUSR1 or a clean exit prints the totals, as servers/shedding.py:
 * {"event": "shed", "count": N, "errno": "EMFILE", "seconds": S} and
 * {"event": "stats", "shed": TOTAL, "episodes": E}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RECV_SIZE 65536
/* Same bound as servers/connection.py: stop reading a client owed this much. */
#define HIGH_WATER (16u * 1024 * 1024)
#define MAX_EVENTS 4096
#define ACCEPT_BATCH 256
/* Connections shed per listener wake-up at the most: the listener stays readable (level-
 * triggered), so the rest is shed at the next wait, after the connections held are served. */
#define SHED_BATCH 4096
#define BACKOFF_MIN_S 0.005
#define BACKOFF_MAX_S 1.0

struct conn {
    char *buf; /* pending output is buf[off..len) */
    size_t off, len, cap;
    uint32_t mask; /* the interest currently registered with epoll */
    int open;
    int eof;
};

static struct conn *conns; /* indexed by descriptor */
static size_t nconns;
static int ep = -1;
static int lfd = -1;
static int spare_fd = -1;
static char rbuf[RECV_SIZE];

/* Shedding, as servers/shedding.py counts it. */
static unsigned long long shed_total, shed_episodes, episode_count;
static const char *episode_cause; /* the open episode's errno name; NULL when none is open */
static double episode_started;
/* Accepting paused: the listener is out of the epoll set until resume_at or a close. */
static int accept_paused, conn_freed;
static double resume_at, backoff = BACKOFF_MIN_S;

static void die(const char *what, const char *why)
{
    /* strerror()/gai_strerror() texts hold no characters that need JSON escaping. */
    printf("{\"event\":\"fatal\",\"model\":\"native\",\"reason\":\"%s: %s\"}\n", what, why);
    fflush(stdout);
    exit(3);
}

static double now_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
        die("clock_gettime", strerror(errno));
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The JSON lines of the shedding protocol. A write that fails (the harness closed our stdout)
 * changes nothing the server does: the lines are for the harness, and it is gone. */
static void say(const char *line)
{
    if (fputs(line, stdout) == EOF || fflush(stdout) == EOF)
        clearerr(stdout);
}

static const char *errno_name(int code)
{
    switch (code) {
    case EMFILE:
        return "EMFILE";
    case ENFILE:
        return "ENFILE";
    case ENOBUFS:
        return "ENOBUFS";
    case ENOMEM:
        return "ENOMEM";
    case ENOSPC:
        return "ENOSPC";
    default:
        return "EOTHER";
    }
}

static int is_resource_errno(int code)
{
    return code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM;
}

/* accept(2)'s errors that concern only the connection it was taking (man 2 accept: Linux
 * passes pending network errors on, "treat them like EAGAIN by retrying"). */
static int is_connection_errno(int code)
{
    return code == EINTR || code == ECONNABORTED || code == EPROTO || code == ENETDOWN || code == ENOPROTOOPT ||
           code == EHOSTDOWN || code == ENONET || code == EHOSTUNREACH || code == EOPNOTSUPP || code == ENETUNREACH ||
           code == EPERM;
}

static void episode_begin(const char *cause)
{
    if (episode_cause)
        return;
    episode_cause = cause;
    episode_count = 0;
    episode_started = now_s();
    shed_episodes++;
}

static void note_shed(const char *cause)
{
    episode_begin(cause);
    episode_count++;
    shed_total++;
}

static void episode_end(void)
{
    if (!episode_cause)
        return;
    char line[256];
    snprintf(line, sizeof line, "{\"event\": \"shed\", \"count\": %llu, \"errno\": \"%s\", \"seconds\": %.3f}\n",
             episode_count, episode_cause, now_s() - episode_started);
    say(line);
    episode_cause = NULL;
    backoff = BACKOFF_MIN_S;
}

static void print_stats(void)
{
    char line[128];
    snprintf(line, sizeof line, "{\"event\": \"stats\", \"shed\": %llu, \"episodes\": %llu}\n", shed_total,
             shed_episodes);
    say(line);
}

/* close() that only a bug can make fail: EINTR still closes the descriptor on Linux. */
static void close_checked(int fd)
{
    if (close(fd) < 0 && errno != EINTR)
        die("close", strerror(errno));
}

static int open_spare(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

static int ensure_slot(int fd)
{
    if ((size_t)fd < nconns)
        return 0;
    size_t n = nconns ? nconns : 1024;
    while (n <= (size_t)fd)
        n *= 2;
    struct conn *grown = realloc(conns, n * sizeof *grown);
    if (!grown)
        return -1;
    memset(grown + nconns, 0, (n - nconns) * sizeof *grown);
    conns = grown;
    nconns = n;
    return 0;
}

static void close_conn(int fd)
{
    struct conn *c = &conns[fd];
    close_checked(fd); /* also drops it from the epoll set: nobody else holds this file */
    free(c->buf);
    memset(c, 0, sizeof *c);
    conn_freed = 1;
}

static size_t pending(const struct conn *c) { return c->len - c->off; }

static int append(struct conn *c, const char *data, size_t n)
{
    if (c->off && c->len + n > c->cap) {
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : RECV_SIZE;
        while (cap < c->len + n)
            cap *= 2;
        char *grown = realloc(c->buf, cap);
        if (!grown)
            return -1;
        c->buf = grown;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    return 0;
}

/* 0 when the connection is dead (reset, broken pipe, out of memory). */
static int on_readable(int fd, struct conn *c)
{
    ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    if (n == 0) {
        c->eof = 1;
        return 1;
    }
    size_t done = 0;
    if (!pending(c)) {
        ssize_t s = send(fd, rbuf, (size_t)n, MSG_NOSIGNAL);
        if (s < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return 0;
            s = 0;
        }
        done = (size_t)s;
    }
    return done == (size_t)n || append(c, rbuf + done, (size_t)n - done) == 0;
}

static int on_writable(int fd, struct conn *c)
{
    while (pending(c)) {
        ssize_t s = send(fd, c->buf + c->off, pending(c), MSG_NOSIGNAL);
        if (s < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            return 0;
        }
        c->off += (size_t)s;
    }
    c->off = c->len = 0;
    if (c->cap > 4 * RECV_SIZE) {
        /* A burst is over: give its buffer back rather than keep it per idle client. */
        free(c->buf);
        c->buf = NULL;
        c->cap = 0;
    }
    return 1;
}

static void on_connection(int fd, uint32_t ev)
{
    struct conn *c = &conns[fd];
    int wants_read = !c->eof && pending(c) < HIGH_WATER;
    int alive = 1;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (wants_read)
            alive = on_readable(fd, c);
        else if (ev & (EPOLLERR | EPOLLHUP))
            alive = 0; /* reset while we were not reading: nothing left to deliver */
    }
    if (alive && (ev & EPOLLOUT))
        alive = on_writable(fd, c);
    if (!alive || (c->eof && !pending(c))) {
        close_conn(fd);
        return;
    }
    uint32_t mask = (!c->eof && pending(c) < HIGH_WATER ? EPOLLIN : 0) | (pending(c) ? EPOLLOUT : 0);
    if (mask != c->mask) {
        struct epoll_event e = {.events = mask, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e) < 0) {
            close_conn(fd);
            return;
        }
        c->mask = mask;
    }
}

static void pause_accept(int code)
{
    /* Level-triggered: a readable listener left in the set would wake every epoll_wait. */
    if (epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL) < 0)
        die("epoll_ctl(DEL listener)", strerror(errno));
    episode_begin(errno_name(code));
    accept_paused = 1;
    conn_freed = 0;
    resume_at = now_s() + backoff;
    backoff = backoff * 2 < BACKOFF_MAX_S ? backoff * 2 : BACKOFF_MAX_S;
}

static void resume_accept(void)
{
    struct epoll_event e = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e) < 0)
        die("epoll_ctl(ADD listener)", strerror(errno));
    accept_paused = 0;
}

/* accept() failed with `code` (out of descriptors or memory): shed what is queued in the
 * spare descriptor's place, or pause accepting when that cannot work. */
static void shed_queue(int code)
{
    if (spare_fd < 0 && (spare_fd = open_spare()) < 0) {
        pause_accept(code);
        return;
    }
    close_checked(spare_fd);
    spare_fd = -1;
    int stop = EAGAIN;
    for (int i = 0; i < SHED_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            close_checked(fd);
            note_shed(errno_name(code));
            continue;
        }
        if (is_connection_errno(errno))
            continue;
        stop = errno;
        break;
    }
    /* -1 (another process took the slot: ENFILE) is retried at the next shed. */
    spare_fd = open_spare();
    if (stop == EAGAIN || stop == EWOULDBLOCK)
        return;
    if (is_resource_errno(stop))
        pause_accept(stop); /* even the spare's slot does not help: ENOMEM, say */
    else
        die("accept4", strerror(stop));
}

/* A connection accepted but not held (no memory for its slot, no room in the epoll set):
 * closed, and counted as shed. */
static void drop_new(int fd, int code)
{
    close_checked(fd);
    note_shed(errno_name(code));
}

static void on_listener(void)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (is_connection_errno(errno))
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                shed_queue(errno);
                return;
            }
            if (is_resource_errno(errno)) {
                /* Out of memory, not descriptors: a spare's slot would not help, and the
                 * queued connections may be served once memory is back. */
                pause_accept(errno);
                return;
            }
            die("accept4", strerror(errno));
        }
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
            close_checked(fd); /* the connection is already gone (reset); nothing to count */
            continue;
        }
        if (ensure_slot(fd) < 0) {
            drop_new(fd, ENOMEM);
            continue;
        }
        struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
            drop_new(fd, errno); /* ENOMEM, or ENOSPC past max_user_watches */
            continue;
        }
        conns[fd].open = 1;
        conns[fd].mask = EPOLLIN;
        episode_end(); /* a connection served: an open shedding episode is over */
    }
}

/* Milliseconds epoll_wait may block: until a pause's back-off ends, else for ever. */
static int wait_ms(void)
{
    if (!accept_paused)
        return -1;
    double left = resume_at - now_s();
    return left <= 0 ? 0 : (int)(left * 1000) + 1;
}

/* Drain the signalfd: 1 when SIGTERM/SIGINT asks us to exit; SIGUSR1 prints the totals. */
static int on_signals(int sfd)
{
    struct signalfd_siginfo si;
    for (;;) {
        ssize_t n = read(sfd, &si, sizeof si);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            die("read(signalfd)", strerror(errno));
        }
        if ((size_t)n != sizeof si)
            die("read(signalfd)", "short read");
        if (si.ssi_signo == SIGUSR1)
            print_stats();
        else
            return 1;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s HOST PORT BACKLOG\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *port = argv[2];
    int backlog = atoi(argv[3]);

    /* An ignored signal survives exec and never reaches a signalfd: restore the defaults,
     * then block both so that they are only ever read from the signalfd. */
    sigset_t taken; /* SIGTERM, SIGINT: exit; SIGUSR1: print the shedding totals */
    sigemptyset(&taken);
    sigaddset(&taken, SIGTERM);
    sigaddset(&taken, SIGINT);
    sigaddset(&taken, SIGUSR1);
    if (signal(SIGTERM, SIG_DFL) == SIG_ERR || signal(SIGINT, SIG_DFL) == SIG_ERR ||
        signal(SIGUSR1, SIG_DFL) == SIG_ERR || signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        die("signal", strerror(errno));
    if (sigprocmask(SIG_BLOCK, &taken, NULL) < 0)
        die("sigprocmask", strerror(errno));
    int sfd = signalfd(-1, &taken, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd", strerror(errno));

    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        die("getaddrinfo", gai_strerror(rc));
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket", strerror(errno));
    int one = 1;
    if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("setsockopt(SO_REUSEADDR)", strerror(errno));
    if (bind(lfd, res->ai_addr, res->ai_addrlen) < 0)
        die("bind", strerror(errno));
    freeaddrinfo(res);
    if (listen(lfd, backlog) < 0)
        die("listen", strerror(errno));

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1", strerror(errno));
    struct epoll_event e = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e) < 0)
        die("epoll_ctl(ADD listener)", strerror(errno));
    e.data.fd = sfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &e) < 0)
        die("epoll_ctl(ADD signalfd)", strerror(errno));
    spare_fd = open_spare(); /* -1 (no descriptor left already) is tried again at the first shed */

    struct sockaddr_in addr;
    socklen_t alen = sizeof addr;
    char ip[INET_ADDRSTRLEN];
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0 ||
        !inet_ntop(AF_INET, &addr.sin_addr, ip, sizeof ip))
        die("getsockname", strerror(errno));
    printf("{\"event\": \"ready\", \"model\": \"native\", \"pid\": %d, \"host\": \"%s\", \"port\": %d}\n",
           (int)getpid(), ip, ntohs(addr.sin_port));
    if (fflush(stdout) == EOF)
        return 3; /* nobody reads the ready line: there is no harness to serve */

    static struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, wait_ms());
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == sfd) {
                if (on_signals(sfd))
                    goto out;
            } else if (fd == lfd) {
                if (!accept_paused) /* paused earlier in this batch */
                    on_listener();
            } else if ((size_t)fd < nconns && conns[fd].open)
                on_connection(fd, events[i].events);
        }
        /* A pause ends once a connection closed (a descriptor and its memory are free) or
         * its back-off passed; if accept still fails, the next pause is twice as long. */
        if (accept_paused && (conn_freed || now_s() >= resume_at))
            resume_accept();
    }
out:
    for (size_t fd = 0; fd < nconns; fd++)
        if (conns[fd].open)
            close_conn((int)fd);
    close_checked(lfd);
    episode_end();
    print_stats(); /* the last line on stdout */
    return 0;
}
