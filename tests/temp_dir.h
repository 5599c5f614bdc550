// A temporary directory for a test, removed with everything in it.
#pragma once

#include <stdlib.h>

#include <string>

#include "common/error.h"
#include "common/util.h"

namespace agentshim::testutil {

struct TempDir {
  std::string path;
  explicit TempDir(const std::string& prefix = "agentshim-test") {
    std::string t = "/tmp/" + prefix + "-XXXXXX";
    if (!::mkdtemp(t.data())) throw_errno("mkdtemp " + t);
    path = t;
  }
  ~TempDir() {
    try {
      remove_tree(path);
    } catch (...) {
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace agentshim::testutil
