/*
 * vmtc-probe: the guest's small helper programs, one static binary with sub-commands (like
 * busybox) so the initramfs stays small and the build compiles one file.
 *
 *   vmtc-probe tcp-echo PORT          TCP echo server (the "TCP session survives" test; one
 *                                     child per connection so a stuck client blocks no one)
 *   vmtc-probe udp-echo PORT          UDP echo responder (the turntable's 2 ms UDP probe,
 *                                     docs/design.md#seeing-it)
 *   vmtc-probe clock GAP_MS PERIOD_US internal probe: compares CLOCK_MONOTONIC and
 *                                     CLOCK_REALTIME every PERIOD_US (the paper used 0.2 ms)
 *                                     and prints every gap over GAP_MS (paper §6: 50 ms)
 *   vmtc-probe heartbeat DEV PERIOD_MS serial heartbeat: writes "hb SEQ\n" to DEV (/dev/ttyS1)
 *                                     every PERIOD_MS, so the host side of the port can
 *                                     timestamp arrivals against the host clock
 *   vmtc-probe dirty MB PERIOD_MS [REPORT_DEV]
 *                                     load: keeps rewriting MB of memory, one pass per period
 *                                     (stands in for the paper's image-processing workload),
 *                                     with known patterns it verifies before each rewrite;
 *                                     VMTC-MEM lines also go to REPORT_DEV (/dev/ttyS1)
 *   vmtc-probe fill MB DONE_FILE      a populated guest (the paper's VMs had their memory in
 *                                     use): writes MB MiB of non-zero data once, prints
 *                                     VMTC-FILL, creates DONE_FILE, then holds the memory
 *                                     without touching it again (init.sh waits for DONE_FILE)
 *
 * Output lines are prefixed "VMTC-" so a reader of the console can pick them out.
 *
 * The probes that answer or report (tcp-echo, udp-echo, heartbeat) run at real-time priority
 * (SCHED_FIFO 10; nice -15 if that is refused): they block on I/O almost all the time, and they
 * measure when the VM can run again, not how the guest's scheduler shares a CPU with the dirty
 * load, which after a resume can hold it for hundreds of ms while it verifies a pass.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static double now_ms(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_us(long us) {
  struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

static int tcp_echo(int port) {
  signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = { htonl(INADDR_ANY) } };
  if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) { perror("tcp-echo bind"); return 1; }
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    if (fork() == 0) {
      close(s);
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      char buf[4096];
      ssize_t n;
      while ((n = read(c, buf, sizeof buf)) > 0) {
        ssize_t off = 0;
        while (off < n) {
          ssize_t w = write(c, buf + off, n - off);
          if (w <= 0) _exit(0);
          off += w;
        }
      }
      _exit(0);
    }
    close(c);
  }
}

static int udp_echo(int port) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = { htonl(INADDR_ANY) } };
  if (bind(s, (struct sockaddr *)&a, sizeof a)) { perror("udp-echo bind"); return 1; }
  char buf[2048];
  for (;;) {
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
    if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
  }
}

/* Both clocks are compared because a paused guest may resume with a monotonic clock that did not
 * advance (kvmclock/TSC hidden from the guest) while the realtime clock is stepped, or neither:
 * docs/design.md#lab-facts records that under TCG neither saw the pause. Each gap line names both
 * figures. */
static int clock_probe(double gap_ms, long period_us) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  double m0 = now_ms(CLOCK_MONOTONIC), r0 = now_ms(CLOCK_REALTIME);
  unsigned long n = 0;
  printf("VMTC-CLOCK start gap_ms=%.1f period_us=%ld\n", gap_ms, period_us);
  for (;;) {
    sleep_us(period_us);
    double m = now_ms(CLOCK_MONOTONIC), r = now_ms(CLOCK_REALTIME);
    double dm = m - m0, dr = r - r0;
    n++;
    if (dm > gap_ms || dr > gap_ms)
      printf("VMTC-GAP n=%lu mono_ms=%.3f real_ms=%.3f at_real=%.3f\n", n, dm, dr, r);
    m0 = m;
    r0 = r;
  }
  return 0;
}

