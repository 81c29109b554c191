/* Exec storm generator: WORKERS processes each posix_spawn() TARGET and wait for it,
 * paced to RATE execs/s in total (0 = as fast as possible), for SECONDS.
 * Prints one line: "spawned <n> failed <m> seconds <s>".
 * usage: spawner TARGET WORKERS SECONDS RATE */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pace(double start, long done, double per_worker) {
    if (per_worker <= 0) return;
    double ahead = start + done / per_worker - now();
    if (ahead > 0) {
        struct timespec ts = {(time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static void worker(const char *target, double seconds, double per_worker, long *out) {
    char *argv[] = {(char *)target, NULL};
    double start = now(), end = start + seconds;
    long ok = 0, bad = 0;
    while (now() < end) {
        for (int i = 0; i < 16; i++) {
            pid_t pid;
            int status;
            if (posix_spawn(&pid, target, NULL, NULL, argv, environ) == 0 &&
                waitpid(pid, &status, 0) == pid)
                ok++;
            else
                bad++;
        }
        pace(start, ok + bad, per_worker);
    }
    out[0] = ok;
    out[1] = bad;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s TARGET WORKERS SECONDS RATE\n", argv[0]);
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
    long ok = 0, bad = 0;
    for (int w = 0; w < workers; w++) {
        ok += counts[2 * w];
        bad += counts[2 * w + 1];
    }
    printf("spawned %ld failed %ld seconds %.3f\n", ok, bad, now() - start);
    return 0;
}
