#include "common/fd.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"

namespace agentshim {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

FdPair make_pipe(int flags) {
  int p[2];
  if (::pipe2(p, flags) < 0) throw_errno("pipe2");
  return {UniqueFd(p[0]), UniqueFd(p[1])};
}

FdPair make_socketpair(int type) {
  int p[2];
  if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, p) < 0) throw_errno("socketpair");
  return {UniqueFd(p[0]), UniqueFd(p[1])};
}

void send_fds(int sock, const std::string& payload, const int* fds, int nfds) {
  struct msghdr msg {};
  char dummy = 0;
  struct iovec iov {};
  iov.iov_base = payload.empty() ? &dummy : const_cast<char*>(payload.data());
  iov.iov_len = payload.empty() ? 1 : payload.size();
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> cbuf;
  if (nfds > 0) {
    cbuf.resize(CMSG_SPACE(sizeof(int) * nfds));
    msg.msg_control = cbuf.data();
    msg.msg_controllen = cbuf.size();
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do {
    n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno("sendmsg (SCM_RIGHTS)");
}

std::string recv_fds(int sock, std::vector<UniqueFd>& fds, std::size_t max_payload) {
  std::string buf(max_payload, '\0');
  struct msghdr msg {};
  struct iovec iov {};
  iov.iov_base = buf.data();
  iov.iov_len = buf.size();
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 16)];
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno("recvmsg (SCM_RIGHTS)");
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; i++) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.emplace_back(fd);
      }
    }
  }
  buf.resize(static_cast<std::size_t>(n));
  return buf;
}

}  // namespace agentshim
