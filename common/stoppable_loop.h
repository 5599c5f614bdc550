// One thread running a loop until stop(), woken by an eventfd.
//
// The proxy's head loop, the DNS stub and the exec observer each own one:
// the loop polls stop_fd() next to its own descriptors and returns once it
// is readable; stop() makes it readable (it stays readable: every thread
// polling it sees it, so workers can poll the same fd) and joins the thread.
// start() and stop() are each effective once; stop() before start() only
// marks the loop stopped. The thread starts with every signal blocked (the
// supervisor's signals go to its main thread, and a write into a reset
// socket cannot kill the process with SIGPIPE); threads it starts inherit
// that mask. start() and stop() are called by the owner, from one thread.
#pragma once

#include <atomic>
#include <functional>
#include <thread>

#include "common/fd.h"

namespace agentshim {

// Start a thread with every signal blocked (see above).
std::thread start_thread_signals_blocked(std::function<void()> fn);

class StoppableLoop {
 public:
  // what: names the owner in errors ("proxy: eventfd: ...").
  explicit StoppableLoop(const char* what);
  ~StoppableLoop();  // stop()
  StoppableLoop(const StoppableLoop&) = delete;
  StoppableLoop& operator=(const StoppableLoop&) = delete;

  // Run body on the loop's thread (once; later calls do nothing).
  void start(std::function<void()> body);
  // Signal and join (once). True for the call that stopped it.
  bool stop();
  // Readable once stop() was called.
  int stop_fd() const { return stop_fd_.get(); }
  bool stopping() const { return stopped_.load(); }

 private:
  UniqueFd stop_fd_;
  std::thread thread_;
  std::atomic<bool> started_{false}, stopped_{false};
};

}  // namespace agentshim
