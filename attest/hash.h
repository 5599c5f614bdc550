// SHA-256 (OpenSSL EVP) and the RFC 6962 Merkle tree hash used by every
// record agentshim writes. See docs/FORMATS.md.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace agentshim::attest {

using Digest = std::array<unsigned char, 32>;

Digest sha256(std::string_view data);
std::string hex(const Digest& d);
// Parse 64 lowercase/uppercase hex chars; throws agentshim::Error otherwise.
Digest from_hex(std::string_view h);

// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, std::size_t len);
  void update(std::string_view s) { update(s.data(), s.size()); }
  Digest finish();

 private:
  void* ctx_;
};

// SHA-256 of a regular file's bytes, read in chunks; nullopt when it does
// not exist; a symlink, a non-regular file or an I/O error throws
// agentshim::Error naming the path.
std::optional<Digest> sha256_file(const std::string& path);

// RFC 6962 section 2.1: leaf hash = SHA-256(0x00 || data),
// node hash = SHA-256(0x01 || left || right), empty tree = SHA-256("").
Digest merkle_leaf_hash(std::string_view data);
Digest merkle_node_hash(const Digest& left, const Digest& right);
// Merkle Tree Hash over already-computed leaf hashes (MTH of RFC 6962).
Digest merkle_root(const std::vector<Digest>& leaf_hashes);
// The same, on `threads` threads (this one among them) for a large tree.
Digest merkle_root(const std::vector<Digest>& leaf_hashes, std::size_t threads);
// The same root, built one leaf at a time in O(log n) memory: the roots of
// the perfect subtrees that make up the leaves so far (the binary digits of
// the count), largest first. The event log keeps one of these instead of
// every leaf, so a run's recorder memory does not grow with its events.
class MerkleFrontier {
 public:
  void add(const Digest& leaf_hash);
  std::uint64_t size() const { return size_; }
  // merkle_root() of every leaf added so far (SHA-256 of "" when none).
  Digest root() const;

 private:
  std::vector<std::pair<std::uint64_t, Digest>> stack_;  // (leaf count, subtree root), sizes decreasing
  std::uint64_t size_ = 0;
};
// Audit path (inclusion proof) for leaf `index` in a tree of leaf_hashes.size() leaves.
std::vector<Digest> merkle_inclusion_proof(const std::vector<Digest>& leaf_hashes, std::size_t index);
// RFC 9162 section 2.1.3.2 verification of an inclusion proof.
bool merkle_verify_inclusion(const Digest& leaf_hash, std::size_t index, std::size_t tree_size,
                             const std::vector<Digest>& proof, const Digest& root);

}  // namespace agentshim::attest
