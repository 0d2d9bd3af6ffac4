/* wanemu: a packet-level WAN link between two TUN devices, each in its own network namespace.
 *
 * Every IP packet read from one TUN device goes through that direction's link model and is
 * written to the other TUN device when due:
 *
 *   arrival ── drop-tail buffer (bytes) ── serialisation at `rate` ── random loss ── delay ──▶
 *
 * The buffer holds what the link has accepted but not yet serialised; a packet that would make it
 * exceed `buffer` bytes is dropped on arrival (drop-tail). A packet occupies the link for
 * len*8/rate seconds (len = the IP packet; a TUN device has no link-layer header), then is lost
 * with probability `loss` (it used the link all the same, as on a noisy line), else delivered
 * `delay` later. Both queues are FIFO, so order is kept. Rate 0 = unlimited, buffer 0 = unbounded.
 *
 * usage: wanemu NS_A DEV_A NS_B DEV_B AB BA [SEED]
 *   NS_*:  a name under /run/netns (ip netns add); DEV_*: a persistent TUN device in it
 *          (ip -n NS tuntap add mode tun dev DEV), attached here with IFF_TUN|IFF_NO_PI
 *   AB/BA: rate_bit_s:delay_us:loss_ppm:buffer_bytes for A→B and B→A
 * SIGUSR1 writes the counters as one JSON line on stdout; SIGTERM/SIGINT write them and exit.
 * Built by tests/harness/wan.py at test time (gcc -O2); single-threaded, epoll + timerfd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAXPKT 65536

struct pkt {
    struct pkt *next;
    uint64_t due; /* ns, CLOCK_MONOTONIC */
    uint32_t len;
    unsigned char data[];
};

struct dir {
    const char *name;
    int in, out;             /* read from `in`, write to `out` */
    uint64_t rate;           /* bit/s, 0 = unlimited */
    uint64_t delay;          /* ns */
    uint64_t loss;           /* parts per million */
    uint64_t buffer;         /* bytes, 0 = unbounded */
    uint64_t tx_done;        /* ns: when the link finishes serialising what it accepted */
    struct pkt *head, *tail; /* the delay line (due order) */
    uint64_t in_pkts, in_bytes, lost, tail_drops, out_pkts, out_bytes, write_errors;
    uint64_t max_backlog;
};

