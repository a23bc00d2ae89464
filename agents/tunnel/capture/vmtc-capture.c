/* vmtc-capture: what the clients of one VM see during a migration, measured where their traffic
 * enters (the tunnel agent's namespace; agents/tunnel/meter.ts runs it, docs/tunnel.md
 * "Client-seen downtime").
 *
 *   vmtc-capture UNDERLAY_DEV VM_IP PROBE_PERIOD_MS MAX_SECONDS
 *
 * Passive: an AF_PACKET socket on the underlay device (where the VXLAN packets arrive, UDP 4789)
 * keeps the frames whose inner IPv4 source is VM_IP; the outer IPv4 source says which site sent
 * it (the vxlan device decapsulates, so on it the site is no longer visible). Frames are batched
 * per site and per millisecond: one line "F OUTER_SRC FIRST_US LAST_US COUNT".
 * Active (PROBE_PERIOD_MS > 0): an ICMP echo request to VM_IP every period on a raw socket; lines
 * "S SEQ SENT_US" and "R SEQ RECV_US". Times are CLOCK_REALTIME in microseconds.
 * Stops at stdin EOF, SIGTERM/SIGINT, or after MAX_SECONDS; prints "E" last. Bounded: at most
 * MAX_SECONDS (<= 3600) and one probe per period (>= 1 ms). */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag = 0;
static void on_sig(int s) { (void)s; stop_flag = 1; }

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint16_t csum(const void *p, size_t n) {
  const uint8_t *b = p;
  uint32_t s = 0;
  for (size_t i = 0; i + 1 < n; i += 2) s += (uint32_t)(b[i] << 8 | b[i + 1]);
  if (n & 1) s += (uint32_t)(b[n - 1] << 8);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return htons((uint16_t)~s);
}

