#include "attest/hash.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <stdexcept>
#include <thread>
#include <utility>

#include "common/error.h"
#include "common/fd.h"
#include "common/parallel.h"
#include "common/util.h"

namespace agentshim::attest {

namespace {
// SHA-256 fetched from the provider once: EVP_sha256() makes every digest
// init look the algorithm up again (a lock and a name search), which a walk
// pays per file, per leaf and per Merkle node.
const EVP_MD* sha256_md() {
  static const EVP_MD* md = [] {
    const EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return m ? m : EVP_sha256();
  }();
  return md;
}
}  // namespace

namespace {
// One context kept per thread for the next Sha256: a walk makes several
// digests per file (content, leaf, store check), each a context to allocate
// and free otherwise.
struct SpareContext {
  EVP_MD_CTX* ctx = nullptr;
  ~SpareContext() { EVP_MD_CTX_free(ctx); }
};
thread_local SpareContext spare;
}  // namespace

Sha256::Sha256() : ctx_(spare.ctx ? std::exchange(spare.ctx, nullptr) : EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), sha256_md(), nullptr) != 1) {
    EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_));
    throw Error("EVP_DigestInit_ex(sha256) failed");
  }
}
Sha256::~Sha256() {
  if (spare.ctx)
    EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_));
  else
    spare.ctx = static_cast<EVP_MD_CTX*>(ctx_);
}
void Sha256::update(const void* data, std::size_t len) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, len);
}
Digest Sha256::finish() {
  Digest d{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), d.data(), &n);
  return d;
}

Digest sha256(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.finish();
}

std::optional<Digest> sha256_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) {
    if (errno == ENOENT) return std::nullopt;
    throw_errno("open " + path);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) throw_errno("fstat " + path);
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  Sha256 h;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("read " + path);
    if (n == 0) break;
    h.update(buf, static_cast<std::size_t>(n));
  }
  return h.finish();
}

std::string hex(const Digest& d) {
  return to_hex(d.data(), d.size());
}

