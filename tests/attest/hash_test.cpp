#include "attest/hash.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

using namespace agentshim::attest;

namespace {
std::vector<Digest> leaves(std::size_t n) {
  // RFC 6962 / certificate-transparency test inputs.
  static const char* inputs[] = {"",
                                 "\x00",
                                 "\x10",
                                 "\x20\x21",
                                 "\x30\x31",
                                 "\x40\x41\x42\x43",
                                 "\x50\x51\x52\x53\x54\x55\x56\x57",
                                 "\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"};
  static const std::size_t lens[] = {0, 1, 1, 2, 2, 4, 8, 16};
  std::vector<Digest> out;
  for (std::size_t i = 0; i < n; i++) out.push_back(merkle_leaf_hash(std::string_view(inputs[i], lens[i])));
  return out;
}
}  // namespace

TEST(Merkle, Rfc6962Vectors) {
  EXPECT_EQ(hex(merkle_root({})), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex(merkle_root(leaves(1))), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
  EXPECT_EQ(hex(merkle_root(leaves(2))), "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125");
  EXPECT_EQ(hex(merkle_root(leaves(3))), "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77");
  EXPECT_EQ(hex(merkle_root(leaves(4))), "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7");
  EXPECT_EQ(hex(merkle_root(leaves(5))), "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4");
  EXPECT_EQ(hex(merkle_root(leaves(6))), "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef");
  EXPECT_EQ(hex(merkle_root(leaves(7))), "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c");
  EXPECT_EQ(hex(merkle_root(leaves(8))), "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328");
}

TEST(Merkle, InclusionProofsVerifyAndRejectTampering) {
  for (std::size_t n = 1; n <= 8; n++) {
    auto l = leaves(n);
    Digest root = merkle_root(l);
    for (std::size_t i = 0; i < n; i++) {
      auto proof = merkle_inclusion_proof(l, i);
      EXPECT_TRUE(merkle_verify_inclusion(l[i], i, n, proof, root)) << n << " " << i;
      Digest bad = l[i];
      bad[0] ^= 1;
      EXPECT_FALSE(merkle_verify_inclusion(bad, i, n, proof, root));
      if (n > 1) {
        EXPECT_FALSE(merkle_verify_inclusion(l[i], (i + 1) % n, n, proof, root));
      }
    }
  }
}

TEST(Merkle, FrontierEqualsTheWholeTreeAtEverySize) {
  std::vector<Digest> all;
  MerkleFrontier f;
  EXPECT_EQ(f.root(), merkle_root({}));
  for (std::size_t i = 0; i < 300; i++) {
    Digest d = merkle_leaf_hash(std::to_string(i));
    all.push_back(d);
    f.add(d);
    ASSERT_EQ(f.size(), all.size());
    ASSERT_EQ(hex(f.root()), hex(merkle_root(all))) << "after " << all.size() << " leaves";
  }
  // A copy taken before more leaves (the event log's rollback) keeps its root.
  MerkleFrontier before = f;
  f.add(merkle_leaf_hash("x"));
  EXPECT_EQ(before.root(), merkle_root(all));
  EXPECT_NE(f.root(), before.root());
}

TEST(Merkle, TheRootOnSeveralThreadsIsTheSameAtEverySize) {
  std::vector<Digest> all;
  MerkleFrontier f;  // (built another way: the reference for sizes beyond the vectors)
  std::map<std::size_t, Digest> frontier;
  const std::vector<std::size_t> sizes = {0,    1,    2,     4095,  4096,  4097,  8191,
                                          8192, 8193, 12288, 12289, 16384, 16385, 20000};
  for (std::size_t i = 0; i < 20000; i++) {
    if (std::find(sizes.begin(), sizes.end(), i) != sizes.end()) frontier[i] = f.root();
    all.push_back(merkle_leaf_hash(std::to_string(i)));
    f.add(all.back());
  }
  frontier[20000] = f.root();
  for (std::size_t n : sizes) {
    std::vector<Digest> l(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n));
    const Digest want = merkle_root(l);
    EXPECT_EQ(hex(want), hex(frontier[n])) << n;
    for (std::size_t threads : {1, 2, 3, 8})
      EXPECT_EQ(hex(merkle_root(l, threads)), hex(want)) << n << " " << threads;
  }
}
