// Where the records of one audit directory live, and the only code that
// builds their paths: <audit-dir>/runs/<run-id>/ (docs/FORMATS.md). The
// directory comes from the caller's settings: --audit-dir, else the policy's
// audit.dir (the same choice `create` makes), else kDefaultAuditDir.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace agentshim::attest {

inline constexpr const char* kDefaultAuditDir = "/var/lib/agentshim";

class RunStore {
 public:
  // An empty audit_dir means kDefaultAuditDir.
  explicit RunStore(std::string audit_dir);

  const std::string& audit_dir() const { return dir_; }
  std::string runs_dir() const;                          // <audit-dir>/runs
  std::string run_dir(const std::string& run_id) const;  // <audit-dir>/runs/<run-id>
  std::string keys_dir() const;                          // <audit-dir>/keys

  // The run ids present, sorted (run ids sort by creation time).
  std::vector<std::string> run_ids() const;
  // True when run_id names a run directory of this store (never "", "." or
  // "..", never a path).
  bool has(const std::string& run_id) const;
  // The container a run was created for: session.json's container_id, else
  // the first event's; "" when neither can be read.
  std::string container_of(const std::string& run_id) const;
  // The latest run of a container, if any.
  std::optional<std::string> latest_run_of(const std::string& container_id) const;

 private:
  std::string dir_;
};

}  // namespace agentshim::attest
