// The build's version and git commit. The commit lives in one translation
// unit (version.cpp) so that a new commit recompiles that file only.
#pragma once

namespace agentshim {
const char* build_commit();
}  // namespace agentshim
