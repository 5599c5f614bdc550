// RAII file descriptor.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace agentshim {

class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

// pipe2/socketpair wrappers returning owned ends; throw SysError on failure.
struct FdPair {
  UniqueFd first;
  UniqueFd second;
};
FdPair make_pipe(int flags);
FdPair make_socketpair(int type);

// Send / receive file descriptors over a unix socket (SCM_RIGHTS) together
// with a small payload. recv returns the payload; fds are appended.
void send_fds(int sock, const std::string& payload, const int* fds, int nfds);
std::string recv_fds(int sock, std::vector<UniqueFd>& fds, std::size_t max_payload = 4096);

}  // namespace agentshim
