// One load of a BPF object per host, shared by every supervisor.
//
// Loading a program costs a supervisor 12-16 ms (BTF, the verifier); its
// pins make that once per host. The first supervisor to need the object
// loads it and pins its links (so the programs stay attached after it
// exits) and its maps in bpffs under
//   /sys/fs/bpf/agentshim/<name>-<sha256 of the object bytes, 16 hex>/
// (root's, mode 0700; bpffs is mounted at /sys/fs/bpf when it is not),
// under an exclusive flock on /run/agentshim.bpf.lock; the others open the
// pins. Each supervisor takes a slot (struct agentshim_bpf_slot: its pid
// namespace, pid and start time) in the `slots` map of the directory for
// as long as it runs, and puts its per-container state into maps keyed by
// it (a ring buffer in a map-of-maps, counters) or whose values carry it
// (announcements). Taking a slot sweeps the slots of dead supervisors (one
// killed with SIGKILL) and their entries in those maps, and removes the
// directories of other builds of the object (an upgrade) that no live slot
// uses, which detaches their programs.
//
// The pins are root's: a container (its own user and pid namespaces, no
// bpffs, no CAP_BPF in the initial user namespace) can neither open them
// nor reach the maps by id.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/fd.h"

extern "C" {
#include "sandbox/bpf/slot.h"
}

struct bpf_object;
struct bpf_link;

namespace agentshim::bpfhost {

struct Spec {
  std::string name;                       // [a-z0-9_]+: the directory's prefix
  std::span<const unsigned char> object;  // the compiled object (its hash names the directory)
  std::vector<std::string> maps;          // maps pinned and opened by every user
  // Maps (among `maps`) whose key, or whose value, starts with a slot: a
  // dead supervisor's entries are deleted from them, a leaving one's too.
  std::vector<std::string> slot_keyed, slot_valued;
  // Before the load (e.g. max_entries that depend on the machine).
  std::function<bool(bpf_object*, std::string& error)> prepare;
  // Set: the caller's own load, unpinned, with this as pin_error() (a test
  // hook for the fallback where bpffs cannot be used).
  std::string no_pin;
};

class Host {
 public:
  // The object's maps, pinned; when bpffs cannot be used, this supervisor
  // loads the object for itself (pin_error() says why); nullptr with
  // `error` set when the object cannot be loaded (the caller falls back).
  static std::unique_ptr<Host> open(const Spec& spec, std::string& error);
  ~Host();  // leaves the slot: this supervisor's entries are deleted
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  int map_fd(const std::string& name) const;  // -1 if not in spec.maps
  const agentshim_bpf_slot& slot() const { return slot_; }
  // "loaded": this supervisor loaded and pinned the object; "pinned": it
  // opened the pins another one left; "private": its own load, unpinned.
  const char* obtained() const { return obj_ ? "private" : loaded_ ? "loaded" : "pinned"; }
  const std::string& pin_error() const { return pin_error_; }
  const std::string& dir() const { return dir_; }  // empty when "private"

  struct ObjectClose {
    void operator()(bpf_object* o) const;
  };
  struct LinkDestroy {
    void operator()(bpf_link* l) const;
  };

 private:
  Host() = default;
  bool open_pinned(const Spec& spec, bool& load_failed, std::string& error);
  Spec spec_;
  std::unique_ptr<bpf_object, ObjectClose> obj_;  // "private" only
  std::vector<std::unique_ptr<bpf_link, LinkDestroy>> links_;
  std::string pin_error_;
  std::string dir_;
  std::map<std::string, UniqueFd> maps_;
  UniqueFd slots_;
  agentshim_bpf_slot slot_{};
  bool loaded_ = false;
};

// The first 16 hex digits of the SHA-256 of a compiled object: what names
// its pin directory (and the dirent loader's refusal file).
std::string object_hash(std::span<const unsigned char> object);

// The calling process's slot (for tests: of `pid`, in this pid namespace).
bool slot_of(pid_t pid, agentshim_bpf_slot& slot, std::string& error);
// Whether the owner of `slot` still runs; a slot of another pid namespace
// counts as alive (its owner cannot be seen from here).
bool slot_alive(const agentshim_bpf_slot& slot, uint32_t own_pidns);

}  // namespace agentshim::bpfhost
