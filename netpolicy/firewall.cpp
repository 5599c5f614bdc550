#include "netpolicy/firewall.h"

#include <nftables/libnftables.h>
#include <sys/stat.h>

#include <system_error>

#include "common/dynlib.h"
#include "common/error.h"
#include "netpolicy/netns.h"

namespace agentshim::net {
namespace {

// libnftables, loaded at first use (common/dynlib.h).
struct Nft {
  decltype(&nft_ctx_new) ctx_new = nullptr;
  decltype(&nft_ctx_free) ctx_free = nullptr;
  decltype(&nft_ctx_buffer_output) buffer_output = nullptr;
  decltype(&nft_ctx_buffer_error) buffer_error = nullptr;
  decltype(&nft_ctx_get_output_buffer) output = nullptr;
  decltype(&nft_ctx_get_error_buffer) error = nullptr;
  decltype(&nft_run_cmd_from_buffer) run = nullptr;
};

void fill(dynlib::Library& lib, Nft& n) {
  lib.get(n.ctx_new, "nft_ctx_new");
  lib.get(n.ctx_free, "nft_ctx_free");
  lib.get(n.buffer_output, "nft_ctx_buffer_output");
  lib.get(n.buffer_error, "nft_ctx_buffer_error");
  lib.get(n.output, "nft_ctx_get_output_buffer");
  lib.get(n.error, "nft_ctx_get_error_buffer");
  lib.get(n.run, "nft_run_cmd_from_buffer");
}

const Nft& nft() {
  return dynlib::load_once<Nft>("libnftables.so.1", "Debian package libnftables1", fill);
}

}  // namespace

struct Installed::Ctx {
  const Nft& n;
  nft_ctx* c;
  explicit Ctx(const Nft& lib) : n(lib), c(lib.ctx_new(NFT_CTX_DEFAULT)) {
    if (!c) throw Error("nft_ctx_new failed");
    n.buffer_output(c);
    n.buffer_error(c);
  }
  ~Ctx() { n.ctx_free(c); }
  Ctx(const Ctx&) = delete;
  Ctx& operator=(const Ctx&) = delete;
  // Runs `cmd`; returns the output buffer. Throws with nft's error text.
  std::string run(const std::string& cmd, const std::string& what) {
    if (n.run(c, cmd.c_str()) != 0) {
      const char* e = n.error(c);
      throw Error("nftables: " + what + ": " + (e && *e ? std::string(e) : std::string("failed")));
    }
    const char* o = n.output(c);
    return o ? o : "";
  }
};

Installed::Installed() = default;
Installed::~Installed() {
  if (closer_.joinable()) closer_.join();
}
Installed::Installed(Installed&&) noexcept = default;
Installed& Installed::operator=(Installed&& o) noexcept {
  if (this != &o) {
    if (closer_.joinable()) closer_.join();
    closer_ = std::move(o.closer_);
  }
  return *this;
}

const std::string& confinement_ruleset() {
  // policy drop on output; what passes, in order: loopback (the proxy, the
  // DNS stub, the pod's other containers); replies to connections that came
  // in (and their ICMP errors); IPv6 neighbour discovery, without which no
  // IPv6 reply reaches the peer. Everything else is refused at once with
  // ICMP administratively prohibited (the caller sees EHOSTUNREACH, never a
  // reset that would look like the destination answering), so clients fail
  // fast.
  static const std::string rules =
      "table inet agentshim {\n"
      "\tchain output {\n"
      "\t\ttype filter hook output priority filter; policy drop;\n"
      "\t\toifname \"lo\" accept\n"
      "\t\tct state established,related accept\n"
      "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept\n"
      "\t\treject with icmpx admin-prohibited\n"
      "\t}\n"
      "}\n";
  return rules;
}

Installed confine(int nsfd) {
  // Never the runtime's own namespace (the host's): the policy refuses a
  // config that shares it, and this keeps a misjudged path from cutting
  // the host off.
  struct stat ns {
  }, own{};
  if (::fstat(nsfd, &ns) < 0) throw_errno("fstat the container's network namespace");
  if (::stat("/proc/self/ns/net", &own) < 0) throw_errno("stat /proc/self/ns/net");
  if (ns.st_dev == own.st_dev && ns.st_ino == own.st_ino)
    throw Error(
        "refusing to confine the runtime's own network namespace (the container would share the host's)");
  const Nft& lib = nft();
  Installed out;
  in_netns(nsfd, [&] {
    auto ctx = std::make_unique<Installed::Ctx>(lib);
    // Atomically: an older table of ours goes, the new one comes (one
    // transaction; a half-installed ruleset is never live).
    ctx->run("table inet agentshim\ndelete table inet agentshim\n" + confinement_ruleset(),
             "installing the outbound confinement in the container's network namespace");
    try {
      out.closer_ = std::thread([c = std::move(ctx)]() mutable { c.reset(); });  // (Installed)
    } catch (const std::system_error&) {
      // No thread to be had: the socket was closed here, with the closure
      // that held it (the grace period waited for, the rules installed).
    }
  });
  return out;
}

std::string list_ruleset(int nsfd) {
  const Nft& lib = nft();
  std::string out;
  in_netns(nsfd, [&] {
    Installed::Ctx ctx(lib);
    out = ctx.run("list ruleset", "listing the container's network namespace's ruleset");
  });
  return out;
}

}  // namespace agentshim::net
