#include "common/error.h"

#include <cstring>

namespace agentshim {

SysError::SysError(const std::string& context, int err)
    : Error(context + ": " + std::strerror(err)), err_(err) {}

void throw_errno(const std::string& context) {
  throw SysError(context, errno);
}
void throw_errno(const std::string& context, int err) {
  throw SysError(context, err);
}

}  // namespace agentshim
