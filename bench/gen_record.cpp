// Writes a finalized run record with N events (for the verify benchmark).
// usage: gen_record AUDIT_DIR N
#include <cstdlib>
#include <iostream>

#include "attest/record.h"
#include "attest/runstore.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: gen_record AUDIT_DIR N\n";
    return 2;
  }
  using namespace agentshim::attest;
  RecordConfig c;
  c.audit_dir = argv[1];
  c.run_id = new_run_id();
  c.container_id = "bench";
  RunRecord r(c);
  long n = std::atol(argv[2]);
  r.event("run.created", {{"run_id", c.run_id}, {"container_id", "bench"}});
  for (long i = 2; i < n; ++i)
    r.event("process.exec", {{"pid", i}, {"path", "/bin/true"}, {"argv", {"/bin/true", std::to_string(i)}},
                             {"sha256", "3d9f2889d6782537aa5c4d1f1d1f2d0e3f0a0b1c2d3e4f5a6b7c8d9e0f1a2b3c"}});
  r.finalize({{"bench", true}});
  std::cout << RunStore(c.audit_dir).run_dir(c.run_id) << "\n";
  return 0;
}
