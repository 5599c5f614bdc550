#include "attest/runstore.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/util.h"

namespace agentshim::attest {

using json = nlohmann::json;

RunStore::RunStore(std::string audit_dir)
    : dir_(audit_dir.empty() ? kDefaultAuditDir : std::move(audit_dir)) {}

std::string RunStore::runs_dir() const {
  return dir_ + "/runs";
}

std::string RunStore::run_dir(const std::string& run_id) const {
  return runs_dir() + "/" + run_id;
}

std::string RunStore::keys_dir() const {
  return dir_ + "/keys";
}

std::vector<std::string> RunStore::run_ids() const {
  std::vector<std::string> out;
  const std::string runs = runs_dir();
  DIR* d = ::opendir(runs.c_str());
  if (!d) return out;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool RunStore::has(const std::string& run_id) const {
  if (run_id.empty() || run_id == "." || run_id == ".." || run_id.find('/') != std::string::npos)
    return false;
  struct stat st {};
  return ::stat(run_dir(run_id).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string RunStore::container_of(const std::string& run_id) const {
  const std::string rd = run_dir(run_id);
  if (auto s = try_read_file(rd + "/session.json")) {
    try {
      return json::parse(*s).value("container_id", "");
    } catch (const std::exception&) {
    }
  }
  auto text = try_read_file(rd + "/events.ndjson");
  if (!text) return "";
  try {
    json ev = json::parse(text->substr(0, text->find('\n')));
    return ev.at("data").value("container_id", "");
  } catch (const std::exception&) {
    return "";
  }
}

std::optional<std::string> RunStore::latest_run_of(const std::string& container_id) const {
  auto ids = run_ids();
  for (auto it = ids.rbegin(); it != ids.rend(); ++it)
    if (container_of(*it) == container_id) return *it;
  return std::nullopt;
}

}  // namespace agentshim::attest
