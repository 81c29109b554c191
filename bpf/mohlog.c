/* mohlog.c: every probe of the agent, one BPF object per enabled probe.
 *
 * The loader (agent/sources/ebpf.py) compiles this file once per probe with
 * -DPROBE_<NAME> (bcc takes ~0.2 s), so each probe has its own ring buffer (mh_events),
 * drop counters (mh_drops) and maps, and a probe that cannot compile or attach fails alone.
 * Struct layouts and kernel-reading helpers are in include/mohlog.h; map code stays in
 * this file because bcc rewrites map calls only in the main source file.
 *
 * Shared here:
 * - mh_events: the ring buffer (RINGBUF_PAGES pages); a failed reserve is counted per
 *   event type in mh_drops (per-CPU, summed by user space) and never blocks the task.
 * - mh_skip(): the in-kernel filter (the agent's own tgid AGENT_TGID, and with
 *   FILTER_PIDS / FILTER_COMMS / FILTER_CGROUPS the pids, comms, cgroup ids the loader
 *   puts in mh_filter_*).
 */
#include "mohlog.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 4096
#endif
#ifndef AGENT_TGID
#define AGENT_TGID 0
#endif

#ifndef NCPUS
#define NCPUS 1
#endif

/* One ring buffer per CPU: mh_events is CPU 0's and the template of the others, which the
 * loader creates and puts in mh_rings. On this 6.18 kernel a reserve sometimes fails, with
 * plenty of space left, when two CPUs write the same ring at once (measured: none with one
 * writer, a few per 10^5 with two, whatever the ring size); per-CPU rings have no such
 * contention. User space merges them (entries carry their timestamps). */
BPF_RINGBUF_OUTPUT(mh_events, RINGBUF_PAGES);
BPF_ARRAY_OF_MAPS(mh_rings, "mh_events", NCPUS);
/* mmap-able so user space reads it without a bpf() syscall: map syscalls from user space
 * raise the CPU's bpf_prog_active, and tracepoint programs that fire on that CPU meanwhile
 * are skipped by the kernel (counted only as the program's recursion_misses) */
BPF_F_TABLE("array", u32, u64, mh_drops, MH_EV_MAX, BPF_F_MMAPABLE);

#ifdef FILTER_PIDS
BPF_HASH(mh_filter_pids, u32, u8, 1024);
#endif
#ifdef FILTER_COMMS
struct mh_comm { char comm[MH_COMM_LEN]; };
BPF_HASH(mh_filter_comms, struct mh_comm, u8, 1024);
#endif
#ifdef FILTER_CGROUPS
BPF_HASH(mh_filter_cgroups, u64, u8, 1024);
#endif

/* Retries of a failed reserve: in this CPU's ring again, then in up to 3 other CPUs' rings. */
#define MH_RESERVE_RETRIES (NCPUS < 4 ? NCPUS : 4)

/* Reserve in this CPU's ring; if that fails (counted once in mh_drops[0]), retry in it,
 * then in the rings of the following CPUs: a reserve that fails with space left (see
 * above) failed twice in a row in the same ring a few times per million records in exec
 * storms, so the retry goes elsewhere too. User space reads every ring, so a record in
 * another CPU's ring is delivered like any other. */
static __always_inline void *mh_reserve(u64 size)
{
    u32 cpu = bpf_get_smp_processor_id();
    void *rb = mh_rings.lookup(&cpu);
    void *e = rb ? bpf_ringbuf_reserve(rb, size, 0) : mh_events.ringbuf_reserve(size);
    if (e)
        return e;
    u32 retried = 0;
    u64 *n = mh_drops.lookup(&retried);
    if (n)
        __sync_fetch_and_add(n, 1);
    if (!rb)
        return mh_events.ringbuf_reserve(size);
#pragma unroll
    for (u32 i = 0; i < MH_RESERVE_RETRIES; i++) {
        u32 other = (cpu + i) % NCPUS;
        void *orb = mh_rings.lookup(&other);
        if (orb) {
            e = bpf_ringbuf_reserve(orb, size, 0);
            if (e)
                return e;
        }
    }
    return 0;
}

