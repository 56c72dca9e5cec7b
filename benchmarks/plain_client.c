/*
 * plain_client: the yardstick for the project's load engines, the obvious closed-loop epoll
 * echo client in plain C. It shares no code with loadgen/ on purpose: an engine is measured
 * against what anybody would write, not against itself.
 *
 * Usage: plain_client HOST PORT CONNECTIONS PAYLOAD WARMUP_S DURATION_S
 * Opens CONNECTIONS TCP connections (TCP_NODELAY), keeps one PAYLOAD-byte request outstanding
 * on each (send, wait for the whole echo, check it byte for byte, send again), level-triggered
 * epoll, one thread. After WARMUP_S it measures for about DURATION_S and prints one JSON line:
 * requests completed in the window, the window's ends as CLOCK_MONOTONIC readings (the same
 * clock as Python's time.monotonic) and their difference, getrusage user/sys CPU over the
 * window, p50/p99 latency in µs from 1 µs buckets, errors. Then it waits for EOF on stdin
 * (run it by hand with </dev/null), so that its caller can sample its CPU after the window.
 * Exit 1 with one line on stderr when it cannot start.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 100000 /* 1 µs buckets up to 100 ms; anything slower lands in the last one */
#define MAX_EVENTS 1024

struct conn { int fd; size_t sent, got; double t0; unsigned mask; char *in; };
static unsigned long hist[HIST_US + 1];
static size_t payload;
static char *out;

static void die(const char *what) {
    fprintf(stderr, "plain_client: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) die("clock_gettime");
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void cpu(double *user, double *sys) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) die("getrusage");
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6;
    *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static long percentile(unsigned long total, double share) {
    unsigned long seen = 0, want = (unsigned long)(share * total + 0.999999);
    for (long us = 0; us <= HIST_US; us++)
        if ((seen += hist[us]) >= want && total) return us;
    return -1; /* no request completed in the window */
}

/* Send what is left of the request; EPOLLOUT is wanted only while part of it is unsent.
 * Returns -1 on a connection error. */
static int send_rest(int ep, struct conn *c) {
    ssize_t n = send(c->fd, out + c->sent, payload - c->sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN) return -1;
    c->sent += n > 0 ? (size_t)n : 0;
    unsigned mask = EPOLLIN | (c->sent < payload ? EPOLLOUT : 0);
    struct epoll_event ev = {.events = mask, .data.ptr = c};
    if (mask != c->mask && epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl");
    c->mask = mask;
    return 0;
}

int main(int argc, char **argv) {
    struct sockaddr_in addr = {.sin_family = AF_INET};
    long n = argc == 7 ? atol(argv[3]) : 0, port = argc == 7 ? atol(argv[2]) : 0;
    long size = argc == 7 ? atol(argv[4]) : 0;
    double warmup = argc == 7 ? atof(argv[5]) : -1, duration = argc == 7 ? atof(argv[6]) : 0;
    if (n < 1 || port < 1 || port > 65535 || size < 1 || !(warmup >= 0) || !(duration > 0) ||
        inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "usage: plain_client IPV4 PORT CONNECTIONS PAYLOAD WARMUP_S DURATION_S\n");
        return 2;
    }
    addr.sin_port = htons((unsigned short)port);
    payload = (size_t)size;
    struct conn *conns = calloc(n, sizeof *conns);
    if (!conns || !(out = malloc(payload))) die("malloc");
    for (size_t i = 0; i < payload; i++) out[i] = (char)('a' + i % 26);
    int ep = epoll_create1(0), one = 1;
    if (ep < 0) die("epoll_create1");
    for (long i = 0; i < n; i++) {
        struct conn *c = &conns[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        c->mask = EPOLLIN;
        if (!(c->in = malloc(payload))) die("malloc");
        if ((c->fd = socket(AF_INET, SOCK_STREAM, 0)) < 0) die("socket");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("TCP_NODELAY");
        if (fcntl(c->fd, F_SETFL, O_NONBLOCK) != 0) die("fcntl");
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
    }
    unsigned long requests = 0, errors = 0;
    double t = now(), user0 = 0, sys0 = 0, user1, sys1, window_start = 0;
    double warm_end = t + warmup, planned_end = warm_end + duration;
    int measuring = 0;
    for (long i = 0; i < n; i++) {
        conns[i].t0 = t;
        if (send_rest(ep, &conns[i]) != 0) die("send");
    }
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(ep, events, MAX_EVENTS, 10);
        if (ready < 0 && errno != EINTR) die("epoll_wait");
        t = now();
        if (!measuring && t >= warm_end) { /* the window opens at a measured instant */
            measuring = 1, window_start = t, requests = 0;
            cpu(&user0, &sys0);
        } else if (measuring && t >= planned_end) {
            break;
        }
        for (int e = 0; e < ready; e++) {
            struct conn *c = events[e].data.ptr;
            if ((events[e].events & EPOLLOUT) && send_rest(ep, c) != 0) goto fail;
            if (!(events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t got = recv(c->fd, c->in + c->got, payload - c->got, 0);
            if (got < 0 && errno == EAGAIN) continue;
            if (got <= 0) goto fail; /* reset, or the server closed mid-request */
            if ((c->got += got) < payload) continue;
            if (memcmp(c->in, out, payload) != 0) goto fail;
            double done = now();
            if (measuring) {
                long us = (long)((done - c->t0) * 1e6);
                hist[us < HIST_US ? us : HIST_US]++, requests++;
            }
            c->sent = c->got = 0, c->t0 = done;
            if (send_rest(ep, c) == 0) continue;
        fail: /* a broken connection is counted and dropped; the others go on */
            errors++;
            if (close(c->fd) != 0) die("close");
        }
    }
    cpu(&user1, &sys1);
    const char *fmt = "{\"event\": \"result\", \"requests\": %lu, \"window_start\": %.9f, "
                      "\"window_end\": %.9f, \"duration_s\": %.9f, \"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f, "
                      "\"p50_us\": %ld, \"p99_us\": %ld, \"errors\": %lu, \"connections\": %ld}\n";
    if (printf(fmt, requests, window_start, t, t - window_start, user1 - user0, sys1 - sys0,
               percentile(requests, 0.50), percentile(requests, 0.99), errors, n) < 0 || fflush(stdout) != 0)
        die("stdout");
    char byte;
    ssize_t r;
    while ((r = read(0, &byte, 1)) > 0) continue;
    if (r < 0) die("read stdin");
    return 0;
}
