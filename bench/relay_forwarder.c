/* The machine's per-packet limit for `make bench-relay`: a minimal UDP fan-out forwarder in C.
 * recvmmsg a batch of up to 64 datagrams, sendmmsg the batch to each connected receiver socket; no logic.
 * Measures itself the way bench/relay_bench.py's _measure does (warm-up, busy window, 0.3 s idle ends it)
 * and prints the same JSON fields. Usage: relay_forwarder CPU SINK_PORT... (127.0.0.1 only). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define WARMUP_PACKETS 150

static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec + now.tv_nsec / 1e9;
}

static void cpu_seconds(double *user, double *system) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    *user = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6;
    *system = usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

static char buffers[BATCH][2048];

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CPU SINK_PORT...\n", argv[0]);
        return 2;
    }
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(atoi(argv[1]), &cpus);
    sched_setaffinity(0, sizeof cpus, &cpus);
    int fanout = argc - 2;
    int input = socket(AF_INET, SOCK_DGRAM, 0);
    int receive_buffer = 1 << 20;
    setsockopt(input, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer);
    struct timeval timeout = {0, 50000};
    setsockopt(input, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    struct sockaddr_in address = {0};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(input, (struct sockaddr *)&address, sizeof address) != 0) return 1;
    socklen_t length = sizeof address;
    getsockname(input, (struct sockaddr *)&address, &length);
    printf("{\"port\": %d}\n", ntohs(address.sin_port));
    fflush(stdout);
    int *outputs = calloc(fanout, sizeof(int));
    for (int index = 0; index < fanout; index++) {
        struct sockaddr_in destination = {0};
        destination.sin_family = AF_INET;
        destination.sin_port = htons(atoi(argv[index + 2]));
        destination.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        outputs[index] = socket(AF_INET, SOCK_DGRAM, 0);
        connect(outputs[index], (struct sockaddr *)&destination, sizeof destination);
    }
    struct iovec receive_vectors[BATCH], send_vectors[BATCH];
    struct mmsghdr received[BATCH], sending[BATCH];
    for (int slot = 0; slot < BATCH; slot++) {
        receive_vectors[slot] = (struct iovec){buffers[slot], sizeof buffers[slot]};
        send_vectors[slot] = (struct iovec){buffers[slot], 0};
        received[slot] = (struct mmsghdr){.msg_hdr = {.msg_iov = &receive_vectors[slot], .msg_iovlen = 1}};
        sending[slot] = (struct mmsghdr){.msg_hdr = {.msg_iov = &send_vectors[slot], .msg_iovlen = 1}};
    }
    long packets_in = 0, packets_out = 0, start_in = 0, start_out = 0, last_in = 0, last_out = 0;
    double start_time = -1, last_time = 0, start_user = 0, start_system = 0, last_user = 0, last_system = 0;
    double deadline = monotonic() + 6.0;
    while (monotonic() < deadline) {
        int count = recvmmsg(input, received, BATCH, MSG_WAITFORONE, NULL);
        if (count > 0) {
            for (int slot = 0; slot < count; slot++) send_vectors[slot].iov_len = received[slot].msg_len;
            for (int index = 0; index < fanout; index++) sendmmsg(outputs[index], sending, count, MSG_DONTWAIT);
            packets_in += count;
            packets_out += (long)count * fanout;
        }
        double now = monotonic();
        if (start_time < 0) {
            if (packets_in > WARMUP_PACKETS + 64) {
                start_time = last_time = now;
                start_in = last_in = packets_in;
                start_out = last_out = packets_out;
                cpu_seconds(&start_user, &start_system);
                last_user = start_user;
                last_system = start_system;
            }
            continue;
        }
        if (packets_out != last_out) {
            last_time = now;
            last_out = packets_out;
            last_in = packets_in;
            cpu_seconds(&last_user, &last_system);
        } else if (now - last_time > 0.3) {
            break;
        }
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double busy = last_time - start_time;
    printf("{\"packets_per_second\": %.1f, \"packets_out\": %ld, \"packets_in\": %ld, \"user_seconds\": %.6f, "
           "\"system_seconds\": %.6f, \"max_rss_bytes\": %ld}\n",
           start_time < 0 || busy <= 0 ? 0.0 : (last_out - start_out) / busy, last_out - start_out,
           last_in - start_in, last_user - start_user, last_system - start_system, usage.ru_maxrss * 1024L);
    fflush(stdout);
    return 0;
}