Digest from_hex(std::string_view h) {
  if (h.size() != 64) throw Error("bad sha256 hex (length " + std::to_string(h.size()) + ")");
  Digest d{};
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < 32; i++) {
    const int hi = nib(h[2 * i]), lo = nib(h[2 * i + 1]);
    if ((hi | lo) < 0) throw Error("bad sha256 hex character");
    d[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return d;
}

Digest merkle_leaf_hash(std::string_view data) {
  Sha256 h;
  const unsigned char p = 0x00;
  h.update(&p, 1);
  h.update(data);
  return h.finish();
}

Digest merkle_node_hash(const Digest& left, const Digest& right) {
  Sha256 h;
  const unsigned char p = 0x01;
  h.update(&p, 1);
  h.update(left.data(), left.size());
  h.update(right.data(), right.size());
  return h.finish();
}

namespace {
// Largest power of two strictly less than n (n >= 2).
std::size_t split_point(std::size_t n) {
  std::size_t k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

Digest mth(const Digest* leaves, std::size_t n) {
  if (n == 1) return leaves[0];
  std::size_t k = split_point(n);
  return merkle_node_hash(mth(leaves, k), mth(leaves + k, n - k));
}

void path(const Digest* leaves, std::size_t n, std::size_t m, std::vector<Digest>& out) {
  if (n <= 1) return;
  std::size_t k = split_point(n);
  if (m < k) {
    path(leaves, k, m, out);
    out.push_back(mth(leaves + k, n - k));
  } else {
    path(leaves + k, n - k, m - k, out);
    out.push_back(mth(leaves, k));
  }
}
}  // namespace

namespace {
// MTH of leaves [p, p + n), n >= 1: the iterative bottom-up reduction gives
// the same result as the recursive definition (an odd node is promoted
// unchanged), in O(n) and no recursion. One digest context for every node.
Digest reduce(const Digest* p, std::size_t n) {
  std::vector<Digest> level(p, p + n);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) throw Error("EVP_MD_CTX_new failed");
  const unsigned char prefix = 0x01;
  while (n > 1) {
    std::size_t out = 0;
    for (std::size_t i = 0; i + 1 < n; i += 2) {
      unsigned int len = 0;
      if (EVP_DigestInit_ex(ctx, sha256_md(), nullptr) != 1 || EVP_DigestUpdate(ctx, &prefix, 1) != 1 ||
          EVP_DigestUpdate(ctx, level[i].data(), 32) != 1 ||
          EVP_DigestUpdate(ctx, level[i + 1].data(), 32) != 1 ||
          EVP_DigestFinal_ex(ctx, level[out].data(), &len) != 1) {
        EVP_MD_CTX_free(ctx);
        throw Error("SHA-256 of a Merkle node failed");
      }
      ++out;
    }
    if (n % 2) level[out++] = level[n - 1];
    n = out;
  }
  EVP_MD_CTX_free(ctx);
  return level[0];
}
}  // namespace

Digest merkle_root(const std::vector<Digest>& leaf_hashes) {
  if (leaf_hashes.empty()) return sha256("");
  return reduce(leaf_hashes.data(), leaf_hashes.size());
}

Digest merkle_root(const std::vector<Digest>& leaf_hashes, std::size_t threads) {
  // Blocks of 2^12 leaves, aligned: each one a perfect subtree but the last,
  // which is the MTH of what it holds, and reducing the whole never pairs
  // nodes of two blocks before their roots. So the root is the MTH of the
  // blocks' roots.
  constexpr std::size_t kBlock = std::size_t{1} << 12;
  const std::size_t n = leaf_hashes.size();
  if (threads < 2 || n < 2 * kBlock) return merkle_root(leaf_hashes);
  const std::size_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<Digest> roots(blocks);
  parallel_for(blocks, threads, [&](std::size_t b) {
    roots[b] = reduce(leaf_hashes.data() + b * kBlock, std::min(kBlock, n - b * kBlock));
  });
  return merkle_root(roots);
}

void MerkleFrontier::add(const Digest& leaf_hash) {
  stack_.emplace_back(1, leaf_hash);
  // Two perfect subtrees of equal size are siblings: merge them.
  while (stack_.size() >= 2 && stack_[stack_.size() - 2].first == stack_.back().first) {
    auto right = stack_.back();
    stack_.pop_back();
    auto& left = stack_.back();
    left.second = merkle_node_hash(left.second, right.second);
    left.first *= 2;
  }
  ++size_;
}

Digest MerkleFrontier::root() const {
  if (stack_.empty()) return sha256("");
  // RFC 6962 splits at the largest power of two below n: the largest
  // subtree is the left child of the root, the rest folds to the right.
  Digest acc = stack_.back().second;
  for (std::size_t i = stack_.size() - 1; i-- > 0;) acc = merkle_node_hash(stack_[i].second, acc);
  return acc;
}

std::vector<Digest> merkle_inclusion_proof(const std::vector<Digest>& leaf_hashes, std::size_t index) {
  if (index >= leaf_hashes.size()) throw Error("inclusion proof: index out of range");
  std::vector<Digest> out;
  path(leaf_hashes.data(), leaf_hashes.size(), index, out);
  return out;
}

bool merkle_verify_inclusion(const Digest& leaf_hash, std::size_t index, std::size_t tree_size,
                             const std::vector<Digest>& proof, const Digest& root) {
  if (index >= tree_size) return false;
  std::size_t fn = index, sn = tree_size - 1;
  Digest r = leaf_hash;
  for (const Digest& p : proof) {
    if (sn == 0) return false;
    if ((fn & 1) || fn == sn) {
      r = merkle_node_hash(p, r);
      if (!(fn & 1)) {
        while (fn != 0 && !(fn & 1)) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      r = merkle_node_hash(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return sn == 0 && r == root;
}

}  // namespace agentshim::attest
