// A shared library loaded with dlopen the first time a feature needs it, so
// that no other command maps it (and its dependencies) at exec: libnftables
// for the confined network (netpolicy/firewall.cpp), libsystemd for the
// systemd cgroup driver (sandbox/cgroups/systemd.cpp). Each symbol is
// declared through the library's own header (decltype of the prototype), so
// a mismatch does not compile.
#pragma once

#include <mutex>
#include <string>
#include <type_traits>

namespace agentshim::dynlib {

// dlopen(soname); on failure the error names the library and `why` (the
// feature or Debian package that needs it). Never closed.
class Library {
 public:
  Library(const char* soname, const char* why);
  // Sets fn to the symbol `name`, or records the first missing one.
  template <typename F>
  void get(F& fn, const char* name) {
    fn = reinterpret_cast<F>(lookup(name));
  }
  // "" when the library and every symbol asked for were found.
  const std::string& error() const { return error_; }

 private:
  void* lookup(const char* name);
  void* handle_ = nullptr;
  std::string soname_, error_;
};

[[noreturn]] void throw_error(const std::string& msg);

// The table T filled once per process by fill(Library&, T&); throws Error
// with the loader's message on every call when anything was missing.
template <typename T>
const T& load_once(const char* soname, const char* why, void (*fill)(Library&, T&)) {
  static T table;
  static std::string failed;
  static std::once_flag once;
  std::call_once(once, [&] {
    Library lib(soname, why);
    if (lib.error().empty()) fill(lib, table);
    failed = lib.error();
  });
  if (!failed.empty()) throw_error(failed);
  return table;
}

}  // namespace agentshim::dynlib
