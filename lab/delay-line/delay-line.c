/*
 * The lab's delay line in C: the same process as lab/delay-line-main.ts (same options, same
 * JSON lines on stdout, same model as lab/delay-line.ts), for when the Node.js relay is the
 * bottleneck (docs/design.md#lab-facts, delay-line throughput: it tops out at ~430-630 Mbit/s on
 * 2 cores, below the nominal 1 Gbit/s; docs/lab.md has the measurements).
 *
 * Model, per direction (lab/delay-line.ts has the reasoning): random loss; a serialiser at the
 * line rate (each datagram counted as payload + 28 bytes); a tail-drop queue bounded in ms of
 * serialisation; then the one-way delay. Delivery times are non-decreasing per direction, so a
 * FIFO per direction is an exact scheduler: the process sleeps (ppoll, ns timeout) until the
 * earlier head is due or a datagram/signal arrives, then sends everything due with sendmmsg.
 * Unlike the JS (timers of ms granularity, 0.5 ms slack) nothing is sent before it is due.
 *
 * Scheduling (docs/lab.md "The instrument"): --rt-priority P runs it under SCHED_FIFO P (0: the
 * normal scheduler) and --cpu N pins it to CPU N (-1: anywhere); a refusal (no CAP_SYS_NICE, a
 * CPU not allowed) is a warning on stderr and in the listening line's "sched", never fatal.
 *
 * Build: gcc -O2 -Wall -o vmtc-delay-line delay-line.c -lm   (lab/delay-line/build.ts does it)
 * Output: {"event":"listening",...} once bound; {"event":"stats",...} every --report-ms (without
 * config) and on SIGUSR2 (with config); {"event":"final",...} on SIGTERM/SIGINT, then exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXDGRAM 65536

/* ---- options (defaults = DELAY_LINE_DEFAULTS in lab/delay-line.ts) ---- */
static double one_way_ms = 99, rate_mbps = 1000, queue_ms = 20, loss = 0;
static const double overhead_bytes = 28;

/* ---- clocks ---- */
static double mono_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
static double wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return floor(t.tv_sec * 1e3 + t.tv_nsec / 1e6); /* Date.now(): integer ms */
}

/* ---- random (xorshift64*, seeded per process; loss needs no cryptographic quality) ---- */
static uint64_t rng_state;
static double rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* ---- queueing delay histogram in 0.1 ms buckets (as the JS Histogram) ---- */
typedef struct {
  uint32_t *b;
  size_t n;
  uint64_t count;
  double max;
} hist_t;

static void hist_init(hist_t *h, double max_ms) {
  double want = ceil(max_ms * 10) + 2;
  h->n = want < 2 ? 2 : want > 1e8 ? (size_t)1e8 : (size_t)want;
  h->b = calloc(h->n, sizeof *h->b);
  if (!h->b) { perror("delay-line: calloc"); exit(1); }
  h->count = 0;
  h->max = 0;
}
static void hist_add(hist_t *h, double ms) {
  double f = floor(ms * 10);
  size_t i = f >= (double)(h->n - 1) ? h->n - 1 : (size_t)f;
  h->b[i]++;
  h->count++;
  if (ms > h->max) h->max = ms;
}
static double hist_quantile(const hist_t *h, double q) {
  if (h->count == 0) return 0;
  double want = ceil(q * (double)h->count);
  double seen = 0;
  for (size_t i = 0; i < h->n; i++) {
    seen += h->b[i];
    if (seen >= want) { double v = (i + 1) / 10.0; return v < h->max ? v : h->max; }
  }
  return h->max;
}
static void hist_reset(hist_t *h) {
  memset(h->b, 0, h->n * sizeof *h->b);
  h->count = 0;
  h->max = 0;
}

typedef struct {
  uint64_t packets, bytes, drops, lost;
  hist_t hist;
} counters_t;

static void counters_reset(counters_t *c) {
  c->packets = c->bytes = c->drops = c->lost = 0;
  hist_reset(&c->hist);
}

/* ---- one direction: a FIFO of held datagrams (growable ring of descriptors) ---- */
typedef struct {
  unsigned char *data;
  uint32_t len;
  double due;
} pkt_t;

typedef struct {
  pkt_t *q;
  size_t cap, head, count; /* cap is a power of two */
  double link_free_at;
  struct sockaddr_in to;
  counters_t interval, total;
} dir_t;

