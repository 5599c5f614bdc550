#include "common/util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "common/error.h"
#include "common/fd.h"

namespace agentshim {

std::string read_all(int fd, const std::string& what) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read " + what);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

void write_all(int fd, std::string_view data, const std::string& what) {
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("write " + what);
    }
    off += static_cast<std::size_t>(n);
  }
}

std::string read_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("open " + path);
  return read_all(fd.get(), path);
}

std::string read_file_limited(const std::string& path, std::size_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("open " + path);
  std::string out;
  out.resize(limit);
  std::size_t off = 0;
  while (off < limit) {
    ssize_t n = ::read(fd.get(), out.data() + off, limit - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("read " + path);
    }
    if (n == 0) break;
    off += static_cast<std::size_t>(n);
  }
  out.resize(off);
  return out;
}

std::optional<std::string> try_read_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return std::nullopt;
  try {
    return read_all(fd.get(), path);
  } catch (const SysError&) {
    return std::nullopt;
  }
}

void write_file(const std::string& path, std::string_view data, mode_t mode) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) throw_errno("open " + path);
  write_all(fd.get(), data, path);
}

namespace {
// A temporary name of this process and call: writers of one path at once
// (supervisors sharing /run/agentshim.dns/resolv.conf, the runtime digest
// cache) each rename their own whole file, never one another's half.
std::string unique_tmp(const std::string& path, bool random = false) {
  static std::atomic<std::uint64_t> seq{0};
  std::uint64_t n = seq.fetch_add(1);
  if (random) {  // after a collision: a name no counter reaches
    std::uint64_t r = 0;
    if (::getrandom(&r, sizeof r, GRND_NONBLOCK) == static_cast<ssize_t>(sizeof r)) n ^= r | (1ULL << 63);
  }
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(n);
}
}  // namespace

void write_file_atomic(const std::string& path, std::string_view data, mode_t mode, bool durable) {
  std::string tmp = unique_tmp(path);
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    // Taken: left by a killed writer whose pid this process now has, or a
    // writer of another pid namespace with the same pid. O_EXCL decides;
    // the next name is tried.
    for (int tries = 0; !fd && errno == EEXIST && tries < 64; ++tries) {
      tmp = unique_tmp(path, true);
      fd.reset(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    }
    if (!fd) throw_errno("open " + tmp);
    try {
      write_all(fd.get(), data, tmp);
      if (durable && ::fsync(fd.get()) < 0) throw_errno("fsync " + tmp);
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) < 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw_errno("rename " + tmp + " -> " + path, e);
  }
}

void DurableFiles::write(const std::string& path, std::string_view data, mode_t mode) {
  const std::string tmp = path + ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) throw_errno("open " + tmp);
  write_all(fd.get(), data, tmp);
  // Start the writeback now; commit() waits for it (best effort: where
  // sync_file_range is not supported, fdatasync does it all).
  (void)::sync_file_range(fd.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
  files_.push_back(File{path, std::move(fd), true});
}

