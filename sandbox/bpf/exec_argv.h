// The record sandbox/bpf/exec_argv.bpf.c sends and sandbox/exec_argv_bpf.cpp
// reads: shared by the BPF program and the supervisor (C, fixed widths).
#pragma once

#include <linux/types.h>

// The copy of mm->arg_start..arg_end: the observer's limits (256 arguments,
// 64 KiB in all) plus their 256 NULs. A power of two would be simpler for
// the verifier; the mask below bounds the length for it instead.
#define AGENTSHIM_ARGV_COPY_MAX (64 * 1024 + 256)
#define AGENTSHIM_ARGV_COPY_MASK 0x1ffff
#define AGENTSHIM_ARGV_EXPECT_MAX 16384
#define AGENTSHIM_ARGV_RING_BYTES (4 * 1024 * 1024)

#define AGENTSHIM_ARGV_TRUNCATED 1u  // the area is longer than the copy
#define AGENTSHIM_ARGV_FAULT 2u      // the area could not be read (len 0)

struct agentshim_argv_config {
  __u32 pidns_level;
  __u32 pidns_inum;
};

struct agentshim_argv_record {
  __u32 tgid;
  __u32 flags;
  __u64 seq;
  __u64 area_bytes;  // arg_end - arg_start
  __u32 len;         // bytes of data that follow
  __u32 pad;
  char data[AGENTSHIM_ARGV_COPY_MASK + 1];  // len bytes used
};