static void dir_init(dir_t *d, const struct sockaddr_in *to) {
  d->cap = 1024;
  d->q = malloc(d->cap * sizeof *d->q);
  if (!d->q) { perror("delay-line: malloc"); exit(1); }
  d->head = d->count = 0;
  d->link_free_at = 0;
  d->to = *to;
  memset(&d->interval, 0, sizeof d->interval);
  memset(&d->total, 0, sizeof d->total);
  hist_init(&d->interval.hist, queue_ms + 1);
  hist_init(&d->total.hist, queue_ms + 1);
}

static void dir_push(dir_t *d, unsigned char *data, uint32_t len, double due) {
  if (d->count == d->cap) {
    pkt_t *n = malloc(2 * d->cap * sizeof *n);
    if (!n) { perror("delay-line: malloc"); exit(1); }
    for (size_t i = 0; i < d->count; i++) n[i] = d->q[(d->head + i) & (d->cap - 1)];
    free(d->q);
    d->q = n;
    d->head = 0;
    d->cap *= 2;
  }
  pkt_t *p = &d->q[(d->head + d->count) & (d->cap - 1)];
  p->data = data;
  p->len = len;
  p->due = due;
  d->count++;
}

/* Accept one datagram arriving at `now` (DelayLine Direction.accept): loss, queue bound, pacing. */
static void dir_accept(dir_t *d, const unsigned char *buf, uint32_t len, double now) {
  if (loss > 0 && rnd() < loss) {
    d->interval.lost++;
    d->total.lost++;
    return;
  }
  double start = d->link_free_at > now ? d->link_free_at : now;
  double wait = start - now;
  if (wait > queue_ms) {
    d->interval.drops++;
    d->total.drops++;
    return;
  }
  /* Rate in Mbit/s is bits per microsecond, i.e. rate*1000 bits per ms. */
  d->link_free_at = start + ((len + overhead_bytes) * 8) / (rate_mbps * 1000);
  hist_add(&d->interval.hist, wait);
  hist_add(&d->total.hist, wait);
  unsigned char *copy = malloc(len ? len : 1);
  if (!copy) { perror("delay-line: malloc"); exit(1); }
  memcpy(copy, buf, len);
  dir_push(d, copy, len, d->link_free_at + one_way_ms);
}

static double dir_next_due(const dir_t *d) {
  return d->count ? d->q[d->head].due : INFINITY;
}

/* Send everything due by `now`, in batches of BATCH through sendmmsg (blocking socket). */
static void dir_flush(dir_t *d, int fd, double now) {
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  while (d->count && d->q[d->head].due <= now) {
    int n = 0;
    while (n < BATCH && n < (int)d->count) {
      pkt_t *p = &d->q[(d->head + n) & (d->cap - 1)];
      if (p->due > now) break;
      iov[n].iov_base = p->data;
      iov[n].iov_len = p->len;
      memset(&msgs[n], 0, sizeof msgs[n]);
      msgs[n].msg_hdr.msg_name = &d->to;
      msgs[n].msg_hdr.msg_namelen = sizeof d->to;
      msgs[n].msg_hdr.msg_iov = &iov[n];
      msgs[n].msg_hdr.msg_iovlen = 1;
      n++;
    }
    int done = 0;
    while (done < n) {
      int r = sendmmsg(fd, msgs + done, n - done, 0);
      if (r < 0) {
        if (errno == EINTR) continue;
        /* A datagram the kernel refuses (unreachable, ...) is gone, as a JS send without a
         * callback would lose it: skip it and go on with the rest. */
        done++;
      } else {
        done += r;
      }
    }
    /* Counted as handed on, like the JS (which counts at sock.send). */
    for (int i = 0; i < n; i++) {
      pkt_t *p = &d->q[d->head];
      d->interval.packets++;
      d->total.packets++;
      d->interval.bytes += p->len;
      d->total.bytes += p->len;
      free(p->data);
      d->head = (d->head + 1) & (d->cap - 1);
      d->count--;
    }
  }
}

/* ---- JSON output ---- */
static char out[16384];
static size_t outn;

static void put(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int r = vsnprintf(out + outn, sizeof out - outn, fmt, ap);
  va_end(ap);
  if (r > 0) outn += (size_t)r < sizeof out - outn ? (size_t)r : sizeof out - outn - 1;
}

/* A number as JSON.stringify writes it (integers plainly, else the shortest round-trip form). */
static void put_num(double v) {
  if (!isfinite(v)) { put("null"); return; }
  if (v == floor(v) && fabs(v) < 1e15) { put("%.0f", v == 0 ? 0.0 : v); return; }
  char buf[40];
  for (int p = 1; p <= 17; p++) {
    snprintf(buf, sizeof buf, "%.*g", p, v);
    if (strtod(buf, NULL) == v) break;
  }
  put("%s", buf);
}

