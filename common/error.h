// Errors that carry their context: which operation, which path, which errno.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>

namespace agentshim {

// A plain error whose message says what was wrong. Thrown for bad input
// (malformed config, unknown container, bad signal name, ...).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// A failed system call: message is "<context>: <strerror(errno)>", e.g.
// "mount /run/x/rootfs/proc (proc): Operation not permitted".
class SysError : public Error {
 public:
  SysError(const std::string& context, int err);
  int code() const noexcept { return err_; }

 private:
  int err_;
};

// Throws SysError(context, errno). Use right after the failing call.
[[noreturn]] void throw_errno(const std::string& context);
[[noreturn]] void throw_errno(const std::string& context, int err);

}  // namespace agentshim