static __always_inline void mh_count_drop(u32 type)
{
    u64 *n = mh_drops.lookup(&type);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* true when the current task is not to be traced */
static __always_inline bool mh_skip(u32 tgid)
{
    if (tgid == AGENT_TGID)
        return true;
#ifdef FILTER_PIDS
    if (mh_filter_pids.lookup(&tgid))
        return true;
#endif
#ifdef FILTER_COMMS
    struct mh_comm c = {};
    bpf_get_current_comm(&c.comm, sizeof(c.comm));
    if (mh_filter_comms.lookup(&c))
        return true;
#endif
#ifdef FILTER_CGROUPS
    u64 cg = bpf_get_current_cgroup_id();
    if (mh_filter_cgroups.lookup(&cg))
        return true;
#endif
    return false;
}

/* ======================================================================= */
/* Processes: exec, exit, fork.
 *
 * exec  sched:sched_process_exec  filename, argv (from mm->arg_start, bounded by ARGV_BYTES),
 *                                  ppid (real_parent->tgid), uid, cgroup id.
 *       Overhead: one ring-buffer record (~0.9 KB) per exec, two kernel reads for argv.
 *       Caveat: argv is what the process memory holds at exec time, NUL-separated and cut
 *       at ARGV_BYTES; offsets come from BTF (OFF_TASK_*, OFF_MM_*).
 * exit  sched:sched_process_exit  one record per process (the thread that ends the thread
 *                                  group, group_dead), exit code and signal from
 *                                  task->exit_code, lifetime from group_leader->start_time.
 *       Caveat: needs the group_dead field (kernel >= 6.x); thread exits are not reported.
 * fork  task:task_newtask         child pid and comm, clone flags. Chosen over
 *                                  sched:sched_process_fork because it carries clone_flags,
 *                                  so new threads (CLONE_THREAD) are told apart and skipped
 *                                  unless FORK_THREADS is defined.
 */

#ifndef ARGV_BYTES
#define ARGV_BYTES 512
#endif

struct mh_exec {
    struct mh_hdr h;
    u32 ppid;
    u32 old_pid;
    u32 filename_len;   /* bytes incl. the NUL, 0 if unreadable */
    u32 args_len;       /* bytes of args read */
    char filename[MH_PATH_MAX];
    char args[ARGV_BYTES];
};

struct mh_exit {
    struct mh_hdr h;
    u32 ppid;
    u32 exit_code;      /* raw task->exit_code: (status << 8) | signal */
    u64 lifetime_ns;
};

struct mh_fork {
    struct mh_hdr h;
    u32 child_pid;
    u32 pad;
    u64 clone_flags;
    char child_comm[MH_COMM_LEN];
};

#ifdef PROBE_EXEC
#ifndef TP_EXEC
#define TP_EXEC sched, sched_process_exec
#endif
MH_TP(TP_EXEC, mh_exec)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (mh_skip(tgid))
        return 0;
    struct mh_exec *e = mh_reserve(sizeof(struct mh_exec));
    if (!e) {
        mh_count_drop(MH_EV_EXEC);
        return 0;
    }
    mh_fill_hdr(&e->h, MH_EV_EXEC);
    e->ppid = mh_ppid();
    e->old_pid = args->old_pid;
    u32 loc = args->data_loc_filename & 0xFFFF;
    int n = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (char *)args + loc);
    e->filename_len = n > 0 ? n : 0;
    void *task = (void *)bpf_get_current_task();
    void *mm = mh_read_ptr(task, OFF_TASK_MM);
    u64 start = mh_read_u64(mm, OFF_MM_ARG_START);
    u64 end = mh_read_u64(mm, OFF_MM_ARG_END);
    u64 len = end > start ? end - start : 0;
    if (len > ARGV_BYTES)
        len = ARGV_BYTES;
    e->args_len = 0;
    if (len > 0 && bpf_probe_read_user(e->args, len, (void *)start) == 0)
        e->args_len = len;
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