static void put_str(const char *s) {
  put("\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') put("\\%c", c);
    else if (c < 0x20) put("\\u%04x", c);
    else put("%c", c);
  }
  put("\"");
}

static void emit(void) {
  put("\n");
  size_t off = 0;
  while (off < outn) {
    ssize_t w = write(1, out + off, outn - off);
    if (w < 0) { if (errno == EINTR) continue; break; }
    off += (size_t)w;
  }
  outn = 0;
}

static double round_to(double v, double scale) { return floor(v * scale + 0.5) / scale; }

static void put_dir_stats(const dir_t *d, const counters_t *c, double interval_ms) {
  double mbps = interval_ms > 0 ? round_to((c->bytes * 8.0) / (interval_ms * 1000), 100) : 0;
  put("{\"packets\":%llu,\"bytes\":%llu,\"drops\":%llu,\"lost\":%llu,\"mbps\":",
      (unsigned long long)c->packets, (unsigned long long)c->bytes,
      (unsigned long long)c->drops, (unsigned long long)c->lost);
  put_num(mbps);
  put(",\"queueP50Ms\":");
  put_num(round_to(hist_quantile(&c->hist, 0.5), 10));
  put(",\"queueMaxMs\":");
  put_num(round_to(c->hist.max, 100));
  put(",\"inFlight\":%zu}", d->count);
}

static void put_config(void) {
  put("{\"oneWayMs\":");
  put_num(one_way_ms);
  put(",\"rateMbps\":");
  put_num(rate_mbps);
  put(",\"queueMs\":");
  put_num(queue_ms);
  put(",\"loss\":");
  put_num(loss);
  put(",\"overheadBytes\":");
  put_num(overhead_bytes);
  put("}");
}

static dir_t ab, ba;
static uint64_t strays;
static double started_at, interval_start;

/* DelayLine.report(): the interval since the last report (which it starts afresh) and totals. */
static void report(const char *event, int with_config) {
  double now = mono_ms();
  double iv = now - interval_start, tot = now - started_at;
  put("{\"event\":\"%s\",\"at\":", event);
  put_num(wall_ms());
  put(",\"intervalMs\":");
  put_num(floor(iv + 0.5));
  if (with_config) { put(",\"config\":"); put_config(); }
  put(",\"interval\":{\"ab\":");
  put_dir_stats(&ab, &ab.interval, iv);
  put(",\"ba\":");
  put_dir_stats(&ba, &ba.interval, iv);
  put("},\"total\":{\"ab\":");
  put_dir_stats(&ab, &ab.total, tot);
  put(",\"ba\":");
  put_dir_stats(&ba, &ba.total, tot);
  put("},\"strays\":%llu}", (unsigned long long)strays);
  emit();
  counters_reset(&ab.interval);
  counters_reset(&ba.interval);
  interval_start = now;
}

/* ---- command line (lab/delay-line-main.ts) ---- */
static void usage_exit(const char *msg) {
  fprintf(stderr, "delay-line: %s\n", msg);
  exit(2);
}

static double num_opt(const char *v, const char *name) {
  char *end;
  errno = 0;
  double n = strtod(v, &end);
  if (*v == 0 || *end != 0 || errno || !isfinite(n) || n < 0) {
    fprintf(stderr, "delay-line: --%s must be a non-negative number\n", name);
    exit(2);
  }
  return n;
}

static void parse_addr(const char *s, struct sockaddr_in *sa, int port, const char *name) {
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, s, &sa->sin_addr) != 1) {
    fprintf(stderr, "delay-line: --%s must be an IPv4 address\n", name);
    exit(2);
  }
}

