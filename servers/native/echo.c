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
#include <unistd.h>

#define RECV_SIZE 65536
/* Same bound as servers/connection.py: stop reading a client owed this much. */
#define HIGH_WATER (16u * 1024 * 1024)
#define MAX_EVENTS 4096
#define ACCEPT_BATCH 256

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
static int spare_fd = -1;
static char rbuf[RECV_SIZE];

static void die(const char *what, const char *why)
{
    /* strerror()/gai_strerror() texts hold no characters that need JSON escaping. */
    printf("{\"event\":\"fatal\",\"model\":\"native\",\"reason\":\"%s: %s\"}\n", what, why);
    fflush(stdout);
    exit(3);
}

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
    close(fd); /* also drops it from the epoll set: nobody else holds this file */
    free(c->buf);
    memset(c, 0, sizeof *c);
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

static void on_listener(int lfd)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && spare_fd >= 0) {
                /* Out of descriptors: the listener would stay readable and spin the loop.
                 * Free the spare, take the connection, refuse it, re-arm the spare. */
                close(spare_fd);
                fd = accept(lfd, NULL, NULL);
                if (fd >= 0)
                    close(fd);
                spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
        if (ensure_slot(fd) < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
            close(fd);
            continue;
        }
        conns[fd].open = 1;
        conns[fd].mask = EPOLLIN;
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
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    if (sigprocmask(SIG_BLOCK, &stop, NULL) < 0)
        die("sigprocmask", strerror(errno));
    int sfd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd", strerror(errno));

    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        die("getaddrinfo", gai_strerror(rc));
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket", strerror(errno));
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, res->ai_addr, res->ai_addrlen) < 0)
        die("bind", strerror(errno));
    freeaddrinfo(res);
    if (listen(lfd, backlog) < 0)
        die("listen", strerror(errno));

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1", strerror(errno));
    struct epoll_event e = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e);
    e.data.fd = sfd;
    epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &e);
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    struct sockaddr_in addr;
    socklen_t alen = sizeof addr;
    char ip[INET_ADDRSTRLEN];
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0 ||
        !inet_ntop(AF_INET, &addr.sin_addr, ip, sizeof ip))
        die("getsockname", strerror(errno));
    printf("{\"event\": \"ready\", \"model\": \"native\", \"pid\": %d, \"host\": \"%s\", \"port\": %d}\n",
           (int)getpid(), ip, ntohs(addr.sin_port));
    fflush(stdout);

    static struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == sfd)
                goto out;
            if (fd == lfd)
                on_listener(lfd);
            else if ((size_t)fd < nconns && conns[fd].open)
                on_connection(fd, events[i].events);
        }
    }
out:
    for (size_t fd = 0; fd < nconns; fd++)
        if (conns[fd].open)
            close_conn((int)fd);
    close(lfd);
    return 0;
}
