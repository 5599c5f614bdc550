// argv as the new program received it, copied in the kernel at the
// sched_process_exec tracepoint: it runs in the task that completed the
// exec, after the new mm is installed (mm->arg_start..arg_end hold the
// strings the kernel copied from the caller) and before the task returns to
// userspace, so a program that exits within microseconds is still there.
//
// Only execs the supervisor announced are copied: the exec observer puts
// the thread group id (as the supervisor's pid namespace numbers it, which
// the seccomp notification gives) into `expect` before it lets the execve
// continue, with the attempt's sequence number; the record carries it back.
// Everything else costs one hash lookup.
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

// [0]: the supervisor's pid namespace: its level and inode (written by
// the supervisor before it attaches the program).
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct agentshim_argv_config);
} config SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, AGENTSHIM_ARGV_EXPECT_MAX);
  __type(key, __u32);    // tgid in the supervisor's pid namespace
  __type(value, __u64);  // the attempt's sequence number
} expect SEC(".maps");

// One record being assembled per CPU (a tracing program does not nest on
// its CPU and runs with migration disabled).
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);  // set to the number of possible CPUs before load
  __type(key, __u32);
  __type(value, struct agentshim_argv_record);
} scratch SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, AGENTSHIM_ARGV_RING_BYTES);
} ring SEC(".maps");

// [0]: records the ring buffer had no room for; [1]: records sent.
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 2);
  __type(key, __u32);
  __type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 i) {
  __u64* v = bpf_map_lookup_elem(&stats, &i);
  if (v) __sync_fetch_and_add(v, 1);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_argv, struct task_struct* p, int old_pid, struct linux_binprm* bprm) {
  // The thread group id as the supervisor sees it: the task is its group's
  // leader now (an exec by another thread took the leader's pid).
  __u32 zero = 0;
  struct agentshim_argv_config* c = bpf_map_lookup_elem(&config, &zero);
  if (!c) return 0;
  struct pid* tp = BPF_CORE_READ(p, thread_pid);
  if (!tp) return 0;
  __u32 level = c->pidns_level;
  if (level > 31 || BPF_CORE_READ(tp, level) < level) return 0;
  struct upid up = {};
  const char* numbers = (const char*)tp + bpf_core_field_offset(struct pid, numbers);
  if (bpf_probe_read_kernel(&up, sizeof up, numbers + (__u64)level * sizeof(struct upid))) return 0;
  if (!up.ns || BPF_CORE_READ(up.ns, ns.inum) != c->pidns_inum) return 0;
  __u32 tgid = (__u32)up.nr;
  __u64* seq = bpf_map_lookup_elem(&expect, &tgid);
  if (!seq) return 0;

  __u32 cpu = bpf_get_smp_processor_id();
  struct agentshim_argv_record* r = bpf_map_lookup_elem(&scratch, &cpu);
  if (!r) return 0;
  r->tgid = tgid;
  r->seq = *seq;
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
  if (bpf_ringbuf_output(&ring, r, size, BPF_RB_NO_WAKEUP))
    count(0);
  else
    count(1);
  // One record per announcement: a later exec is announced again.
  bpf_map_delete_elem(&expect, &tgid);
  return 0;
}

char LICENSE[] SEC("license") = "GPL";