#ifdef PROBE_EXIT
#ifndef TP_EXIT
#define TP_EXIT sched, sched_process_exit
#endif
MH_TP(TP_EXIT, mh_exit)
{
    if (!args->group_dead)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (mh_skip(tgid))
        return 0;
    struct mh_exit *e = mh_reserve(sizeof(struct mh_exit));
    if (!e) {
        mh_count_drop(MH_EV_EXIT);
        return 0;
    }
    mh_fill_hdr(&e->h, MH_EV_EXIT);
    void *task = (void *)bpf_get_current_task();
    e->ppid = mh_ppid();
    e->exit_code = mh_read_u32(task, OFF_TASK_EXIT_CODE);
    u64 start = mh_read_u64(mh_read_ptr(task, OFF_TASK_GROUP_LEADER), OFF_TASK_START_TIME);
    e->lifetime_ns = start && e->h.ts > start ? e->h.ts - start : 0;
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

#ifdef PROBE_FORK
#ifndef TP_FORK
#define TP_FORK task, task_newtask
#endif
#define MH_CLONE_THREAD 0x00010000
MH_TP(TP_FORK, mh_fork)
{
#ifndef FORK_THREADS
    if (args->clone_flags & MH_CLONE_THREAD)
        return 0;
#endif
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (mh_skip(tgid))
        return 0;
    struct mh_fork *e = mh_reserve(sizeof(struct mh_fork));
    if (!e) {
        mh_count_drop(MH_EV_FORK);
        return 0;
    }
    mh_fill_hdr(&e->h, MH_EV_FORK);
    e->child_pid = args->pid;
    e->pad = 0;
    e->clone_flags = args->clone_flags;
    __builtin_memcpy(e->child_comm, args->comm, MH_COMM_LEN);
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

/* ======================================================================= */
/* Memory: OOM kills.
 *
 * oom  oom:mark_victim  the victim chosen by the OOM killer: pid, comm, uid and its memory
 *                       figures as this kernel reports them (total_vm, anon_rss, file_rss,
 *                       shmem_rss, pgtables in kB; oom_score_adj). The header's task is the
 *                       one whose allocation invoked the killer.
 * Overhead: none until an OOM kill. Caveat: the field set is the 6.x format (uid, pgtables
 * and the rss split appeared over time); an older kernel fails this probe alone.
 */

struct mh_oom {
    struct mh_hdr h;
    u32 victim_pid;
    u32 victim_uid;
    u64 total_vm_kb;
    u64 anon_rss_kb;
    u64 file_rss_kb;
    u64 shmem_rss_kb;
    u64 pgtables_kb;
    s32 oom_score_adj;
    u32 pad;
    char victim_comm[MH_COMM_LEN];
};

#ifdef PROBE_OOM
#ifndef TP_OOM
#define TP_OOM oom, mark_victim
#endif
MH_TP(TP_OOM, mh_oom)
{
    struct mh_oom *e = mh_reserve(sizeof(struct mh_oom));
    if (!e) {
        mh_count_drop(MH_EV_OOM);
        return 0;
    }
    mh_fill_hdr(&e->h, MH_EV_OOM);
    e->victim_pid = args->pid;
    e->victim_uid = args->uid;
    e->total_vm_kb = args->total_vm;
    e->anon_rss_kb = args->anon_rss;
    e->file_rss_kb = args->file_rss;
    e->shmem_rss_kb = args->shmem_rss;
    e->pgtables_kb = args->pgtables;
    e->oom_score_adj = args->oom_score_adj;
    e->pad = 0;
    u32 loc = args->data_loc_comm & 0xFFFF;
    bpf_probe_read_kernel_str(e->victim_comm, sizeof(e->victim_comm), (char *)args + loc);
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

/* ======================================================================= */
/* Signals sent.
 *
 * signal  signal:signal_generate  sender (the current task: pid, comm, uid), target pid and
 *                                 comm, signal, si_code, group or thread, result (0
 *                                 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lost
 *                                 info). Only signals in SIGNAL_MASK (bit n = signal n) are
 *                                 reported: by default the ones whose default action ends
 *                                 the process (config `signals`).
 * Overhead: a mask test per signal generated. Caveat: signals the kernel raises itself
 * (SIGSEGV on a fault, SIGKILL by the OOM killer) have the faulting/allocating task as sender.
 */

#ifndef SIGNAL_MASK
#define SIGNAL_MASK 0xffffffffffffffffULL
#endif

struct mh_signal {
    struct mh_hdr h;
    s32 sig;
    s32 err;
    s32 code;
    u32 target_pid;
    s32 group;
    s32 result;
    char target_comm[MH_COMM_LEN];
};

#ifdef PROBE_SIGNAL
#ifndef TP_SIGNAL
#define TP_SIGNAL signal, signal_generate
#endif
MH_TP(TP_SIGNAL, mh_signal)
{
    int sig = args->sig;
    if (sig <= 0 || sig >= 64 || !((SIGNAL_MASK >> sig) & 1))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (mh_skip(tgid))
        return 0;
    struct mh_signal *e = mh_reserve(sizeof(struct mh_signal));
    if (!e) {
        mh_count_drop(MH_EV_SIGNAL);
        return 0;
    }
    mh_fill_hdr(&e->h, MH_EV_SIGNAL);
    e->sig = sig;
    e->err = args->errno;
    e->code = args->code;
    e->target_pid = args->pid;
    e->group = args->group;
    e->result = args->result;
    __builtin_memcpy(e->target_comm, args->comm, MH_COMM_LEN);
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

/* ======================================================================= */
/* Network: TCP connections, retransmits and resets.
 *
 * tcp_state       sock:inet_sock_set_state (TCP only). Every socket is remembered at its
 *                 first state change (time, and the pid/comm running then) in mh_tcp_first;
 *                 emitted by default: -> ESTABLISHED (connect from SYN_SENT, accept from
 *                 SYN_RECV), -> CLOSE (close with the duration since first seen; refused or
 *                 failed connect from SYN_SENT), -> LISTEN and LISTEN -> CLOSE. All transitions
 *                 with TCP_ALL_STATES.
 * tcp_retransmit  tcp:tcp_retransmit_skb  addresses, ports, socket state, err.
 * tcp_reset       tcp:tcp_send_reset (RST sent; the socket may be NULL, addresses then come
 *                 from the packet) and tcp:tcp_receive_reset (RST received).
 * Overhead: a map update per TCP state change; one 136-byte record per emitted event.
 * Caveats: state changes driven by packets (accept, close by the peer, reset) run in
 * softirq context, where the current task (pid, comm in the header) is whoever ran then;
 * the socket's first-seen task is in owner_pid/owner_comm (right for connect, where the
 * first change happens in connect()). netns is the socket's namespace inode (or the current
 * task's when the socket is unknown).
 */

/* tcp_send_reset's format names `enum sk_rst_reason` (6.10+), which older headers lack:
 * rename it to an enum of our own (a 4-byte enum either way) */
#define sk_rst_reason mh_sk_rst_reason
enum mh_sk_rst_reason { MH_SK_RST_REASON_NOT_SPECIFIED };

#define MH_AF_INET 2
#define MH_AF_INET6 10
#define MH_TCP_ESTABLISHED 1
#define MH_TCP_SYN_SENT 2
#define MH_TCP_CLOSE 7
#define MH_TCP_LISTEN 10

struct mh_net {
    struct mh_hdr h;
    u64 duration_ns;    /* tcp_state to CLOSE: time since first seen */
    u32 netns;
    s32 oldstate;       /* tcp_state: old state; tcp_reset: 0 sent, 1 received */
    s32 newstate;       /* tcp_state: new state; others: socket state (-1 unknown) */
    s32 extra;          /* tcp_retransmit: err; tcp_send_reset: reason */
    u16 sport;
    u16 dport;
    u16 family;
    u16 pad;
    u8 saddr[16];
    u8 daddr[16];
    u32 owner_pid;
    u32 pad2;
    char owner_comm[MH_COMM_LEN];
};

struct mh_tcp_seen {
    u64 ts;
    u32 pid;
    u32 pad;
    char comm[MH_COMM_LEN];
};

#ifdef PROBE_TCP_STATE
BPF_TABLE("lru_hash", u64, struct mh_tcp_seen, mh_tcp_first, 65536);
#endif

static __always_inline struct mh_net *mh_net_reserve(u32 type)
{
    struct mh_net *e = mh_reserve(sizeof(struct mh_net));
    if (!e) {
        mh_count_drop(type);
        return 0;
    }
    mh_fill_hdr(&e->h, type);
    e->duration_ns = 0;
    e->pad = 0;
    e->owner_pid = 0;
    e->pad2 = 0;
    __builtin_memset(e->owner_comm, 0, MH_COMM_LEN);
    __builtin_memset(e->saddr, 0, 16);
    __builtin_memset(e->daddr, 0, 16);
    return e;
}

/* addresses of a v4/v6 tracepoint: family, 4-byte and 16-byte forms */
static __always_inline void mh_net_addrs(struct mh_net *e, u16 family, const u8 *s4,
                                         const u8 *d4, const u8 *s6, const u8 *d6)
{
    e->family = family;
    if (family == MH_AF_INET) {
        bpf_probe_read_kernel(e->saddr, 4, s4);
        bpf_probe_read_kernel(e->daddr, 4, d4);
    } else {
        bpf_probe_read_kernel(e->saddr, 16, s6);
        bpf_probe_read_kernel(e->daddr, 16, d6);
    }
}

#ifdef PROBE_TCP_STATE
#ifndef TP_TCP_STATE
#define TP_TCP_STATE sock, inet_sock_set_state
#endif
MH_TP(TP_TCP_STATE, mh_tcp_state)
{
    if (args->protocol != 6)
        return 0;
    u64 sk = (u64)args->skaddr;
    int oldstate = args->oldstate, newstate = args->newstate;
    u64 now = bpf_ktime_get_ns();
    struct mh_tcp_seen *seen = mh_tcp_first.lookup(&sk);
    struct mh_tcp_seen first = {};
    if (seen) {
        first = *seen;
    } else {
        first.ts = now;
        first.pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&first.comm, sizeof(first.comm));
        mh_tcp_first.update(&sk, &first);
    }
    if (newstate == MH_TCP_CLOSE)
        mh_tcp_first.delete(&sk);
#ifndef TCP_ALL_STATES
    if (newstate != MH_TCP_ESTABLISHED && newstate != MH_TCP_CLOSE &&
        newstate != MH_TCP_LISTEN && oldstate != MH_TCP_LISTEN)
        return 0;
#endif
    if (first.pid == AGENT_TGID || mh_skip(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct mh_net *e = mh_net_reserve(MH_EV_TCP_STATE);
    if (!e)
        return 0;
    e->netns = mh_sock_netns((void *)sk);
    e->oldstate = oldstate;
    e->newstate = newstate;
    e->extra = 0;
    e->sport = args->sport;
    e->dport = args->dport;
    mh_net_addrs(e, args->family, args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
    if (newstate == MH_TCP_CLOSE)
        e->duration_ns = now - first.ts;
    e->owner_pid = first.pid;
    __builtin_memcpy(e->owner_comm, first.comm, MH_COMM_LEN);
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

#ifdef PROBE_TCP_RETRANSMIT
#ifndef TP_TCP_RETRANSMIT
#define TP_TCP_RETRANSMIT tcp, tcp_retransmit_skb
#endif
MH_TP(TP_TCP_RETRANSMIT, mh_tcp_retransmit)
{
    if (mh_skip(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct mh_net *e = mh_net_reserve(MH_EV_TCP_RETRANSMIT);
    if (!e)
        return 0;
    e->netns = mh_sock_netns((void *)args->skaddr);
    e->oldstate = 0;
    e->newstate = args->state;
#ifdef TCP_RETRANSMIT_HAS_ERR
    e->extra = args->err;
#else
    e->extra = 0;
#endif
    e->sport = args->sport;
    e->dport = args->dport;
    mh_net_addrs(e, args->family, args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

#ifdef PROBE_TCP_RESET
#ifndef TP_TCP_SEND_RESET
#define TP_TCP_SEND_RESET tcp, tcp_send_reset
#endif
#ifndef TP_TCP_RECEIVE_RESET
#define TP_TCP_RECEIVE_RESET tcp, tcp_receive_reset
#endif
/* tcp_send_reset carries sockaddr_in / sockaddr_in6 (28 bytes): family, port (network
 * order), then the v4 address at 4 or the v6 address at 8 */
MH_TP(TP_TCP_SEND_RESET, mh_tcp_send_reset)
{
    if (mh_skip(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct mh_net *e = mh_net_reserve(MH_EV_TCP_RESET);
    if (!e)
        return 0;
    u8 sa[28] = {}, da[28] = {};
    bpf_probe_read_kernel(sa, sizeof(sa), args->saddr);
    bpf_probe_read_kernel(da, sizeof(da), args->daddr);
    void *sk = (void *)args->skaddr;
    e->netns = sk ? mh_sock_netns(sk) : mh_task_netns();
    e->oldstate = 0;
    e->newstate = sk ? args->state : -1;
    e->extra = args->reason;
    e->family = sa[0] | (sa[1] << 8);
    e->sport = (sa[2] << 8) | sa[3];
    e->dport = (da[2] << 8) | da[3];
    if (e->family == MH_AF_INET) {
        __builtin_memcpy(e->saddr, sa + 4, 4);
        __builtin_memcpy(e->daddr, da + 4, 4);
    } else {
        __builtin_memcpy(e->saddr, sa + 8, 16);
        __builtin_memcpy(e->daddr, da + 8, 16);
    }
    mh_events.ringbuf_submit(e, 0);
    return 0;
}

MH_TP(TP_TCP_RECEIVE_RESET, mh_tcp_receive_reset)
{
    if (mh_skip(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct mh_net *e = mh_net_reserve(MH_EV_TCP_RESET);
    if (!e)
        return 0;
    e->netns = mh_sock_netns((void *)args->skaddr);
    e->oldstate = 1;
    e->newstate = -1;
    e->extra = 0;
    e->sport = args->sport;
    e->dport = args->dport;
    mh_net_addrs(e, args->family, args->saddr, args->daddr, args->saddr_v6, args->daddr_v6);
    mh_events.ringbuf_submit(e, 0);
    return 0;
}
#endif

/* ======================================================================= */
/* Files: failed opens.
 *
 * open_fail  syscalls:sys_enter_openat / sys_enter_openat2 keep the filename pointer and
 *            flags per thread (mh_open_pending); sys_exit_openat / sys_exit_openat2 with
 *            ret < 0 emit the path (read from user memory at exit) and the errno.
 * Overhead: a hash update and delete per open on the whole host (successful ones too);
 *           one 320-byte record per failure.
 * Caveats: the path is as the caller passed it (relative paths stay relative, dfd is not
 *          resolved); cut at 255 bytes. openat2 flags come from struct open_how (first u64).
 */

struct mh_open_fail {
    struct mh_hdr h;
    s32 err;            /* positive errno */
    u32 flags;
    u32 syscall;        /* 0 openat, 1 openat2 */
    u32 path_len;       /* bytes incl. the NUL */
    char path[MH_PATH_MAX];
};

struct mh_open_args {
    u64 filename;
    u32 flags;
    u32 syscall;
};

#ifdef PROBE_OPEN_FAIL
/* LRU: an entry whose thread never returns from the syscall (killed in it) ages out */
BPF_TABLE("lru_hash", u32, struct mh_open_args, mh_open_pending, 16384);

static __always_inline int mh_open_enter(u64 filename, u32 flags, u32 syscall)
{
    u64 id = bpf_get_current_pid_tgid();
    if (mh_skip(id >> 32))
        return 0;
    u32 tid = (u32)id;
    struct mh_open_args a = {.filename = filename, .flags = flags, .syscall = syscall};
    mh_open_pending.update(&tid, &a);
    return 0;
}

static __always_inline int mh_open_exit(long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mh_open_args *a = mh_open_pending.lookup(&tid);
    if (!a)
        return 0;
    struct mh_open_args saved = *a;
    mh_open_pending.delete(&tid);
    if (ret >= 0)
        return 0;
    struct mh_open_fail *e = mh_reserve(sizeof(struct mh_open_fail));
    if (!e) {
        mh_count_drop(MH_EV_OPEN_FAIL);
        return 0;
    }
    mh_fill_hdr(&e->h, MH_EV_OPEN_FAIL);
    e->err = -ret;
    e->flags = saved.flags;
    e->syscall = saved.syscall;
    int n = bpf_probe_read_user_str(e->path, sizeof(e->path), (void *)saved.filename);
    e->path_len = n > 0 ? n : 0;
    mh_events.ringbuf_submit(e, 0);
    return 0;
}

#ifndef TP_OPENAT_ENTER
#define TP_OPENAT_ENTER syscalls, sys_enter_openat
#endif
#ifndef TP_OPENAT_EXIT
#define TP_OPENAT_EXIT syscalls, sys_exit_openat
#endif
#ifndef TP_OPENAT2_ENTER
#define TP_OPENAT2_ENTER syscalls, sys_enter_openat2
#endif
#ifndef TP_OPENAT2_EXIT
#define TP_OPENAT2_EXIT syscalls, sys_exit_openat2
#endif
MH_TP(TP_OPENAT_ENTER, mh_openat_enter)
{
    return mh_open_enter((u64)args->filename, (u32)args->flags, 0);
}

MH_TP(TP_OPENAT_EXIT, mh_openat_exit)
{
    return mh_open_exit(args->ret);
}

MH_TP(TP_OPENAT2_ENTER, mh_openat2_enter)
{
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->how);
    return mh_open_enter((u64)args->filename, (u32)flags, 1);
}

MH_TP(TP_OPENAT2_EXIT, mh_openat2_exit)
{
    return mh_open_exit(args->ret);
}
#endif

/* ======================================================================= */
/* Failed system calls, aggregated in the kernel.
 *
 * syscall_errors  raw_syscalls:sys_exit with -4095 <= ret < 0 counts into a hash map keyed
 *                 (tgid, syscall nr, errno) with first/last time and comm. There are two
 *                 maps, mh_errors0 and mh_errors1; mh_errgen (an mmap-able array user space
 *                 writes without a syscall) says which one is counted into. Every drain
 *                 interval user space flips it, waits a few milliseconds for programs in
 *                 flight, then empties the other map with one lookup-and-delete batch: one
 *                 record per key and interval, no count lost to the swap, and few map
 *                 syscalls (each one briefly blocks BPF programs on its CPU).
 * Overhead: every syscall exit on the host runs this program (a compare for successes, a
 *           hash lookup and atomic add for failures). Caveat: a full map (SYSCALL_ERRORS_MAX
 *           keys per interval) counts new keys as drops of MH_EV_SYSCALL_ERRORS.
 */
#ifndef SYSCALL_ERRORS_MAX
#define SYSCALL_ERRORS_MAX 16384
#endif

struct mh_err_key {
    u32 tgid;
    u32 nr;
    s32 err;
    u32 pad;
};

struct mh_err_val {
    u64 count;
    u64 first_ts;
    u64 last_ts;
    u32 tid;
    u32 uid;
    u64 cgroup_id;
    char comm[MH_COMM_LEN];
};

#ifdef PROBE_SYSCALL_ERRORS
BPF_HASH(mh_errors0, struct mh_err_key, struct mh_err_val, SYSCALL_ERRORS_MAX);
BPF_HASH(mh_errors1, struct mh_err_key, struct mh_err_val, SYSCALL_ERRORS_MAX);
BPF_F_TABLE("array", u32, u32, mh_errgen, 1, BPF_F_MMAPABLE);

#ifndef TP_SYS_EXIT
#define TP_SYS_EXIT raw_syscalls, sys_exit
#endif
MH_TP(TP_SYS_EXIT, mh_sys_exit)
{
    long ret = args->ret;
    if (ret >= 0 || ret < -4095)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (mh_skip(tgid))
        return 0;
    u32 zero = 0;
    u32 *genp = mh_errgen.lookup(&zero);
    u32 gen = genp ? *genp & 1 : 0;
    struct mh_err_key key = {.tgid = tgid, .nr = (u32)args->id, .err = -ret, .pad = 0};
    u64 now = bpf_ktime_get_ns();
    struct mh_err_val *v = gen ? mh_errors1.lookup(&key) : mh_errors0.lookup(&key);
    if (v) {
        __sync_fetch_and_add(&v->count, 1);
        v->last_ts = now;
        return 0;
    }
    struct mh_err_val nv = {.count = 1, .first_ts = now, .last_ts = now, .tid = (u32)id};
    nv.uid = (u32)bpf_get_current_uid_gid();
    nv.cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&nv.comm, sizeof(nv.comm));
    int err = gen ? mh_errors1.insert(&key, &nv) : mh_errors0.insert(&key, &nv);
    if (err != 0) {
        v = gen ? mh_errors1.lookup(&key) : mh_errors0.lookup(&key);  /* another CPU won */
        if (v)
            __sync_fetch_and_add(&v->count, 1);
        else
            mh_count_drop(MH_EV_SYSCALL_ERRORS);
    }
    return 0;
}
#endif
