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
 *   vmtc-probe dirty MB PERIOD_MS     load: keeps rewriting MB of memory, one pass per period
 *                                     (stands in for the paper's image-processing workload)
 *
 * Output lines are prefixed "VMTC-" so a reader of the console can pick them out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static int dirty(long mb, long period_ms) {
  size_t len = (size_t)mb << 20;
  volatile uint8_t *p = malloc(len);
  if (!p) { perror("dirty malloc"); return 1; }
  printf("VMTC-DIRTY mb=%ld period_ms=%ld\n", mb, period_ms);
  fflush(stdout);
  for (uint8_t v = 1;; v++) {
    for (size_t i = 0; i < len; i += 4096) p[i] = v; /* one write per page dirties it */
    sleep_us(period_ms * 1000);
  }
}

int main(int argc, char **argv) {
  const char *cmd = argc > 1 ? argv[1] : "";
  if (!strcmp(cmd, "tcp-echo") && argc > 2) return tcp_echo(atoi(argv[2]));
  if (!strcmp(cmd, "udp-echo") && argc > 2) return udp_echo(atoi(argv[2]));
  if (!strcmp(cmd, "clock") && argc > 3) return clock_probe(atof(argv[2]), atol(argv[3]));
  if (!strcmp(cmd, "heartbeat") && argc > 3) return heartbeat(argv[2], atol(argv[3]));
  if (!strcmp(cmd, "dirty") && argc > 3) return dirty(atol(argv[2]), atol(argv[3]));
  fprintf(stderr, "usage: vmtc-probe tcp-echo PORT | udp-echo PORT | clock GAP_MS PERIOD_US | heartbeat DEV PERIOD_MS | dirty MB PERIOD_MS\n");
  return 2;
}
