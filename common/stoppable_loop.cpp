#include "common/stoppable_loop.h"

#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <string>

#include "common/error.h"

namespace agentshim {

std::thread start_thread_signals_blocked(std::function<void()> fn) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  std::thread t;
  try {
    t = std::thread(std::move(fn));
  } catch (...) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    throw;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return t;
}

StoppableLoop::StoppableLoop(const char* what) : stop_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!stop_fd_) throw_errno(std::string(what) + ": eventfd");
}

StoppableLoop::~StoppableLoop() {
  stop();
  if (thread_.joinable()) thread_.join();  // started after a concurrent stop(): it sees stop_fd at once
}

void StoppableLoop::start(std::function<void()> body) {
  if (stopped_.load() || started_.exchange(true)) return;
  thread_ = start_thread_signals_blocked(std::move(body));
}

bool StoppableLoop::stop() {
  if (stopped_.exchange(true)) return false;
  uint64_t one = 1;
  if (::write(stop_fd_.get(), &one, sizeof one) < 0) {
    // an eventfd write fails only on overflow, impossible with one write
  }
  if (thread_.joinable()) thread_.join();
  return true;
}

}  // namespace agentshim
