/*
 * The reference server of `cargo xtask bench` (issue #17): the least a server can do to answer
 * the bench's range requests, to show how close edgeplane and nginx get to the machine's limit.
 *
 * One thread, one edge-triggered epoll registration per connection (EPOLLIN | EPOLLOUT, armed
 * once for the connection's life), keep-alive, pipelining. Per request: the path (a file name
 * in the served directory, opened once and kept) and the Range line (`bytes=A-B`); nothing
 * else of HTTP is looked at. Response: a 206 head sent with MSG_MORE, then the body with
 * sendfile; a socket that fills up waits for EPOLLOUT. Anything it cannot answer: 400 and close.
 *
 *   refserver DIR PORT      (prints "refserver ready port=N" once listening; PORT 0 = any;
 *                            SIGTERM: exit 0)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF 8192
#define MAX_FILES 64

struct file {
    char name[256];
    int fd;
    off_t size;
};
static struct file files[MAX_FILES];
static int nfiles;
static int dirfd_;

struct conn {
    int fd;
    char buf[BUF];
    size_t len;
    int sending_fd; /* body in flight: file, offset, end */
    off_t off, end;
};

static struct file *open_file(const char *name, size_t n) {
    if (n == 0 || n >= sizeof files[0].name) return NULL;
    for (int i = 0; i < nfiles; i++)
        if (strlen(files[i].name) == n && memcmp(files[i].name, name, n) == 0) return &files[i];
    if (nfiles == MAX_FILES) return NULL;
    struct file *f = &files[nfiles];
    memcpy(f->name, name, n);
    f->name[n] = 0;
    if (strchr(f->name, '/')) return NULL;
    f->fd = openat(dirfd_, f->name, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return NULL;
    struct stat st;
    if (fstat(f->fd, &st) < 0) {
        close(f->fd);
        return NULL;
    }
    f->size = st.st_size;
    nfiles++;
    return f;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Sends what is left of the body; 1 = done, 0 = socket full, -1 = error. */
static int send_body(struct conn *c) {
    while (c->off < c->end) {
        ssize_t n = sendfile(c->fd, c->sending_fd, &c->off, (size_t)(c->end - c->off));
        if (n > 0) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
    c->sending_fd = -1;
    return 1;
}

/* Answers every complete request in the buffer; -1 = close. */
static int serve(struct conn *c) {
    for (;;) {
        if (c->sending_fd >= 0) {
            int r = send_body(c);
            if (r <= 0) return r;
        }
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) return c->len == BUF ? -1 : 0;
        size_t head_len = (size_t)(end - c->buf) + 4;
        /* "GET /name HTTP/1.1" */
        char *p = c->buf;
        if (c->len < 5 || memcmp(p, "GET /", 5) != 0) return -1;
        char *name = p + 5;
        char *sp = memchr(name, ' ', (size_t)(end - name));
        if (!sp) return -1;
        struct file *f = open_file(name, (size_t)(sp - name));
        if (!f) return -1;
        char *range = memmem(c->buf, head_len, "\r\nRange: bytes=", 15);
        if (!range) return -1;
        char *q;
        long long a = strtoll(range + 15, &q, 10);
        if (*q != '-') return -1;
        long long b = strtoll(q + 1, &q, 10);
        if (a < 0 || b < a || a >= f->size) return -1;
        if (b >= f->size) b = f->size - 1;
        char head[256];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 206 Partial Content\r\nContent-Length: %lld\r\n"
                         "Content-Range: bytes %lld-%lld/%lld\r\n\r\n",
                         b - a + 1, a, b, (long long)f->size);
        if (send(c->fd, head, (size_t)n, MSG_MORE | MSG_NOSIGNAL) != n) return -1;
        memmove(c->buf, c->buf + head_len, c->len - head_len);
        c->len -= head_len;
        c->sending_fd = f->fd;
        c->off = a;
        c->end = b + 1;
    }
}

/* Reads until EAGAIN, serving as requests complete; -1 = close. */
static int on_event(struct conn *c) {
    for (;;) {
        if (serve(c) < 0) return -1;
        if (c->sending_fd >= 0) return 0; /* socket full: wait for EPOLLOUT */
        ssize_t n = recv(c->fd, c->buf + c->len, BUF - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EAGAIN) return 0;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    if (argc != 3) {
        fprintf(stderr, "usage: refserver DIR PORT\n");
        return 2;
    }
    dirfd_ = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd_ < 0) {
        perror(argv[1]);
        return 1;
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons((unsigned short)atoi(argv[2])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof addr;
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 4096) < 0 ||
        getsockname(ls, (struct sockaddr *)&addr, &alen) < 0) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("refserver ready port=%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->sending_fd = -1;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                              .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (on_event(c) < 0) drop(ep, c);
        }
    }
}
