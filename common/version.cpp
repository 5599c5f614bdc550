#include "common/version.h"

namespace agentshim {
const char* build_commit() {
  return AGENTSHIM_COMMIT;
}
}  // namespace agentshim
