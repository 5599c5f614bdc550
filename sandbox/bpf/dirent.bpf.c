// Names created, removed and renamed by the container's processes, on any
// filesystem (volumes, overlay roots), from the path-based LSM hooks:
// path_mknod (mknod and open(O_CREAT) of a new file), path_mkdir,
// path_unlink, path_rmdir, path_rename, path_link, path_symlink. They run
// before the operation, in the calling task, with the parent directory as
// a struct path: the kfunc bpf_path_d_path (6.12+, any LSM program; the
// bpf_d_path helper would need sleepable hooks, and path_mknod is not one
// upstream) names it as the caller sees it (inside the container), and the
// entry's name is the dentry's.
//
// Only the container's processes are recorded: a task whose cgroup (v2) is
// the container's or below it. Exec sessions join that cgroup; a process
// of the container cannot leave it (the host's cgroups are not writable
// from there). A host process writing into the same directory is not seen.
//
// Never denies: each program returns the verdict it was given.
#include <linux/bpf.h>
#include <linux/errno.h>
#include <linux/types.h>

// libbpf's headers need the kernel's types first.
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "dirent.h"

struct qstr {
  union {
    struct {
      __u32 hash;
      __u32 len;
    };
    __u64 hash_len;
  };
  const unsigned char* name;
} __attribute__((preserve_access_index));

struct super_block {
  __u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
  unsigned short i_mode;
} __attribute__((preserve_access_index));

struct dentry {
  struct qstr d_name;
  struct inode* d_inode;
  struct super_block* d_sb;
} __attribute__((preserve_access_index));

struct vfsmount {
  struct dentry* mnt_root;
} __attribute__((preserve_access_index));

struct mount {
  struct vfsmount mnt;
  int mnt_id;
} __attribute__((preserve_access_index));

struct path {
  struct vfsmount* mnt;
  struct dentry* dentry;
} __attribute__((preserve_access_index));

extern int bpf_path_d_path(struct path* path, char* buf, unsigned long buf__sz) __ksym;

#define S_IFMT 00170000
#define S_IFDIR 0040000

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct agentshim_dirent_config);
} config SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, AGENTSHIM_DIRENT_RING_BYTES);
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

static __always_inline int in_container(void) {
  __u32 zero = 0;
  struct agentshim_dirent_config* c = bpf_map_lookup_elem(&config, &zero);
  if (!c || !c->cgroup_id) return 0;
  if (bpf_get_current_cgroup_id() == c->cgroup_id) return 1;
  for (int level = 1; level < AGENTSHIM_DIRENT_CGROUP_DEPTH; level++) {
    __u64 id = bpf_get_current_ancestor_cgroup_id(level);
    if (!id) return 0;
    if (id == c->cgroup_id) return 1;
  }
  return 0;
}

static __always_inline void send(__u32 op, __u32 flags, const struct path* dir, struct dentry* d) {
  struct agentshim_dirent_record* r = bpf_ringbuf_reserve(&ring, sizeof *r, 0);
  if (!r) {
    count(0);
    return;
  }
  r->op = op;
  r->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
  struct vfsmount* vm = BPF_CORE_READ(dir, mnt);
  struct mount* m = (struct mount*)((char*)vm - bpf_core_field_offset(struct mount, mnt));
  r->mnt_id = BPF_CORE_READ(m, mnt_id);
  r->dev = BPF_CORE_READ(d, d_sb, s_dev);
  struct inode* ino = BPF_CORE_READ(d, d_inode);
  if (ino && (BPF_CORE_READ(ino, i_mode) & S_IFMT) == S_IFDIR) flags |= AGENTSHIM_DIRENT_DIR;
  r->path_len = bpf_path_d_path((struct path*)dir, r->path, sizeof r->path);
  if (r->path_len < 0) {
    flags |= AGENTSHIM_DIRENT_NO_PATH;
    r->path[0] = 0;
  }
  r->flags = flags;
  const unsigned char* name = BPF_CORE_READ(d, d_name.name);
  if (bpf_probe_read_kernel_str(r->name, sizeof r->name, name) < 0) r->name[0] = 0;
  bpf_ringbuf_submit(r, 0);
  count(1);
}

SEC("lsm/path_mknod")
int BPF_PROG(dirent_mknod, const struct path* dir, struct dentry* dentry, unsigned short mode,
             unsigned int dev, int ret) {
  if (in_container()) send(AGENTSHIM_DIRENT_CREATED, 0, dir, dentry);
  return ret;
}

SEC("lsm/path_mkdir")
int BPF_PROG(dirent_mkdir, const struct path* dir, struct dentry* dentry, unsigned short mode, int ret) {
  if (in_container()) send(AGENTSHIM_DIRENT_CREATED, AGENTSHIM_DIRENT_DIR, dir, dentry);
  return ret;
}

SEC("lsm/path_symlink")
int BPF_PROG(dirent_symlink, const struct path* dir, struct dentry* dentry, const char* old_name, int ret) {
  if (in_container()) send(AGENTSHIM_DIRENT_CREATED, 0, dir, dentry);
  return ret;
}

SEC("lsm/path_link")
int BPF_PROG(dirent_link, struct dentry* old_dentry, const struct path* new_dir, struct dentry* new_dentry,
             int ret) {
  if (in_container()) send(AGENTSHIM_DIRENT_CREATED, 0, new_dir, new_dentry);
  return ret;
}

SEC("lsm/path_unlink")
int BPF_PROG(dirent_unlink, const struct path* dir, struct dentry* dentry, int ret) {
  if (in_container()) send(AGENTSHIM_DIRENT_REMOVED, 0, dir, dentry);
  return ret;
}

SEC("lsm/path_rmdir")
int BPF_PROG(dirent_rmdir, const struct path* dir, struct dentry* dentry, int ret) {
  if (in_container()) send(AGENTSHIM_DIRENT_REMOVED, AGENTSHIM_DIRENT_DIR, dir, dentry);
  return ret;
}

#define RENAME_EXCHANGE (1 << 1)

SEC("lsm/path_rename")
int BPF_PROG(dirent_rename, const struct path* old_dir, struct dentry* old_dentry, const struct path* new_dir,
             struct dentry* new_dentry, unsigned int flags, int ret) {
  if (!in_container()) return ret;
  __u32 f = (flags & RENAME_EXCHANGE) ? AGENTSHIM_DIRENT_EXCHANGE : 0;
  send(AGENTSHIM_DIRENT_MOVED_FROM, f, old_dir, old_dentry);
  // The new name's dentry is negative (or the entry replaced): the moved
  // entry's kind is the old dentry's.
  struct inode* ino = BPF_CORE_READ(old_dentry, d_inode);
  if (ino && (BPF_CORE_READ(ino, i_mode) & S_IFMT) == S_IFDIR) f |= AGENTSHIM_DIRENT_DIR;
  send(AGENTSHIM_DIRENT_MOVED_TO, f, new_dir, new_dentry);
  return ret;
}

char LICENSE[] SEC("license") = "GPL";
