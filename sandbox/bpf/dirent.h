// The record sandbox/bpf/dirent.bpf.c sends and sandbox/dirent_bpf.cpp
// reads: shared by the BPF program and the supervisor (C, fixed widths).
#pragma once

#include <linux/types.h>

#define AGENTSHIM_DIRENT_PATH_MAX 4096  // PATH_MAX: what d_path fills at most
#define AGENTSHIM_DIRENT_NAME_MAX 256   // NAME_MAX and its NUL
#define AGENTSHIM_DIRENT_RING_BYTES (4 * 1024 * 1024)
// How deep below the cgroup v2 root the container's cgroup may be looked
// for among a task's ancestors (the container may create cgroups below its own).
#define AGENTSHIM_DIRENT_CGROUP_DEPTH 32

// op
#define AGENTSHIM_DIRENT_CREATED 1u
#define AGENTSHIM_DIRENT_REMOVED 2u
#define AGENTSHIM_DIRENT_MOVED_FROM 3u
#define AGENTSHIM_DIRENT_MOVED_TO 4u

// flags
#define AGENTSHIM_DIRENT_DIR 1u       // the entry is a directory
#define AGENTSHIM_DIRENT_NO_PATH 2u   // bpf_path_d_path failed (path empty)
#define AGENTSHIM_DIRENT_EXCHANGE 4u  // rename(RENAME_EXCHANGE): both names stay

struct agentshim_dirent_config {
  __u64 cgroup_id;  // the container's cgroup v2 (kernfs id = its inode number)
};

struct agentshim_dirent_record {
  __u32 op;
  __u32 flags;
  __u32 pid;                             // thread group id in the initial pid namespace
  __s32 mnt_id;                          // the mount the name was changed through (statx STATX_MNT_ID)
  __u32 dev;                             // the superblock's device, kernel encoding (major << 20 | minor)
  __s32 path_len;                        // bpf_path_d_path's result: length with the NUL, or -errno
  char path[AGENTSHIM_DIRENT_PATH_MAX];  // the directory, as the calling task names it
  char name[AGENTSHIM_DIRENT_NAME_MAX];  // the entry's name (NUL-terminated)
};
