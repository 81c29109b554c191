/* Failed-open storm generator: WORKERS processes each call openat() on a missing PATH,
 * paced to RATE attempts/s in total (0 = as fast as possible), for SECONDS.
 * Static build: no loader, so every failed open of this comm is one of ours.
 * Prints one line: "attempted <n> failed <m> seconds <s>".
 * usage: openstorm PATH WORKERS SECONDS RATE */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void worker(const char *path, double seconds, double per_worker, long *out) {
    double start = now(), end = start + seconds;
    long tried = 0, failed = 0;
    while (now() < end) {
        for (int i = 0; i < 64; i++) {
            long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
            tried++;
            if (fd < 0) failed++;
            else close((int)fd);
        }
        if (per_worker > 0) {
            double ahead = start + tried / per_worker - now();
            if (ahead > 0) {
                struct timespec ts = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    out[0] = tried;
    out[1] = failed;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PATH WORKERS SECONDS RATE\n", argv[0]);
        return 2;
    }
    int workers = atoi(argv[2]);
    double seconds = atof(argv[3]), rate = atof(argv[4]);
    long *counts = mmap(NULL, sizeof(long) * 2 * workers, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    double start = now();
    for (int w = 0; w < workers; w++) {
        if (fork() == 0) {
            worker(argv[1], seconds, rate / workers, counts + 2 * w);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    long tried = 0, failed = 0;
    for (int w = 0; w < workers; w++) {
        tried += counts[2 * w];
        failed += counts[2 * w + 1];
    }
    printf("attempted %ld failed %ld seconds %.3f\n", tried, failed, now() - start);
    return 0;
}
