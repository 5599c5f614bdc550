#include "common/base64.h"

#include <gtest/gtest.h>

#include "common/error.h"

using namespace agentshim;

// RFC 4648 section 10.
TEST(Base64, Rfc4648Vectors) {
  const std::pair<const char*, const char*> v[] = {{"", ""},
                                                   {"f", "Zg=="},
                                                   {"fo", "Zm8="},
                                                   {"foo", "Zm9v"},
                                                   {"foob", "Zm9vYg=="},
                                                   {"fooba", "Zm9vYmE="},
                                                   {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, enc] : v) {
    EXPECT_EQ(base64::encode(plain), enc);
    EXPECT_EQ(base64::decode(enc), plain);
    EXPECT_EQ(base64::decode_lenient(enc), plain);
  }
}

TEST(Base64, EveryByteRoundTrips) {
  std::string all;
  for (int i = 0; i < 256; i++) all += static_cast<char>(i);
  for (std::size_t n = 0; n <= all.size(); n += 37) {
    const std::string part = all.substr(0, n);
    EXPECT_EQ(base64::decode(base64::encode(part)), part);
  }
  EXPECT_EQ(base64::encode("\xff\xfe"), "//4=");
  EXPECT_EQ(base64::encode("\xfb\xff"), "+/8=");
}

TEST(Base64, StrictRefusesWithAReason) {
  auto why = [](const char* s) {
    try {
      (void)base64::decode(s);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(why("Zm9"), "base64: length is not a multiple of 4");
  EXPECT_EQ(why("Zm9*"), "base64: invalid character");
  EXPECT_EQ(why("Zm 9"), "base64: invalid character");
  EXPECT_EQ(why("Z=9v"), "base64: invalid input");
  EXPECT_EQ(why("Z==="), "base64: invalid input");
  EXPECT_EQ(why("Zh=="), "base64: non-canonical encoding");  // unused bits set
}

TEST(Base64, LenientTakesWhatClientsSend) {
  EXPECT_EQ(base64::decode_lenient("Zm9vYg"), "foob");  // no padding
  EXPECT_EQ(base64::decode_lenient("dTpwdw=="), "u:pw");
  EXPECT_EQ(base64::decode_lenient("Zh=="), "f");  // unused bits ignored
  EXPECT_FALSE(base64::decode_lenient("Zm9v!"));
  EXPECT_FALSE(base64::decode_lenient("Zm=9v"));
}
