// The record sandbox/bpf/exec_argv.bpf.c sends and sandbox/exec_argv_bpf.cpp
// reads: shared by the BPF program and the supervisor (C, fixed widths).
#pragma once

#include <linux/types.h>

#include "slot.h"

// The copy of mm->arg_start..arg_end: the observer's limits (256 arguments,
// 64 KiB in all) plus their 256 NULs. A power of two would be simpler for
// the verifier; the mask below bounds the length for it instead.
#define AGENTSHIM_ARGV_COPY_MAX (64 * 1024 + 256)
#define AGENTSHIM_ARGV_COPY_MASK 0x1ffff
#define AGENTSHIM_ARGV_EXPECT_MAX 65536  // host-wide; a supervisor announces at most 4096 at once
#define AGENTSHIM_ARGV_SLOTS_MAX 4096    // supervisors at once
#define AGENTSHIM_ARGV_RINGS_MAX 256     // ring buffers in the pool (supervisors with the program at once)
#define AGENTSHIM_ARGV_RING_BYTES (1024 * 1024)
#define AGENTSHIM_ARGV_PIDNS_LEVELS 32  // the kernel's MAX_PID_NS_LEVEL

#define AGENTSHIM_ARGV_TRUNCATED 1u  // the area is longer than the copy
#define AGENTSHIM_ARGV_FAULT 2u      // the area could not be read (len 0)

// An announced exec: the thread group as its supervisor's pid namespace
// numbers it.
struct agentshim_argv_key {
  __u32 pidns_inum;
  __u32 tgid;
};

struct agentshim_argv_expect {
  struct agentshim_bpf_slot slot;  // the announcing supervisor
  __u32 ring;                      // its ring buffer's index in `rings`
  __u32 pad;
  __u64 seq;  // the attempt's sequence number
};

// Per slot: records its ring buffer had no room for, and records sent.
struct agentshim_argv_stats {
  __u64 lost;
  __u64 sent;
};

struct agentshim_argv_record {
  struct agentshim_bpf_slot slot;  // the announcing supervisor (a pooled ring's earlier owner's differs)
  __u32 tgid;
  __u32 flags;
  __u64 seq;
  __u64 area_bytes;  // arg_end - arg_start
  __u32 len;         // bytes of data that follow
  __u32 pad;
  char data[AGENTSHIM_ARGV_COPY_MASK + 1];  // len bytes used
};