void DurableFiles::sync(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw_errno("open " + path);
  (void)::sync_file_range(fd.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
  files_.push_back(File{path, std::move(fd), false});
}

void DurableFiles::commit() {
  for (auto& f : files_)
    if (::fdatasync(f.fd.get()) < 0) throw_errno("fdatasync " + f.path + (f.fresh ? ".tmp" : ""));
  std::vector<std::string> dirs;
  for (auto& f : files_) {
    if (f.fresh && ::rename((f.path + ".tmp").c_str(), f.path.c_str()) < 0)
      throw_errno("rename " + f.path + ".tmp -> " + f.path);
    std::string dir = parent_dir(f.path);
    if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
  }
  for (const auto& d : dirs) {
    UniqueFd fd(::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) throw_errno("open " + d);
    if (::fsync(fd.get()) < 0) throw_errno("fsync " + d);
  }
  files_.clear();
}

void mkdir_p(const std::string& path, mode_t mode) {
  if (path.empty()) return;
  std::string cur;
  for (const auto& part : split(path, '/')) {
    if (part.empty()) {
      if (cur.empty()) cur = "/";
      continue;
    }
    if (!cur.empty() && cur.back() != '/') cur += '/';
    cur += part;
    if (::mkdir(cur.c_str(), mode) < 0 && errno != EEXIST) throw_errno("mkdir " + cur);
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) throw_errno("stat " + path);
  if (!S_ISDIR(st.st_mode)) throw SysError("mkdir " + path, ENOTDIR);
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

namespace {
void remove_at(int dirfd, const char* name, dev_t dev) {
  struct stat st {};
  if (::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
    if (errno == ENOENT) return;
    throw_errno(std::string("stat ") + name);
  }
  if (S_ISDIR(st.st_mode)) {
    if (st.st_dev != dev) throw Error(std::string("refusing to cross mount point at ") + name);
    UniqueFd fd(::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) throw_errno(std::string("open ") + name);
    DIR* d = ::fdopendir(::dup(fd.get()));
    if (!d) throw_errno(std::string("fdopendir ") + name);
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      names.emplace_back(e->d_name);
    }
    ::closedir(d);
    for (const auto& n : names) remove_at(fd.get(), n.c_str(), dev);
    if (::unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
      throw_errno(std::string("rmdir ") + name);
  } else if (::unlinkat(dirfd, name, 0) < 0 && errno != ENOENT) {
    throw_errno(std::string("unlink ") + name);
  }
}
}  // namespace

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return;
    throw_errno("stat " + path);
  }
  remove_at(AT_FDCWD, path.c_str(), st.st_dev);
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    std::size_t pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      out.emplace_back(s.substr(start));
      break;
    }
    out.emplace_back(s.substr(start, pos - start));
    start = pos + 1;
  }
  return out;
}

std::string trim(std::string_view s) {
  std::size_t b = 0, e = s.size();
  while (b < e && std::strchr(" \t\r\n", s[b])) b++;
  while (e > b && std::strchr(" \t\r\n", s[e - 1])) e--;
  return std::string(s.substr(b, e - b));
}

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); i++) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

std::optional<long long> parse_int(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  std::string str(s);
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(str.c_str(), &end, 10);
  if (errno != 0 || end != str.c_str() + str.size()) return std::nullopt;
  return v;
}

std::optional<unsigned long long> parse_uint(std::string_view s) {
  if (s.empty() || s.size() > 20 || s[0] == '-' || s[0] == '+') return std::nullopt;
  std::string str(s);
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(str.c_str(), &end, 10);
  if (errno != 0 || end != str.c_str() + str.size()) return std::nullopt;
  return v;
}

std::string to_hex(const unsigned char* data, std::size_t len) {
  static const char* digits = "0123456789abcdef";
  std::string out(len * 2, '0');
  for (std::size_t i = 0; i < len; i++) {
    out[2 * i] = digits[data[i] >> 4];
    out[2 * i + 1] = digits[data[i] & 15];
  }
  return out;
}

std::string escape_for_terminal(std::string_view s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  auto byte = [&](unsigned char c) {
    out += "\\x";
    out += hex[c >> 4];
    out += hex[c & 15];
  };
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      out += "\\\\";
      i++;
      continue;
    }
    if (c < 0x20 || c == 0x7f) {
      byte(c);
      i++;
      continue;
    }
    if (c < 0x80) {
      out += static_cast<char>(c);
      i++;
      continue;
    }
    // A UTF-8 sequence: its length, the smallest code point it may encode.
    std::size_t len = 0;
    uint32_t cp = 0, min = 0;
    if (c >= 0xc2 && c <= 0xdf)
      len = 2, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
      len = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
      len = 4, cp = c & 0x07, min = 0x10000;
    bool ok = len > 0 && i + len <= s.size();
    for (std::size_t k = 1; ok && k < len; k++) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) ok = false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (ok && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) ok = false;
    if (!ok) {
      byte(c);  // only this byte: the next one starts afresh
      i++;
      continue;
    }
    if ((cp >= 0x80 && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069)) {
      out += "\\u";
      for (int sh = 12; sh >= 0; sh -= 4) out += hex[(cp >> sh) & 15];
    } else {
      out.append(s.substr(i, len));
    }
    i += len;
  }
  return out;
}

}  // namespace agentshim
