#include "common/dynlib.h"

#include <dlfcn.h>

#include "common/error.h"

namespace agentshim::dynlib {

Library::Library(const char* soname, const char* why) : soname_(soname) {
  handle_ = ::dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!handle_) {
    const char* e = ::dlerror();
    error_ = "dlopen " + soname_ + " (" + why + "): " + (e ? e : "failed");
  }
}

void* Library::lookup(const char* name) {
  if (!handle_) return nullptr;
  void* p = ::dlsym(handle_, name);
  if (!p && error_.empty()) error_ = soname_ + " has no symbol " + name;
  return p;
}

void throw_error(const std::string& msg) {
  throw Error(msg);
}

}  // namespace agentshim::dynlib
