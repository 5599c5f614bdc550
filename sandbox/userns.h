// userns "auto" (docs/POLICY.md): the container's root runs as an
// unprivileged host uid/gid range, and its root filesystem is mounted
// idmapped so the files owned by host root in the image show (and are
// written) as the container's root.
//
// Ranges come from a pool: the first /etc/subuid and /etc/subgid lines for
// the user "agentshim" when both exist, else the built-in pool of 2^30 ids
// starting at host id 2^30 (far above the ranges useradd hands out). The
// pool is cut into slots of 65536 ids; one slot per container, recorded as a
// file <slot> under /run/agentshim-userns (shared by every --root, so two
// roots never hand out the same range) holding the owning container's state
// directory. A slot whose owner directory is gone (a crashed create, a
// removed root) is reused.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fd.h"
#include "sandbox/oci.h"

namespace agentshim::userns {

constexpr std::uint64_t kSlotSize = 65536;

struct Pool {
  std::uint64_t uid_first = 1ULL << 30;
  std::uint64_t gid_first = 1ULL << 30;
  std::uint64_t count = 1ULL << 30;  // ids in the pool (a multiple of kSlotSize is used)
  std::string source = "built-in";   // "built-in" | "/etc/subuid and /etc/subgid (agentshim)"
};

struct Range {
  std::uint64_t uid = 0;  // host uid of the container's uid 0
  std::uint64_t gid = 0;  // host gid of the container's gid 0
  std::uint64_t size = kSlotSize;
  std::uint64_t slot = 0;
};

// The pool from <etc>/subuid and <etc>/subgid ("name:first:count" lines).
// Errors name the file and line (a malformed line, an entry for agentshim in
// one file but not the other, a range smaller than one slot or one that
// includes id 0).
Pool pool(const std::string& etc = "/etc");

// Allocate a free slot for `owner` (a container's state directory) under
// `dir`. Throws Error when the pool is exhausted.
Range allocate(const std::string& owner, const Pool& p, const std::string& dir = "/run/agentshim-userns");
// Free every slot `owner` holds (idempotent).
void release(const std::string& owner, const std::string& dir = "/run/agentshim-userns");

// A detached copy of the mount tree at `path` (open_tree OPEN_TREE_CLONE,
// recursive), private, and with `idmap` idmapped through the user namespace
// of `pid`. Errors say when the filesystem or kernel cannot idmap it.
UniqueFd idmapped_tree(const std::string& path, pid_t pid, bool idmap = true);

// Can the mount tree at `path` be idmapped here? Tries it on a detached
// copy with a throwaway user namespace. When not, `why` says why (overlayfs,
// for one, cannot be idmapped as a whole: Docker's rootfs).
bool can_idmap(const std::string& path, std::string* why);

// Attach the idmapped `tree` onto `rootfs` inside the mount namespace of
// `pid` and open (O_PATH) the attached rootfs and each of `sources` (bind
// mount sources) there, as host root: a helper process forked for this
// enters that namespace, so the container's root never needs to reach the
// host paths itself (Docker's rootfs and its /etc/hosts live under
// root-only directories). Returns the rootfs fd first, then one fd per
// source that could be opened; `opened` gets those sources' paths.
// With `tree` -1 (a user namespace with the config's own id maps, as runc
// opens bind sources as host root) nothing is attached and only the
// sources' fds are returned; `rootfs` is unused.
std::vector<UniqueFd> attach_and_open(pid_t pid, int tree, const std::string& rootfs,
                                      const std::vector<std::string>& sources,
                                      std::vector<std::string>* opened);

// With the config's own id maps the container's root sets up its rootfs by
// path from inside its user namespace (only the bind sources are opened for
// it, attach_and_open without a tree), so every directory above `rootfs`
// must be searchable by it: by
// its mode bits for the root's host uid/gid, or because the directory's
// owner and group are both mapped (the root's CAP_DAC_OVERRIDE in its
// namespace covers those, as with runc). Throws an Error naming the first
// directory that is not.
void check_reachable(const std::string& rootfs, const std::vector<oci::IdMapping>& uids,
                     const std::vector<oci::IdMapping>& gids);

// Make the caller's stdio pipes and sockets (fds 0-2) owned by the
// container's root (uid/gid on the host), as runc does, so the container can
// reopen them through /proc/self/fd. Never touches files or devices.
void chown_stdio(std::uint64_t uid, std::uint64_t gid);

}  // namespace agentshim::userns