static int heartbeat(const char *dev, long period_ms) {
  int fd = open(dev, O_WRONLY | O_NOCTTY);
  if (fd < 0) { perror("heartbeat open"); return 1; }
  struct termios t;
  if (tcgetattr(fd, &t) == 0) {
    cfmakeraw(&t);
    cfsetospeed(&t, B115200);
    tcsetattr(fd, TCSANOW, &t);
  }
  unsigned long seq = 0;
  double next = now_ms(CLOCK_MONOTONIC);
  for (;;) {
    char line[64];
    int len = snprintf(line, sizeof line, "hb %lu\n", seq++);
    if (write(fd, line, len) < 0 && errno != EAGAIN) { perror("heartbeat write"); sleep_us(100000); }
    next += period_ms;
    double wait = next - now_ms(CLOCK_MONOTONIC);
    if (wait > 0) sleep_us((long)(wait * 1000));
    else next = now_ms(CLOCK_MONOTONIC); /* fell behind (e.g. paused): do not burst to catch up */
  }
}

/* The dirty load and its memory check (docs/lab.md, "The guest's memory check"). Every 4 KiB
 * page of the buffer holds a header {magic, page index, generation, check word} and a body
 * derived from (page, generation), so what each page must hold is known. Each pass first compares
 * every word of a page with what the previous pass wrote there, then writes the next generation
 * into it: a page that changed behind the program's back (lost or corrupted by a live migration)
 * is found within one pass. A mismatch is one VMTC-MEM-BAD line naming the page, the offset and
 * the expected and found word; every pass ends with a VMTC-MEM summary line, so the host can tell
 * how far the memory was verified. Lines go to the console and to REPORT_DEV (the heartbeat's
 * serial port) when given. The buffer is locked in memory and the physical address of one page
 * is printed (VMTC-MEM-MAP), so a test can corrupt that page from the host side. */
#define MEM_MAGIC 0x314d454d43544d56ULL /* "VMTCMEM1" little-endian */
#define PAGE_BYTES 4096
#define PAGE_WORDS (PAGE_BYTES / 8)

static int mem_report_fd = -1;

static void mem_say(const char *fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (len < 0) return;
  if (len > (int)sizeof line - 2) len = sizeof line - 2;
  line[len++] = '\n';
  /* One write per line: a tty takes one write whole, so lines never interleave with the
   * heartbeat's on the same port. */
  if (write(STDOUT_FILENO, line, len) < 0) {}
  if (mem_report_fd >= 0 && write(mem_report_fd, line, len) < 0) {}
}

static uint64_t page_seed(uint64_t page, uint64_t gen) {
  uint64_t x = (page + 1) * 0x9e3779b97f4a7c15ULL ^ (gen + 1) * 0xd1b54a32d192ed03ULL;
  x ^= x >> 31;
  return x * 0xbf58476d1ce4e5b9ULL;
}

/* The body is an arithmetic sequence from the seed with an odd step of the page's own, so that
 * no two generations or pages are alike and writing or checking it costs an add per word. It is
 * handled two words at a time in SSE2 vectors, four vectors a step: the guest runs under TCG,
 * where every instruction counts (docs/lab.md, "The guest's memory check": a pass over 8 MB
 * takes tens of ms there). */
typedef uint64_t u64x2 __attribute__((vector_size(16)));
#define BODY_WORDS (PAGE_WORDS - 4)
#define BODY_VECS (BODY_WORDS / 2) /* 254: the body starts 32 bytes in, so vectors are aligned */

static uint64_t page_step(uint64_t page) {
  return ((page + 1) * 0xd1b54a32d192ed03ULL) | 1;
}

static void page_header(uint64_t h[4], uint64_t page, uint64_t gen) {
  h[0] = MEM_MAGIC; h[1] = page; h[2] = gen; h[3] = ~(MEM_MAGIC ^ page ^ gen);
}

/* The body's first four vectors and the stride between groups of four. */
static void body_start(uint64_t page, uint64_t gen, u64x2 v[4], u64x2 *stride) {
  uint64_t x = page_seed(page, gen), d = page_step(page);
  for (int j = 0; j < 4; j++) v[j] = (u64x2){ x + 2 * j * d, x + (2 * j + 1) * d };
  *stride = (u64x2){ 8 * d, 8 * d };
}