/* The current batch: frames from one site within one millisecond. */
static uint32_t b_src = 0;
static int64_t b_first = 0, b_last = 0, b_ms = -1;
static long b_count = 0;
static void flush_batch(void) {
  if (b_count == 0) return;
  struct in_addr a = { .s_addr = b_src };
  printf("F %s %lld %lld %ld\n", inet_ntoa(a), (long long)b_first, (long long)b_last, b_count);
  b_count = 0;
}

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: vmtc-capture UNDERLAY_DEV VM_IP PROBE_PERIOD_MS MAX_SECONDS\n"); return 2; }
  unsigned ifindex = if_nametoindex(argv[1]);
  struct in_addr vm;
  long period = strtol(argv[3], NULL, 10), max_s = strtol(argv[4], NULL, 10);
  if (!ifindex) { fprintf(stderr, "no such device: %s\n", argv[1]); return 2; }
  if (inet_pton(AF_INET, argv[2], &vm) != 1) { fprintf(stderr, "not an IPv4 address: %s\n", argv[2]); return 2; }
  if (period < 0 || period > 10000 || (period > 0 && period < 1)) { fprintf(stderr, "bad period\n"); return 2; }
  if (max_s < 1 || max_s > 3600) { fprintf(stderr, "bad max seconds\n"); return 2; }
  signal(SIGTERM, on_sig);
  signal(SIGINT, on_sig);
  signal(SIGPIPE, SIG_IGN);

  int ps = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
  if (ps < 0) { perror("socket(AF_PACKET)"); return 1; }
  struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)ifindex };
  if (bind(ps, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }
  int is = -1;
  uint16_t ident = (uint16_t)(getpid() & 0xffff);
  if (period > 0) {
    is = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (is < 0) { perror("socket(ICMP)"); return 1; }
  }
  printf("READY\n");
  fflush(stdout);

  int64_t start = now_us(), end = start + (int64_t)max_s * 1000000, next_probe = start;
  uint16_t seq = 0;
  uint8_t buf[65536];
  while (!stop_flag) {
    int64_t t = now_us();
    if (t >= end) break;
    if (is >= 0 && t >= next_probe) {
      uint8_t pkt[64] = {0};
      struct icmphdr *h = (struct icmphdr *)pkt;
      h->type = ICMP_ECHO; h->un.echo.id = htons(ident); h->un.echo.sequence = htons(++seq);
      h->checksum = csum(pkt, sizeof pkt);
      struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr = vm };
      if (sendto(is, pkt, sizeof pkt, 0, (struct sockaddr *)&to, sizeof to) > 0) printf("S %u %lld\n", seq, (long long)t);
      next_probe += period * 1000;
      if (next_probe < t) next_probe = t + period * 1000;
    }
    int wait_ms = 50;
    if (is >= 0) { int64_t w = (next_probe - now_us()) / 1000; wait_ms = w < 0 ? 0 : (w > 50 ? 50 : (int)w); }
    struct pollfd pf[2] = { { .fd = ps, .events = POLLIN }, { .fd = 0, .events = POLLIN } };
    struct pollfd pfi = { .fd = is, .events = POLLIN };
    struct pollfd all[3] = { pf[0], pf[1], pfi };
    int n = poll(all, is >= 0 ? 3 : 2, wait_ms);
    if (n < 0) { if (errno == EINTR) continue; perror("poll"); break; }
    if (all[1].revents & (POLLIN | POLLHUP)) {
      char c[256];
      ssize_t r = read(0, c, sizeof c);
      if (r <= 0) break;
    }
    if (is >= 0 && (all[2].revents & POLLIN)) {
      ssize_t r = recv(is, buf, sizeof buf, 0);
      int64_t rt = now_us();
      if (r >= (ssize_t)sizeof(struct iphdr)) {
        struct iphdr *ip = (struct iphdr *)buf;
        size_t hl = (size_t)ip->ihl * 4;
        if ((size_t)r >= hl + 8 && ip->saddr == vm.s_addr) {
          struct icmphdr *h = (struct icmphdr *)(buf + hl);
          if (h->type == ICMP_ECHOREPLY && ntohs(h->un.echo.id) == ident) printf("R %u %lld\n", ntohs(h->un.echo.sequence), (long long)rt);
        }
      }
    }
    if (all[0].revents & POLLIN) {
      for (int k = 0; k < 256; k++) {
        struct sockaddr_ll from;
        socklen_t fl = sizeof from;
        ssize_t r = recvfrom(ps, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (r < 0) break;
        int64_t rt = now_us();
        if (from.sll_pkttype == PACKET_OUTGOING) continue;
        /* SOCK_RAW keeps the link header: outer Ethernet (14), outer IPv4, UDP, VXLAN (8), inner frame. */
        if (r < 14 + 20) continue;
        const uint8_t *p = buf + 14;
        const struct iphdr *oip = (const struct iphdr *)p;
        if (oip->version != 4 || oip->protocol != IPPROTO_UDP) continue;
        size_t ohl = (size_t)oip->ihl * 4;
        if ((size_t)r < 14 + ohl + 8 + 8 + 14 + 20) continue;
        const uint8_t *udp = p + ohl;
        if ((udp[2] << 8 | udp[3]) != 4789) continue;
        const uint8_t *inner = udp + 8 + 8;
        if ((inner[12] << 8 | inner[13]) != 0x0800) continue;
        const struct iphdr *iip = (const struct iphdr *)(inner + 14);
        if (iip->saddr != vm.s_addr) continue;
        int64_t ms = rt / 1000;
        if (b_count > 0 && (b_src != oip->saddr || b_ms != ms)) flush_batch();
        if (b_count == 0) { b_src = oip->saddr; b_ms = ms; b_first = rt; }
        b_last = rt;
        b_count++;
      }
    }
    if (b_count > 0 && now_us() / 1000 != b_ms) flush_batch();
    fflush(stdout);
  }
  flush_batch();
  printf("E\n");
  fflush(stdout);
  return 0;
}
