// The slot a supervisor holds in a host-wide BPF load (sandbox/bpf_host.h):
// shared by BPF programs and the supervisor (C, fixed widths). Maps whose
// key or value starts with it are swept of a dead supervisor's entries.
#pragma once

#include <linux/types.h>

struct agentshim_bpf_slot {
  __u32 pidns_inum;  // the owner's pid namespace (its inode)
  __u32 pid;         // the owner's pid there
  __u64 start;       // its start time (clock ticks since boot): a reused pid differs
};
