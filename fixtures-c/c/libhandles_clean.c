/* libhandles_clean.so: libhandles.so's clean twin. The same calls, through the same APIs, and
 * every handle released: a leak checker must report nothing under this library (no fd, stream,
 * dir or mapping, and no heap). Exports the same hx_run_all(). */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define HX_TMP_CREAT "/tmp/residue-hx-creat-clean"
#define HX_TMP_MAP "/tmp/residue-hx-map-clean"

struct hx_conn {
    int fd;
    int flags;
    long pad;
};

NOINLINE void hxclean_open_files(void) {
    for (int i = 0; i < 3; i++)
        close(open("/etc/hostname", O_RDONLY));
    close(open("/etc/hostname", O_RDONLY | O_CLOEXEC));
}

NOINLINE void hxclean_openat_creat(void) {
    close(openat(AT_FDCWD, "/etc/hostname", O_RDONLY));
    close(creat(HX_TMP_CREAT, 0600));
}

NOINLINE void hxclean_fd_in_struct(void) {
    struct hx_conn *c = malloc(sizeof *c);
    c->fd = open("/etc/hostname", O_RDONLY);
    close(c->fd);
    free(c);
}

NOINLINE void hxclean_socket(void) {
    close(socket(AF_INET, SOCK_STREAM, 0));
    close(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
}

NOINLINE void hxclean_pipe(void) {
    int p[2];
    if (pipe(p) == 0) {
        close(p[0]);
        close(p[1]);
    }
}

NOINLINE void hxclean_dup_family(void) {
    int a = open("/etc/hostname", O_RDONLY);
    close(dup(a));
    close(fcntl(a, F_DUPFD_CLOEXEC, 0));
    int b = open("/etc/hostname", O_RDONLY);
    close(dup2(a, b));
    close(a);
}

NOINLINE void hxclean_event_fds(void) {
    close(eventfd(0, EFD_CLOEXEC));
    close(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC));
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR2);
    int s = signalfd(-1, &mask, SFD_CLOEXEC);
    sigaddset(&mask, SIGUSR1);
    signalfd(s, &mask, 0);
    close(s);
    close(epoll_create1(EPOLL_CLOEXEC));
    close(inotify_init1(IN_CLOEXEC));
    close(memfd_create("residue-hx", MFD_CLOEXEC));
}

NOINLINE void hxclean_recv_fd(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return;
    int sent = open("/etc/hostname", O_RDONLY);
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &sent, sizeof(int));
    sendmsg(sv[0], &msg, 0);
    close(sent);
    struct msghdr in = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
    if (recvmsg(sv[1], &in, 0) == 1) {
        int got;
        memcpy(&got, CMSG_DATA(CMSG_FIRSTHDR(&in)), sizeof(int));
        close(got);
    }
    close(sv[0]);
    close(sv[1]);
}

NOINLINE void hxclean_streams(void) {
    FILE *f = fopen("/etc/hostname", "r");
    if (f) {
        (void)fgetc(f);
        fclose(f);
    }
    FILE *h = fdopen(open("/etc/hostname", O_RDONLY), "r");
    if (h)
        fclose(h);
    FILE *t = tmpfile();
    if (t)
        fclose(t);
    static char mem[64];
    FILE *fm = fmemopen(mem, sizeof mem, "w");
    if (fm)
        fclose(fm);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (m) {
        fputs("residue", m);
        fclose(m);
        free(buf);
    }
    FILE *p = popen("true", "r");
    if (p)
        pclose(p);
}

NOINLINE void hxclean_dirs(void) {
    DIR *d = opendir("/");
    if (d)
        closedir(d);
    DIR *e = fdopendir(open("/etc", O_RDONLY | O_DIRECTORY));
    if (e)
        closedir(e);
}

NOINLINE void hxclean_mappings(void) {
    long page = sysconf(_SC_PAGESIZE);
    void *a = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(a, 3 * page);
    int fd = open(HX_TMP_MAP, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) {
        if (ftruncate(fd, 2 * page) == 0) {
            void *f = mmap(NULL, 2 * page, PROT_READ, MAP_SHARED, fd, 0);
            munmap(f, 2 * page);
        }
        close(fd);
    }
    char *four = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(four + page, page);
    munmap(four, page);
    munmap(four + 2 * page, 2 * page);
    void *one = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *grown = mremap(one, page, 4 * page, MREMAP_MAYMOVE);
    munmap(grown, 4 * page);
}

NOINLINE void hxclean_big_mallocs(void) {
    for (int i = 0; i < 4; i++) {
        void *volatile p = malloc(8 << 20);
        ((char *)p)[0] = 1;
        free(p);
    }
}

NOINLINE void hxclean_close_range(void) {
    int a = open("/etc/hostname", O_RDONLY);
    int b = dup(a);
    int c = dup(a);
    int lo = a < b ? (a < c ? a : c) : (b < c ? b : c);
    int hi = a > b ? (a > c ? a : c) : (b > c ? b : c);
    if (hi - lo == 2)
        close_range(lo, hi, 0);
    else {
        close(a);
        close(b);
        close(c);
    }
}

NOINLINE void hxclean_raw_syscall(void) {
    close(syscall(SYS_openat, AT_FDCWD, "/etc/hostname", O_RDONLY));
}

int hx_run_all(void) {
    hxclean_open_files();
    hxclean_openat_creat();
    hxclean_fd_in_struct();
    hxclean_socket();
    hxclean_pipe();
    hxclean_dup_family();
    hxclean_event_fds();
    hxclean_recv_fd();
    hxclean_streams();
    hxclean_dirs();
    hxclean_mappings();
    hxclean_big_mallocs();
    hxclean_close_range();
    hxclean_raw_syscall();
    return 0;
}