static volatile sig_atomic_t want_stats, want_exit;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void) {
    uint64_t x = rng_state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int tun_in(const char *ns, const char *dev) {
    char path[512];
    snprintf(path, sizeof path, "/run/netns/%s", ns);
    int nsfd = open(path, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) die(path);
    if (setns(nsfd, CLONE_NEWNET) < 0) die("setns");
    close(nsfd);
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) die("/dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
    return fd;
}

static void parse_dir(struct dir *d, const char *spec) {
    unsigned long long rate, delay_us, loss, buffer;
    if (sscanf(spec, "%llu:%llu:%llu:%llu", &rate, &delay_us, &loss, &buffer) != 4) {
        fprintf(stderr, "bad direction spec %s (rate:delay_us:loss_ppm:buffer)\n", spec);
        exit(2);
    }
    d->rate = rate; d->delay = delay_us * 1000ull; d->loss = loss; d->buffer = buffer;
}

static void arrive(struct dir *d, const unsigned char *buf, uint32_t len, uint64_t now) {
    d->in_pkts++; d->in_bytes += len;
    uint64_t start = d->tx_done > now ? d->tx_done : now;
    if (d->rate) {
        uint64_t backlog = (start - now) * d->rate / 8000000000ull; /* bytes not yet sent */
        if (backlog > d->max_backlog) d->max_backlog = backlog;
        if (d->buffer && backlog + len > d->buffer) { d->tail_drops++; return; }
        d->tx_done = start + (uint64_t)len * 8000000000ull / d->rate;
    } else {
        d->tx_done = now;
    }
    if (d->loss && rnd() % 1000000ull < d->loss) { d->lost++; return; }
    struct pkt *p = malloc(sizeof *p + len);
    if (!p) die("malloc");
    p->next = NULL; p->len = len; p->due = d->tx_done + d->delay;
    memcpy(p->data, buf, len);
    if (d->tail) d->tail->next = p; else d->head = p;
    d->tail = p;
}

static void deliver(struct dir *d, uint64_t now) {
    while (d->head && d->head->due <= now) {
        struct pkt *p = d->head;
        d->head = p->next;
        if (!d->head) d->tail = NULL;
        if (write(d->out, p->data, p->len) == (ssize_t)p->len) {
            d->out_pkts++; d->out_bytes += p->len;
        } else {
            d->write_errors++; /* the device is down (a flap): the packet is gone */
        }
        free(p);
    }
}

static void print_stats(struct dir *dirs) {
    printf("{");
    for (int i = 0; i < 2; i++) {
        struct dir *d = &dirs[i];
        printf("%s\"%s\": {\"in_pkts\": %" PRIu64 ", \"in_bytes\": %" PRIu64
               ", \"lost\": %" PRIu64 ", \"tail_drops\": %" PRIu64 ", \"out_pkts\": %" PRIu64
               ", \"out_bytes\": %" PRIu64 ", \"write_errors\": %" PRIu64
               ", \"max_backlog\": %" PRIu64 "}",
               i ? ", " : "", d->name, d->in_pkts, d->in_bytes, d->lost, d->tail_drops,
               d->out_pkts, d->out_bytes, d->write_errors, d->max_backlog);
    }
    printf("}\n");
    fflush(stdout);
}

static void on_signal(int sig) {
    if (sig == SIGUSR1) want_stats = 1; else want_exit = 1;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s NS_A DEV_A NS_B DEV_B AB BA [SEED]\n", argv[0]);
        return 2;
    }
    if (argc > 7) rng_state ^= strtoull(argv[7], NULL, 10) * 0xBF58476D1CE4E5B9ull;
    if (!rng_state) rng_state = 1;
    int a = tun_in(argv[1], argv[2]);
    int b = tun_in(argv[3], argv[4]);
    struct dir dirs[2] = {{.name = "ab", .in = a, .out = b}, {.name = "ba", .in = b, .out = a}};
    parse_dir(&dirs[0], argv[5]);
    parse_dir(&dirs[1], argv[6]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (ep < 0 || timer < 0) die("epoll/timerfd");
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = 0; epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev);
    ev.data.u32 = 1; epoll_ctl(ep, EPOLL_CTL_ADD, b, &ev);
    ev.data.u32 = 2; epoll_ctl(ep, EPOLL_CTL_ADD, timer, &ev);
    printf("wanemu ready\n");
    fflush(stdout);

    static unsigned char buf[MAXPKT];
    uint64_t armed = 0;
    while (!want_exit) {
        if (want_stats) { want_stats = 0; print_stats(dirs); }
        struct epoll_event events[4];
        int n = epoll_wait(ep, events, 4, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        uint64_t now = now_ns();
        for (int i = 0; i < n; i++) {
            uint32_t which = events[i].data.u32;
            if (which == 2) {
                uint64_t expirations;
                while (read(timer, &expirations, sizeof expirations) > 0) {}
                armed = 0;
                continue;
            }
            for (int k = 0; k < 256; k++) { /* bounded: the other side gets its turn */
                ssize_t len = read(dirs[which].in, buf, sizeof buf);
                if (len <= 0) break;
                arrive(&dirs[which], buf, (uint32_t)len, now);
            }
        }
        now = now_ns();
        uint64_t next = 0;
        for (int i = 0; i < 2; i++) {
            deliver(&dirs[i], now);
            if (dirs[i].head && (!next || dirs[i].head->due < next)) next = dirs[i].head->due;
        }
        if (next != armed) {
            struct itimerspec its;
            memset(&its, 0, sizeof its);
            if (next) {
                its.it_value.tv_sec = (time_t)(next / 1000000000ull);
                its.it_value.tv_nsec = (long)(next % 1000000000ull);
            }
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &its, NULL);
            armed = next;
        }
    }
    print_stats(dirs);
    return 0;
}
