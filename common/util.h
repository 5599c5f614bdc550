// Small filesystem and string helpers shared by every library.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.h"

namespace agentshim {

// Whole-file read; throws SysError naming the path.
std::string read_file(const std::string& path);
// Read at most `limit` bytes (for /proc files from a hostile pid).
std::string read_file_limited(const std::string& path, std::size_t limit);
std::optional<std::string> try_read_file(const std::string& path);
// Write (truncate) a file; throws SysError naming the path.
void write_file(const std::string& path, std::string_view data, mode_t mode = 0644);
// Write to a temporary name of its own (path.tmp.PID.N), fsync, rename over
// path: readers see old or new, never half; concurrent writers each rename a
// whole file of their own (the last rename wins).
// durable=false: no fsync (runtime state under --root, like runc's
// state.json: it does not outlive a reboot, and create/delete stay fast).
void write_file_atomic(const std::string& path, std::string_view data, mode_t mode = 0644,
                       bool durable = true);
// Several files made durable together, for a caller that needs all of
// them on disk before it goes on (a run's record before its ledger row):
// each new file is written to PATH.tmp with its writeback started at once;
// commit() then waits for every file's data (fdatasync: on a journaling
// filesystem the first one commits the metadata of all), renames the new
// files over their paths and fsyncs their directories once each. Readers
// see old or new files, never half. One or two journal commits instead of
// one per file.
class DurableFiles {
 public:
  // A new file's content (written now, renamed at commit()).
  void write(const std::string& path, std::string_view data, mode_t mode = 0644);
  // A file already written in place (an append-only log): synced at commit().
  void sync(const std::string& path);
  void commit();

 private:
  struct File {
    std::string path;
    UniqueFd fd;
    bool fresh = false;
  };
  std::vector<File> files_;
};
// mkdir -p; throws on failure other than EEXIST-as-directory.
void mkdir_p(const std::string& path, mode_t mode = 0755);
bool path_exists(const std::string& path);
// The directory part of a path: "a/b" -> "a", "/a" -> "/", "a" -> ".".
std::string parent_dir(const std::string& path);
// Remove a directory tree without crossing mount points (rm -rf --one-file-system).
void remove_tree(const std::string& path);

std::vector<std::string> split(std::string_view s, char sep);
std::string trim(std::string_view s);
bool starts_with(std::string_view s, std::string_view p);
std::string join(const std::vector<std::string>& parts, std::string_view sep);
// Strict integer parsing: whole string, in range, else nullopt.
std::optional<long long> parse_int(std::string_view s);
std::optional<unsigned long long> parse_uint(std::string_view s);

// Lowercase hex of bytes.
std::string to_hex(const unsigned char* data, std::size_t len);

// Bytes that came from a container, made safe to print on a terminal: every
// C0 control byte and DEL as \xNN (\n, \t, \r, \e included: no escape
// sequence, no fake line), a backslash as \\ (so the result is unambiguous),
// each byte of invalid UTF-8 (overlong, surrogate, > U+10FFFF, truncated) as
// \xNN, and the C1 controls (U+0080-U+009F) and the bidirectional overrides
// and isolates (U+202A-U+202E, U+2066-U+2069) as \uNNNN. Everything else
// (valid printable UTF-8) unchanged.
std::string escape_for_terminal(std::string_view s);

// Write the whole buffer, retrying on EINTR/short writes; throws SysError.
void write_all(int fd, std::string_view data, const std::string& what);
// Read until EOF; throws SysError.
std::string read_all(int fd, const std::string& what);

}  // namespace agentshim