/* Write generation `gen` of page `page` into w. */
static void page_fill(uint64_t *w, uint64_t page, uint64_t gen) {
  page_header(w, page, gen);
  u64x2 v[4], st, *q = (u64x2 *)(w + 4);
  body_start(page, gen, v, &st);
  int k = 0;
  for (; k + 4 <= BODY_VECS; k += 4) {
    q[k] = v[0]; q[k + 1] = v[1]; q[k + 2] = v[2]; q[k + 3] = v[3];
    v[0] += st; v[1] += st; v[2] += st; v[3] += st;
  }
  for (int j = 0; k < BODY_VECS; k++, j++) q[k] = v[j];
}

/* Compare the whole page with generation `gen` of page `page`: the index of the first word that
 * differs (its expected value in *want), or -1 when every word is as written. */
static int page_check(const uint64_t *w, uint64_t page, uint64_t gen, uint64_t *want) {
  uint64_t h[4];
  page_header(h, page, gen);
  u64x2 v[4], st, acc = { 0, 0 };
  const u64x2 *q = (const u64x2 *)(w + 4);
  body_start(page, gen, v, &st);
  int k = 0;
  for (; k + 4 <= BODY_VECS; k += 4) {
    acc |= (q[k] ^ v[0]) | (q[k + 1] ^ v[1]) | (q[k + 2] ^ v[2]) | (q[k + 3] ^ v[3]);
    v[0] += st; v[1] += st; v[2] += st; v[3] += st;
  }
  for (int j = 0; k < BODY_VECS; k++, j++) acc |= q[k] ^ v[j];
  int same = !(acc[0] | acc[1]);
  for (int j = 0; j < 4; j++) same &= w[j] == h[j];
  if (same) return -1;
  /* Slow path, only for a page that differs: find the first word. */
  for (int j = 0; j < 4; j++) if (w[j] != h[j]) { *want = h[j]; return j; }
  uint64_t x = page_seed(page, gen), d = page_step(page);
  for (int j = 4; j < PAGE_WORDS; j++, x += d) if (w[j] != x) { *want = x; return j; }
  return -1;
}

/* Physical address of the page holding p (root reads PFNs from /proc/self/pagemap); 0 if unknown. */
static uint64_t phys_of(const void *p) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) return 0;
  uint64_t e = 0;
  ssize_t n = pread(fd, &e, sizeof e, (off_t)((uintptr_t)p / PAGE_BYTES) * 8);
  close(fd);
  if (n != sizeof e || !(e >> 63)) return 0;
  return (e & ((1ULL << 55) - 1)) * PAGE_BYTES;
}

static int dirty(long mb, long period_ms, const char *report_dev) {
  setvbuf(stdout, NULL, _IONBF, 0);
  size_t len = (size_t)mb << 20, pages = len / PAGE_BYTES;
  if (report_dev) {
    mem_report_fd = open(report_dev, O_WRONLY | O_NOCTTY);
    if (mem_report_fd < 0) perror("dirty open report device");
  }
  void *buf = NULL;
  if (pages == 0 || posix_memalign(&buf, PAGE_BYTES, len)) {
    mem_say("VMTC-MEM-BAD setup mb=%ld: %s", mb, pages ? "out of memory" : "no pages");
    return 1;
  }
  uint64_t *p = buf;
  /* Keep the buffer in 4 KiB pages that stay where they are: no transparent huge pages
   * (khugepaged would move them), locked, and compaction told to leave locked pages alone. */
  madvise(buf, len, MADV_NOHUGEPAGE);
  if (mlock(buf, len)) perror("dirty mlock");
  int cfd = open("/proc/sys/vm/compact_unevictable_allowed", O_WRONLY);
  if (cfd >= 0) { if (write(cfd, "0\n", 2) < 0) {} close(cfd); }
  const size_t map_page = pages / 2;
  uint64_t map_phys = 0, bad = 0;
  mem_say("VMTC-DIRTY mb=%ld period_ms=%ld pages=%zu", mb, period_ms, pages);
  double next = now_ms(CLOCK_MONOTONIC);
  for (uint64_t gen = 1;; gen++) {
    /* The pages are read as memory, never as what the compiler remembers writing. */
    __asm__ volatile("" ::: "memory");
    double t0 = now_ms(CLOCK_MONOTONIC);
    for (size_t i = 0; i < pages; i++) {
      uint64_t *w = p + i * PAGE_WORDS;
      uint64_t want;
      int k = gen > 1 ? page_check(w, i, gen - 1, &want) : -1;
      if (k >= 0) {
        /* What its header says now tells a stale page (an older generation) from garbage. */
        bad++;
        mem_say("VMTC-MEM-BAD page=%zu gen=%llu off=%d expected=%016llx got=%016llx hdr=%llu/%llu phys=0x%llx",
                i, (unsigned long long)(gen - 1), k * 8, (unsigned long long)want, (unsigned long long)w[k],
                (unsigned long long)w[1], (unsigned long long)w[2], (unsigned long long)phys_of(w));
      }
      page_fill(w, i, gen);
    }
    double pass_ms = now_ms(CLOCK_MONOTONIC) - t0;
    uint64_t phys = phys_of(p + map_page * PAGE_WORDS);
    if (phys != map_phys) {
      map_phys = phys;
      mem_say("VMTC-MEM-MAP page=%zu phys=0x%llx", map_page, (unsigned long long)phys);
    }
    /* pass = passes that verified every page (the first only writes). */
    if (bad) mem_say("VMTC-MEM bad pass=%llu pages=%zu bad=%llu ms=%.0f", (unsigned long long)(gen - 1), pages, (unsigned long long)bad, pass_ms);
    else if (gen > 1) mem_say("VMTC-MEM ok pass=%llu pages=%zu ms=%.0f", (unsigned long long)(gen - 1), pages, pass_ms);
    next += period_ms;
    double wait = next - now_ms(CLOCK_MONOTONIC);
    if (wait > 0) sleep_us((long)(wait * 1000));
    else next = now_ms(CLOCK_MONOTONIC); /* fell behind (throttled, paused): no burst to catch up */
  }
}

