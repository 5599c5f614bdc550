// The record's files as a verifier reads them: events.ndjson, ledger.ndjson
// and a whole run directory (session, attestation, Sigstore bundle) with hostile bytes.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "attest/eventlog.h"
#include "attest/ledger.h"
#include "attest/record.h"
#include "common/util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::string dir = [] {
    char t[] = "/tmp/record-fuzz-XXXXXX";
    std::string d = ::mkdtemp(t);
    agentshim::mkdir_p(d + "/runs/r");
    return d;
  }();
  std::string in(reinterpret_cast<const char*>(data), size);
  std::string rd = dir + "/runs/r";
  // Split the input into the files of a run (0x00 separates them).
  std::string parts[5];
  std::size_t k = 0;
  for (char c : in) {
    if (c == '\0' && k < 4) {
      ++k;
      continue;
    }
    parts[k].push_back(c);
  }
  agentshim::write_file(rd + "/events.ndjson", parts[0]);
  agentshim::write_file(rd + "/session.json", parts[1]);
  agentshim::write_file(rd + "/attestation.intoto.json", parts[2]);
  agentshim::write_file(dir + "/ledger.ndjson", parts[3]);
  agentshim::write_file(rd + "/attestation.sigstore.json", parts[4]);
  (void)agentshim::attest::check_log(rd + "/events.ndjson");
  (void)agentshim::attest::check_ledger(dir + "/ledger.ndjson");
  auto r = agentshim::attest::verify_run(rd, {});
  if (r.verified()) __builtin_trap();  // random bytes can never verify
  (void)agentshim::attest::run_account(rd);
  return 0;
}