int main(int argc, char **argv) {
  const char *listen_host = "0.0.0.0", *listen_port = "0", *a_s = NULL, *b_s = NULL, *dst_port_s = NULL;
  const char *one_way_s = NULL, *rate_s = NULL, *queue_ms_s = NULL, *queue_bytes_s = NULL, *loss_s = NULL;
  const char *report_s = "1000", *tag = NULL, *rt_s = "0", *cpu_s = "-1";
  struct { const char *name; const char **val; } opts[] = {
    {"listen-host", &listen_host}, {"listen-port", &listen_port}, {"a", &a_s}, {"b", &b_s},
    {"dst-port", &dst_port_s}, {"one-way-ms", &one_way_s}, {"rate-mbps", &rate_s},
    {"queue-ms", &queue_ms_s}, {"queue-bytes", &queue_bytes_s}, {"loss", &loss_s},
    {"report-ms", &report_s}, {"tag", &tag}, {"rt-priority", &rt_s}, {"cpu", &cpu_s},
  };
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strncmp(arg, "--", 2) != 0) { fprintf(stderr, "delay-line: unexpected argument '%s'\n", arg); exit(2); }
    const char *name = arg + 2, *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    size_t k;
    for (k = 0; k < sizeof opts / sizeof opts[0]; k++)
      if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, name, nlen) == 0) break;
    if (k == sizeof opts / sizeof opts[0]) { fprintf(stderr, "delay-line: unknown option '%s'\n", arg); exit(2); }
    if (eq) *opts[k].val = eq + 1;
    else if (i + 1 < argc) *opts[k].val = argv[++i];
    else { fprintf(stderr, "delay-line: option '%s' needs a value\n", arg); exit(2); }
  }
  if (!a_s || !b_s) usage_exit("--a and --b (endpoint IPv4 addresses) are required");
  if (rate_s) rate_mbps = num_opt(rate_s, "rate-mbps");
  if (rate_mbps <= 0) usage_exit("--rate-mbps must be positive");
  if (one_way_s) one_way_ms = num_opt(one_way_s, "one-way-ms");
  if (queue_bytes_s) queue_ms = (num_opt(queue_bytes_s, "queue-bytes") * 8) / (rate_mbps * 1000);
  else if (queue_ms_s) queue_ms = num_opt(queue_ms_s, "queue-ms");
  if (loss_s) loss = num_opt(loss_s, "loss");
  if (loss >= 1) usage_exit("--loss must be below 1");
  double report_ms = num_opt(report_s, "report-ms");
  double lport = num_opt(listen_port, "listen-port");
  double rt_prio = num_opt(rt_s, "rt-priority");
  if (rt_prio != floor(rt_prio) || rt_prio > 99) usage_exit("--rt-priority must be an integer from 0 to 99");
  char *cpu_end;
  long cpu = strtol(cpu_s, &cpu_end, 10);
  if (*cpu_s == 0 || *cpu_end != 0 || cpu < -1 || cpu > 1023) usage_exit("--cpu must be a CPU number or -1");

  /* Real-time priority and pinning, before the socket exists: a warning on refusal, not an error. */
  char sched_warning[256] = "";
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
      snprintf(sched_warning, sizeof sched_warning, "pinning to CPU %ld refused: %s", cpu, strerror(errno));
      fprintf(stderr, "delay-line: warning: %s; running on any CPU\n", sched_warning);
    }
  }
  if (rt_prio > 0) {
    struct sched_param sp = { .sched_priority = (int)rt_prio };
    if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0) {
      size_t used = strlen(sched_warning);
      snprintf(sched_warning + used, sizeof sched_warning - used, "%sSCHED_FIFO %d refused: %s", used ? "; " : "", (int)rt_prio, strerror(errno));
      fprintf(stderr, "delay-line: warning: SCHED_FIFO %d refused (%s); running at normal priority\n", (int)rt_prio, strerror(errno));
    }
  }
  if (lport > 65535 || lport != floor(lport)) usage_exit("--listen-port must be a port number");

  /* Signals arrive through a signalfd, so they are handled between batches, never mid-update.
   * Reset the dispositions first: an inherited SIG_IGN would discard them even when blocked. */
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGUSR2);
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGUSR2, SIG_DFL);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) { perror("delay-line: signalfd"); return 1; }

  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) { perror("delay-line: socket"); return 1; }
  /* Large socket buffers: a burst of a whole TCP window must not overflow the kernel's queue
   * before we read it. FORCE (root, as in the lab) goes beyond net.core.[rw]mem_max. */
  int sz = 32 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof sz) < 0) {
    sz = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
  }
  sz = 32 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof sz) < 0) {
    sz = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  }
  struct sockaddr_in la;
  parse_addr(listen_host, &la, (int)lport, "listen-host");
  if (bind(fd, (struct sockaddr *)&la, sizeof la) < 0) {
    fprintf(stderr, "delay-line: socket error: bind %s:%d: %s\n", listen_host, (int)lport, strerror(errno));
    return 1;
  }
  socklen_t ll = sizeof la;
  getsockname(fd, (struct sockaddr *)&la, &ll);
  int port = ntohs(la.sin_port);
  int dst_port = port;
  if (dst_port_s) {
    double p = num_opt(dst_port_s, "dst-port");
    if (p > 65535 || p != floor(p)) usage_exit("--dst-port must be a port number");
    dst_port = (int)p;
  }
  struct sockaddr_in a, b;
  parse_addr(a_s, &a, dst_port, "a");
  parse_addr(b_s, &b, dst_port, "b");

  rng_state = ((uint64_t)getpid() << 32) ^ (uint64_t)(mono_ms() * 1e6) ^ (uint64_t)wall_ms() ^ 0x9e3779b97f4a7c15ULL;
  if (!rng_state) rng_state = 1;

  dir_init(&ab, &b);
  dir_init(&ba, &a);
  started_at = interval_start = mono_ms();

  char host[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &la.sin_addr, host, sizeof host);
  put("{\"event\":\"listening\",\"address\":");
  put_str(host);
  put(",\"port\":%d,\"pid\":%d,\"a\":{\"address\":", port, (int)getpid());
  put_str(a_s);
  put(",\"port\":%d},\"b\":{\"address\":", dst_port);
  put_str(b_s);
  put(",\"port\":%d},\"config\":", dst_port);
  put_config();
  put(",\"tag\":");
  if (tag) put_str(tag); else put("null");
  /* What the kernel says now, whatever was asked. */
  {
    int policy = sched_getscheduler(0);
    struct sched_param sp;
    if (sched_getparam(0, &sp) != 0) sp.sched_priority = 0;
    cpu_set_t set;
    char cpus[128] = "";
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
      for (int c = 0; c < CPU_SETSIZE && strlen(cpus) < sizeof cpus - 8; c++)
        if (CPU_ISSET(c, &set)) snprintf(cpus + strlen(cpus), sizeof cpus - strlen(cpus), "%s%d", cpus[0] ? "," : "", c);
    }
    put(",\"sched\":{\"policy\":");
    put_str(policy == SCHED_FIFO ? "fifo" : policy == SCHED_RR ? "rr" : "other");
    put(",\"priority\":%d,\"cpus\":", sp.sched_priority);
    put_str(cpus);
    if (sched_warning[0]) { put(",\"warning\":"); put_str(sched_warning); }
    put("}");
  }
  put("}");
  emit();

  static unsigned char bufs[BATCH][MAXDGRAM];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  struct sockaddr_in from[BATCH];
  double next_report = report_ms > 0 ? started_at + report_ms : INFINITY;
  int more = 0; /* the last receive filled its batch: more may be waiting */

  for (;;) {
    double now = mono_ms();
    dir_flush(&ab, fd, now);
    dir_flush(&ba, fd, now);
    if (now >= next_report) {
      report("stats", 0); /* periodic lines leave out the (unchanging) config */
      while (next_report <= now) next_report += report_ms;
    }
    double wake = dir_next_due(&ab);
    if (dir_next_due(&ba) < wake) wake = dir_next_due(&ba);
    if (next_report < wake) wake = next_report;
    struct timespec ts, *tsp = NULL;
    if (more) {
      ts.tv_sec = 0;
      ts.tv_nsec = 0;
      tsp = &ts;
    } else if (isfinite(wake)) {
      double ns = ceil((wake - now) * 1e6);
      if (ns < 0) ns = 0;
      ts.tv_sec = (time_t)(ns / 1e9);
      ts.tv_nsec = (long)(ns - ts.tv_sec * 1e9);
      tsp = &ts;
    }
    struct pollfd pf[2] = {{.fd = fd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    int pr = ppoll(pf, 2, tsp, NULL);
    if (pr < 0) {
      if (errno == EINTR) continue;
      perror("delay-line: ppoll");
      return 1;
    }
    if (pf[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGUSR2) {
          report("stats", 1);
        } else {
          report("final", 1);
          return 0;
        }
      }
    }
    more = 0;
    if (pf[0].revents & (POLLIN | POLLERR)) {
      for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = MAXDGRAM;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
      }
      int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
      if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          /* An ICMP error queued on the socket (ECONNREFUSED, ...) is not fatal for a relay. */
          if (errno != ECONNREFUSED && errno != EHOSTUNREACH && errno != ENETUNREACH) {
            fprintf(stderr, "delay-line: socket error: %s\n", strerror(errno));
            return 1;
          }
          more = 1;
        }
        continue;
      }
      now = mono_ms();
      for (int i = 0; i < n; i++) {
        uint32_t len = msgs[i].msg_len;
        if (msgs[i].msg_hdr.msg_namelen < sizeof(struct sockaddr_in) || from[i].sin_family != AF_INET) { strays++; continue; }
        in_addr_t src = from[i].sin_addr.s_addr;
        /* By address only, like the JS: the ends' vxlan devices send from ephemeral ports. */
        if (src == a.sin_addr.s_addr) dir_accept(&ab, bufs[i], len, now);
        else if (src == b.sin_addr.s_addr) dir_accept(&ba, bufs[i], len, now);
        else strays++;
      }
      more = n == BATCH;
    }
  }
}
