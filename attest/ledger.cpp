#include "attest/ledger.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "attest/canonical.h"
#include "attest/hash.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/util.h"

namespace agentshim::attest {

std::string ledger_row_hash(const json& row) {
  return hex(sha256(std::string("agentshim-ledger-v1\n") + canonical(row)));
}

namespace {
// The last complete line of the ledger (rows are small; read the tail).
std::optional<json> last_row(int fd) {
  off_t size = ::lseek(fd, 0, SEEK_END);
  if (size <= 0) return std::nullopt;
  off_t start = size > 65536 ? size - 65536 : 0;
  std::string buf(static_cast<std::size_t>(size - start), '\0');
  if (::pread(fd, buf.data(), buf.size(), start) != static_cast<ssize_t>(buf.size())) throw_errno("read ledger tail");
  if (buf.back() != '\n') throw Error("ledger: the last row is incomplete (no newline); repair the ledger first");
  buf.pop_back();
  auto nl = buf.rfind('\n');
  std::string line = nl == std::string::npos ? buf : buf.substr(nl + 1);
  try {
    return json::parse(line);
  } catch (const std::exception&) {
    throw Error("ledger: the last row is not valid JSON");
  }
}
}  // namespace

json ledger_append(const std::string& audit_dir,
                   const std::function<json(uint64_t index, const std::string& prev)>& make_fields) {
  mkdir_p(audit_dir, 0700);
  std::string lock_path = audit_dir + "/ledger.lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) throw_errno("open " + lock_path);
  while (::flock(lock.get(), LOCK_EX) < 0)
    if (errno != EINTR) throw_errno("flock " + lock_path);
  std::string path = audit_dir + "/ledger.ndjson";
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!fd) throw_errno("open " + path);
  auto last = last_row(fd.get());
  uint64_t index = last ? last->at("index").get<uint64_t>() + 1 : 0;
  std::string prev = last ? last->at("row_hash").get<std::string>() : std::string(64, '0');
  json row = make_fields(index, prev);
  row["index"] = index;
  row["prev"] = prev;
  row["time"] = rfc3339_now();
  row.erase("row_hash");
  row["row_hash"] = ledger_row_hash(row);
  std::string line = canonical(row) + "\n";
  write_all(fd.get(), line, path);
  if (::fsync(fd.get()) < 0) throw_errno("fsync " + path);
  return row;
}

LedgerCheck check_ledger(const std::string& path) {
  LedgerCheck c;
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) {
    c.problems.push_back("ledger: cannot open " + path + ": " + std::strerror(errno));
    return c;
  }
  char* line = nullptr;
  std::size_t cap = 0;
  ssize_t n;
  std::string prev(64, '0');
  uint64_t lineno = 0;
  while ((n = ::getline(&line, &cap, f)) > 0) {
    ++lineno;
    std::string where = "ledger.ndjson line " + std::to_string(lineno);
    std::string_view text(line, static_cast<std::size_t>(n));
    if (text.back() != '\n') {
      c.problems.push_back(where + ": truncated");
      break;
    }
    text.remove_suffix(1);
    json row;
    try {
      row = json::parse(text);
    } catch (const std::exception&) {
      c.problems.push_back(where + ": not valid JSON");
      break;
    }
    try {
      if (!row.is_object() || canonical(row) != text) {
        c.problems.push_back(where + ": not in canonical form (bytes were altered)");
        break;
      }
      if (row.value("index", uint64_t(~0ULL)) != lineno - 1) {
        c.problems.push_back(where + ": index out of order (rows removed or reordered)");
        break;
      }
      if (row.value("prev", "") != prev) {
        c.problems.push_back(where + ": prev does not match the previous row's hash (rows removed, reordered or rewritten)");
        break;
      }
      json body = row;
      body.erase("row_hash");
      if (ledger_row_hash(body) != row.value("row_hash", "")) {
        c.problems.push_back(where + ": row_hash does not match the row's content");
        break;
      }
    } catch (const std::exception& e) {
      c.problems.push_back(where + ": " + e.what());
      break;
    }
    prev = row["row_hash"];
    c.rows.push_back(std::move(row));
  }
  std::free(line);
  std::fclose(f);
  return c;
}

}  // namespace agentshim::attest
