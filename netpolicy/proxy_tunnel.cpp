#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "netpolicy/proxy_internal.h"

namespace agentshim::net {

namespace proxy_io {
namespace {

// A tunnel's two directions, each on its own thread: blocking recv into a
// buffer, blocking send out of it (measured faster than splice(2) and than a
// single poll loop on loopback: bench/proxy.py, docs/NETWORK.md). The calling
// (worker) thread only watches: the stop eventfd, the idle and total
// deadlines, and a direction ending with an error; it ends the tunnel by
// shutting both sockets down, which wakes a blocked recv/send at once.
// Returns "" when the relay threads could not be started (nothing was read).
std::string tunnel_threads(Relay& rl) {
  if (!rl.spawn) return "";
  // Shared with the direction tasks, which may outlive this frame by the few
  // instructions after their last report.
  struct Shared {
    std::atomic<int64_t> last;  // steady_clock ticks of the last byte moved either way
    std::atomic<bool> aborted{false};
    std::mutex mu;
    std::string end;  // first error
    int done = 0;
    uint64_t bytes[2] = {0, 0};
    UniqueFd ev;  // eventfd: a direction finished
  };
  auto sh = std::make_shared<Shared>();
  sh->ev.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!sh->ev) return "";
  sh->last = Clock::now().time_since_epoch().count();
  // Blocking sockets; a send returns (with what it moved) at least every
  // second, so a slow reader still counts as activity for the idle timeout.
  for (int fd : {rl.client, rl.upstream}) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return "";
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  auto dir = [sh](int src, int dst, int idx, const char* src_name, const char* dst_name) {
    std::string end;
    uint64_t moved = 0;
    try {
      std::unique_ptr<char[]> buf(new char[kTunnelBuf]);  // not zero-filled: untouched pages stay unmapped
      for (;;) {
        ssize_t n = ::recv(src, buf.get(), kTunnelBuf, 0);
        if (n == 0) {
          ::shutdown(dst, SHUT_WR);  // half-close travels on
          break;
        }
        if (n < 0) {
          if (errno == EINTR) continue;
          end = src_name;
          break;
        }
        sh->last = Clock::now().time_since_epoch().count();
        std::size_t off = 0, len = static_cast<std::size_t>(n);
        while (off < len) {
          ssize_t k = ::send(dst, buf.get() + off, len - off, MSG_NOSIGNAL);
          if (k > 0) {
            off += static_cast<std::size_t>(k);
            moved += static_cast<uint64_t>(k);
            sh->last = Clock::now().time_since_epoch().count();
          } else if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (sh->aborted.load()) break;
          } else {
            end = dst_name;
            break;
          }
        }
        if (!end.empty() || off < len) break;
      }
    } catch (const std::exception& e) {
      end = std::string("error: ") + e.what();
    }
    std::lock_guard lk(sh->mu);
    if (!end.empty() && sh->end.empty()) sh->end = end;
    sh->bytes[idx] = moved;
    ++sh->done;
    uint64_t one = 1;
    if (::write(sh->ev.get(), &one, sizeof one) < 0) {
      // cannot fail: at most two writes
    }
  };
  int client = rl.client, upstream = rl.upstream;
  int started = 0;
  if (rl.spawn([dir, client, upstream] { dir(client, upstream, 0, "client-closed", "upstream-closed"); }))
    ++started;
  if (started == 1 &&
      rl.spawn([dir, client, upstream] { dir(upstream, client, 1, "upstream-closed", "client-closed"); }))
    ++started;
  std::string end;
  if (started < 2) {
    if (started == 0) {
      for (int fd : {rl.client, rl.upstream}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
      return "";  // nothing moved yet: the caller relays on its own
    }
    end = "error: cannot start a relay thread";  // one direction alone cannot be watched: stop it
  }
  while (end.empty()) {
    {
      std::lock_guard lk(sh->mu);
      if (sh->done == 2) {
        end = sh->end.empty() ? "closed" : sh->end;
        break;
      }
      if (!sh->end.empty()) {
        end = sh->end;
        break;
      }
    }
    auto last = Clock::time_point(Clock::duration(sh->last.load()));
    Clock::time_point dl = last + std::chrono::milliseconds(rl.limits.idle_timeout_ms);
    bool total_first = false;
    if (rl.limits.total_timeout_ms > 0) {
      auto t = rl.start + std::chrono::milliseconds(rl.limits.total_timeout_ms);
      if (t < dl) {
        dl = t;
        total_first = true;
      }
    }
    if (Clock::now() >= dl) {
      end = total_first ? "total-timeout" : "idle-timeout";
      break;
    }
    pollfd p[2] = {{sh->ev.get(), POLLIN, 0}, {rl.stop_fd, POLLIN, 0}};
    int r = ::poll(p, 2, ms_until(dl));
    if (r > 0 && p[1].revents) {
      end = "stopped";
      break;
    }
    if (p[0].revents) {
      uint64_t v;
      if (::read(sh->ev.get(), &v, sizeof v) < 0) {
        // EAGAIN: already consumed
      }
    }
  }
  // Whatever ended the tunnel ends both directions now; wait for them (they
  // return at once: their sockets are shut down).
  sh->aborted = true;
  ::shutdown(rl.client, SHUT_RDWR);
  ::shutdown(rl.upstream, SHUT_RDWR);
  for (;;) {
    {
      std::lock_guard lk(sh->mu);
      if (sh->done == started) break;
    }
    pollfd p{sh->ev.get(), POLLIN, 0};
    ::poll(&p, 1, 100);
    uint64_t v;
    if (::read(sh->ev.get(), &v, sizeof v) < 0) {
      // EAGAIN: nothing new
    }
  }
  rl.up += sh->bytes[0];
  rl.down += sh->bytes[1];
  return end;
}

}  // namespace

std::string tunnel(Relay& rl) {
  std::string end = tunnel_threads(rl);
  // No thread to relay with (the process is out of threads): the tunnel ends
  // before any byte moved, and the event says why.
  return end.empty() ? "error: cannot start a relay thread" : end;
}

}  // namespace proxy_io

using namespace proxy_io;

// CONNECT: connect, answer 200, relay both directions until the end; one event.
void Proxy::tunnel_session(Conn& c) {
  if (intercepts(c.host, c.port)) {
    intercept_session(c);
    return;
  }
  int stop = loop_.stop_fd();
  if (!check_request_rules(c)) return;
  UniqueFd up;
  if (!connect_upstream(c, up)) return;
  set_nodelay(c.fd.get());
  Relay rl{c.fd.get(), up.get(), stop, limits_, c.conn_start, Clock::now()};
  rl.spawn = [this](std::function<void()> fn) { return run_task(std::move(fn)); };
  try {
    c.status = 200;
    static const std::string ok = "HTTP/1.1 200 Connection established\r\n\r\n";
    auto dl = Clock::now() + std::chrono::milliseconds(limits_.idle_timeout_ms);
    if (!send_all(c.fd.get(), ok, stop, dl)) {
      c.end = "client-closed";
    } else if (!c.leftover.empty() && !send_all(up.get(), c.leftover, stop, dl)) {
      c.end = "upstream-closed";
    } else {
      rl.up += c.leftover.size();
      c.end = tunnel(rl);
    }
  } catch (const std::exception& e) {
    c.end = std::string("error: ") + e.what();
    c.error = true;
  }
  if (c.end.rfind("error", 0) == 0) c.error = true;
  c.up = rl.up;
  c.down = rl.down;
  emit(c);  // before the client's socket is closed
}

}  // namespace agentshim::net
