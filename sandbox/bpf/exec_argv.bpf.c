// argv as the new program received it, copied in the kernel at the
// sched_process_exec tracepoint: it runs in the task that completed the
// exec, after the new mm is installed (mm->arg_start..arg_end hold the
// strings the kernel copied from the caller) and before the task returns to
// userspace, so a program that exits within microseconds is still there.
//
// One load per host (sandbox/bpf_host.h pins the link and the maps), shared
// by every supervisor. Only execs a supervisor announced are copied: its
// exec observer puts (its pid namespace, the thread group id as that
// namespace numbers it, which the seccomp notification gives) into `expect`
// before it lets the execve continue, with its slot and the attempt's
// sequence number; the record goes to the supervisor's ring buffer (its
// index in `rings`), and carries the slot and sequence number back.
// Everything else costs one hash lookup per pid namespace level.
//
// Built with clang -target bpf; the structures below are the few kernel
// fields read, with preserve_access_index: libbpf relocates their offsets
// against the running kernel's BTF (CO-RE), so no vmlinux.h is needed.
#include <linux/bpf.h>
#include <linux/types.h>

// libbpf's headers need the kernel's types first.
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "exec_argv.h"

struct ns_common {
  unsigned int inum;
} __attribute__((preserve_access_index));

struct pid_namespace {
  struct ns_common ns;
} __attribute__((preserve_access_index));

struct upid {
  int nr;
  struct pid_namespace* ns;
} __attribute__((preserve_access_index));

struct pid {
  unsigned int level;
  struct upid numbers[1];
} __attribute__((preserve_access_index));

struct mm_struct {
  unsigned long arg_start;
  unsigned long arg_end;
} __attribute__((preserve_access_index));

struct task_struct {
  struct mm_struct* mm;
  struct pid* thread_pid;
} __attribute__((preserve_access_index));

struct linux_binprm;

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, AGENTSHIM_ARGV_EXPECT_MAX);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct agentshim_argv_key);
  __type(value, struct agentshim_argv_expect);
} expect SEC(".maps");

// One record being assembled per CPU (a tracing program does not nest on
// its CPU and runs with migration disabled).
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);  // set to the number of possible CPUs before load
  __type(key, __u32);
  __type(value, struct agentshim_argv_record);
} scratch SEC(".maps");

// Each supervisor's own ring buffer (one container's exec flood fills only
// its own), from a pool: `ring_owner` says which slot holds index i. A
// ring buffer stays in `rings` when its owner leaves and is reused: putting
// a map into a map-of-maps, or taking it out, waits for an RCU grace period
// (12-14 ms measured), which a supervisor would pay at start and at exit.
struct ring {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, AGENTSHIM_ARGV_RING_BYTES);
};

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
  __uint(max_entries, AGENTSHIM_ARGV_RINGS_MAX);
  __type(key, __u32);
  __array(values, struct ring);
} rings SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, AGENTSHIM_ARGV_RINGS_MAX);
  __type(key, __u32);
  __type(value, struct agentshim_bpf_slot);
} ring_owner SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, AGENTSHIM_ARGV_SLOTS_MAX);
  __type(key, struct agentshim_bpf_slot);
  __type(value, struct agentshim_argv_stats);
} stats SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_argv, struct task_struct* p, int old_pid, struct linux_binprm* bprm) {
  // The thread group id as each pid namespace the task is in numbers it
  // (the task is its group's leader now: an exec by another thread took
  // the leader's pid), from the initial one down, until one was announced.
  struct pid* tp = BPF_CORE_READ(p, thread_pid);
  if (!tp) return 0;
  __u32 levels = BPF_CORE_READ(tp, level);
  const char* numbers = (const char*)tp + bpf_core_field_offset(struct pid, numbers);
  struct agentshim_argv_key key = {};
  struct agentshim_argv_expect* e = 0;
  for (__u32 l = 0; l < AGENTSHIM_ARGV_PIDNS_LEVELS && l <= levels; l++) {
    struct upid up = {};
    if (bpf_probe_read_kernel(&up, sizeof up, numbers + (__u64)l * sizeof(struct upid)) || !up.ns) return 0;
    key.pidns_inum = BPF_CORE_READ(up.ns, ns.inum);
    key.tgid = (__u32)up.nr;
    e = bpf_map_lookup_elem(&expect, &key);
    if (e) break;
  }
  if (!e) return 0;
  // One record per announcement: a later exec is announced again. Copied
  // out first: the entry is gone after the delete.
  struct agentshim_argv_expect want = *e;
  bpf_map_delete_elem(&expect, &key);
  // The ring buffer is still the announcer's (a supervisor killed and swept
  // left its announcements; its ring buffer may be another's now).
  struct agentshim_bpf_slot* owner = bpf_map_lookup_elem(&ring_owner, &want.ring);
  if (!owner || owner->pidns_inum != want.slot.pidns_inum || owner->pid != want.slot.pid ||
      owner->start != want.slot.start)
    return 0;
  void* ring = bpf_map_lookup_elem(&rings, &want.ring);
  struct agentshim_argv_stats* st = bpf_map_lookup_elem(&stats, &want.slot);
  if (!ring || !st) return 0;  // the supervisor is gone

  __u32 cpu = bpf_get_smp_processor_id();
  struct agentshim_argv_record* r = bpf_map_lookup_elem(&scratch, &cpu);
  if (!r) return 0;
  r->slot = want.slot;
  r->tgid = key.tgid;
  r->seq = want.seq;
  r->flags = 0;
  struct mm_struct* mm = BPF_CORE_READ(p, mm);
  unsigned long start = BPF_CORE_READ(mm, arg_start), end = BPF_CORE_READ(mm, arg_end);
  __u64 len = end > start ? end - start : 0;
  if (len > AGENTSHIM_ARGV_COPY_MAX) {
    len = AGENTSHIM_ARGV_COPY_MAX;
    r->flags |= AGENTSHIM_ARGV_TRUNCATED;
  }
  r->area_bytes = end > start ? end - start : 0;
  if (len && bpf_probe_read_user(r->data, len & AGENTSHIM_ARGV_COPY_MASK, (const void*)start)) {
    r->flags |= AGENTSHIM_ARGV_FAULT;
    len = 0;
  }
  r->len = (__u32)len;
  __u64 size =
      (__u64) __builtin_offsetof(struct agentshim_argv_record, data) + (len & AGENTSHIM_ARGV_COPY_MASK);
  // No wakeup: it is an irq_work self-IPI, about 23 us per exec in a VM
  // (measured), paid by the exec. The observer drains the ring buffer at
  // each exec notification and every 2 ms while an exec is in flight.
  if (bpf_ringbuf_output(ring, r, size, BPF_RB_NO_WAKEUP))
    __sync_fetch_and_add(&st->lost, 1);
  else
    __sync_fetch_and_add(&st->sent, 1);
  return 0;
}

char LICENSE[] SEC("license") = "GPL";
