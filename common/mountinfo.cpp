#include "common/mountinfo.h"

#include <cstdlib>

#include "common/util.h"

namespace agentshim {
namespace {

bool is_octal(char c) {
  return c >= '0' && c <= '7';
}

std::string unescape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && is_octal(s[i + 1]) && is_octal(s[i + 2]) && is_octal(s[i + 3])) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::string> fields(const std::string& s) {
  std::vector<std::string> out;
  for (auto& f : split(s, ' '))
    if (!f.empty()) out.push_back(f);
  return out;
}

bool parse_int_field(const std::string& s, int* out) {
  auto v = parse_int(s);
  if (!v || *v < 0 || *v > 0x7fffffff) return false;
  *out = static_cast<int>(*v);
  return true;
}

}  // namespace

std::vector<MountInfo> parse_mountinfo(const std::string& text) {
  std::vector<MountInfo> out;
  for (const auto& line : split(text, '\n')) {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    auto dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    auto pre = fields(line.substr(0, dash));
    auto post = fields(line.substr(dash + 3));
    if (pre.size() < 6 || post.size() < 2) continue;
    MountInfo m;
    if (!parse_int_field(pre[0], &m.id) || !parse_int_field(pre[1], &m.parent)) continue;
    m.root = unescape(pre[3]);
    m.mount_point = unescape(pre[4]);
    m.mount_options = pre[5];
    m.optional.assign(pre.begin() + 6, pre.end());
    m.fstype = unescape(post[0]);
    m.source = unescape(post[1]);
    if (post.size() > 2) m.super_options = unescape(post[2]);
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<MountInfo> read_mountinfo(const std::string& path) {
  return parse_mountinfo(read_file(path));
}

bool has_option(const std::string& opts, const std::string& o) {
  std::size_t i = 0;
  while (i <= opts.size()) {
    std::size_t j = opts.find(',', i);
    if (j == std::string::npos) j = opts.size();
    if (opts.compare(i, j - i, o) == 0) return true;
    i = j + 1;
  }
  return false;
}

std::string mount_point_of(const std::vector<MountInfo>& mounts, const std::string& path) {
  std::string best = "/";
  for (const auto& m : mounts) {
    const std::string& mp = m.mount_point;
    bool prefix = mp == "/" || path == mp || starts_with(path, mp + "/");
    if (prefix && mp.size() > best.size()) best = mp;
  }
  return best;
}

}  // namespace agentshim
