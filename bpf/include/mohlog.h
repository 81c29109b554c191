/* mohlog.h: what every mohlog probe shares (no maps: see below).
 *
 * - struct mh_hdr and enum mh_event_type: the header of every ring-buffer event (the
 *   Python decoder in agent/sources/ebpf_decode.py mirrors these layouts; keep in step).
 *   Index 0 of mh_drops (unused as an event type) counts reserve retries.
 * - helpers that read kernel memory at BTF offsets and fill the header.
 * - MH_TP(cat, evt, fn): like bcc's TRACEPOINT_PROBE, but the tracepoint is a macro chosen
 *   with -D (config `tracepoints`) and the function is attached by the loader, probe by
 *   probe.
 * - struct field offsets: OFF_* macros from the running kernel's BTF (agent/btf.py); the
 *   installed headers are not the running kernel's, so no struct is dereferenced by type.
 * Maps and the functions that use them live in bpf/mohlog.c: bcc rewrites map calls
 * (map.lookup(), ringbuf_reserve()) only in the main source file, not in headers.
 *
 * Compile-time settings (-D): AGENT_TGID, RINGBUF_PAGES (per CPU), NCPUS, FILTER_PIDS,
 * FILTER_COMMS, FILTER_CGROUPS, PROBE_<NAME> for the probe compiled, plus its own.
 */
#ifndef MOHLOG_H
#define MOHLOG_H

#define MH_COMM_LEN 16
#define MH_PATH_MAX 256

enum mh_event_type {
    MH_EV_EXEC = 1,
    MH_EV_EXIT = 2,
    MH_EV_FORK = 3,
    MH_EV_OOM = 4,
    MH_EV_SIGNAL = 5,
    MH_EV_TCP_STATE = 6,
    MH_EV_TCP_RETRANSMIT = 7,
    MH_EV_TCP_RESET = 8,
    MH_EV_OPEN_FAIL = 9,
    MH_EV_SYSCALL_ERRORS = 10,
    MH_EV_MAX = 12,
};

/* 48 bytes, at the start of every event */
struct mh_hdr {
    u64 ts;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 cgroup_id;   /* cgroup v2 id of the current task */
    u32 type;        /* enum mh_event_type */
    u32 pid;         /* tgid of the current task */
    u32 tid;         /* its thread id */
    u32 uid;
    char comm[MH_COMM_LEN];
};

#define _MH_TP(cat, evt, fn) int fn(struct tracepoint__##cat##__##evt *args)
#define MH_TP(...) _MH_TP(__VA_ARGS__)

static __always_inline void mh_fill_hdr(struct mh_hdr *h, u32 type)
{
    u64 id = bpf_get_current_pid_tgid();
    h->ts = bpf_ktime_get_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->type = type;
    h->pid = id >> 32;
    h->tid = (u32)id;
    h->uid = (u32)bpf_get_current_uid_gid();
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

/* read a pointer / u32 / u64 at base + off (offsets from BTF) */
static __always_inline void *mh_read_ptr(void *base, u64 off)
{
    void *p = 0;
    if (base)
        bpf_probe_read_kernel(&p, sizeof(p), (char *)base + off);
    return p;
}

static __always_inline u32 mh_read_u32(void *base, u64 off)
{
    u32 v = 0;
    if (base)
        bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

static __always_inline u64 mh_read_u64(void *base, u64 off)
{
    u64 v = 0;
    if (base)
        bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

/* tgid of the current task's parent (real_parent->tgid) */
static __always_inline u32 mh_ppid(void)
{
    void *task = (void *)bpf_get_current_task();
    return mh_read_u32(mh_read_ptr(task, OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
}

/* inode number of the network namespace of a struct sock (0 if sk is NULL) */
static __always_inline u32 mh_sock_netns(void *sk)
{
    return mh_read_u32(mh_read_ptr(sk, OFF_SOCK_NET), OFF_NET_NS_INUM);
}

/* inode number of the current task's network namespace */
static __always_inline u32 mh_task_netns(void)
{
    void *task = (void *)bpf_get_current_task();
    void *ns = mh_read_ptr(mh_read_ptr(task, OFF_TASK_NSPROXY), OFF_NSPROXY_NET_NS);
    return mh_read_u32(ns, OFF_NET_NS_INUM);
}

#endif /* MOHLOG_H */