/** The probes' priority (see the header): SCHED_FIFO, else the highest nice the guest allows. */
static void probe_priority(void) {
  struct sched_param sp = { .sched_priority = 10 };
  if (sched_setscheduler(0, SCHED_FIFO, &sp) != 0) (void)setpriority(PRIO_PROCESS, 0, -15);
}

/* The populated guest: MB MiB written once with non-zero data (a different 64-bit word at every
 * offset, so neither QEMU's zero-page detection nor any page-sharing skips it), then left alone:
 * unlike the dirty load it adds pages to copy but no dirtying. */
static int fill(long mb, const char *done_file) {
  size_t len = (size_t)mb << 20;
  double t0 = now_ms(CLOCK_MONOTONIC);
  uint64_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mb <= 0 || p == MAP_FAILED) { printf("VMTC-FILL-FAILED mb=%ld %s\n", mb, mb <= 0 ? "bad size" : strerror(errno)); fflush(stdout); return 1; }
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (size_t i = 0; i < len / 8; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17; /* xorshift64: never 0 from a non-zero seed */
    p[i] = x;
  }
  printf("VMTC-FILL mb=%ld ms=%.0f\n", mb, now_ms(CLOCK_MONOTONIC) - t0);
  fflush(stdout);
  int fd = open(done_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) close(fd);
  for (;;) pause();
}

int main(int argc, char **argv) {
  const char *cmd = argc > 1 ? argv[1] : "";
  if (!strcmp(cmd, "tcp-echo") || !strcmp(cmd, "udp-echo") || !strcmp(cmd, "heartbeat")) probe_priority();
  if (!strcmp(cmd, "tcp-echo") && argc > 2) return tcp_echo(atoi(argv[2]));
  if (!strcmp(cmd, "udp-echo") && argc > 2) return udp_echo(atoi(argv[2]));
  if (!strcmp(cmd, "clock") && argc > 3) return clock_probe(atof(argv[2]), atol(argv[3]));
  if (!strcmp(cmd, "heartbeat") && argc > 3) return heartbeat(argv[2], atol(argv[3]));
  if (!strcmp(cmd, "dirty") && argc > 3) return dirty(atol(argv[2]), atol(argv[3]), argc > 4 ? argv[4] : NULL);
  if (!strcmp(cmd, "fill") && argc > 3) return fill(atol(argv[2]), argv[3]);
  fprintf(stderr, "usage: vmtc-probe tcp-echo PORT | udp-echo PORT | clock GAP_MS PERIOD_US | heartbeat DEV PERIOD_MS | dirty MB PERIOD_MS [REPORT_DEV] | fill MB DONE_FILE\n");
  return 2;
}
