/*
 * test_crypto.c - the signing primitives of src/crypto.c against published
 * vectors: HMAC-SHA256 (RFC 4231), base64 (RFC 4648), and the signature of
 * the Standard Webhooks specification's own example.  Pure: no database.
 */
#include "support.h"

#include "crypto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex(const unsigned char *p, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) snprintf(out + 2 * i, 3, "%02x", p[i]);
}

/* Asserts the first `hex_len / 2` bytes of HMAC-SHA256(key, data) spell `want`. */
static void hmac_is(const void *key, size_t key_len, const void *data, size_t len,
                    const char *want) {
  unsigned char mac[CL__SHA256_LEN];
  char got[2 * CL__SHA256_LEN + 1];
  assert_true(cl__hmac_sha256(key, key_len, data, len, mac));
  hex(mac, sizeof mac, got);
  if (strncmp(got, want, strlen(want)) != 0) fail_msg("hmac: got %s, want %s", got, want);
}

static void test_crypto__hmac_sha256_matches_rfc4231(void **state) {
  (void)state;
  unsigned char k20[20], k131[131], k25[25], d50[50];

  memset(k20, 0x0b, sizeof k20);
  hmac_is(k20, 20, "Hi There", 8,
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  hmac_is("Jefe", 4, "what do ya want for nothing?", 28,
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  memset(k20, 0xaa, sizeof k20);
  memset(d50, 0xdd, sizeof d50);
  hmac_is(k20, 20, d50, 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  for (int i = 0; i < 25; i++) k25[i] = (unsigned char)(i + 1);
  memset(d50, 0xcd, sizeof d50);
  hmac_is(k25, 25, d50, 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
  /* Test case 5 publishes the first 128 bits only. */
  memset(k20, 0x0c, sizeof k20);
  hmac_is(k20, 20, "Test With Truncation", 20, "a3b6167473100ee06e0c796c2955552b");
  /* Keys longer than the block are hashed first. */
  memset(k131, 0xaa, sizeof k131);
  hmac_is(k131, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54,
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  const char *d7 =
      "This is a test using a larger than block-size key and a larger than block-size data. "
      "The key needs to be hashed before being used by the HMAC algorithm.";
  hmac_is(k131, 131, d7, strlen(d7),
          "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
}

static void test_crypto__hmac_sha256_takes_empty_key_and_data(void **state) {
  (void)state;
  /* HMAC-SHA256("", ""), as Python's hmac and `openssl dgst -hmac ''` give it. */
  hmac_is(NULL, 0, NULL, 0, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
  hmac_is("", 0, "", 0, "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

/* Encodes `in` and decodes the result back, asserting both ways. */
static void round_trip(const char *in, const char *want) {
  size_t n = strlen(in);
  char enc[64];
  unsigned char dec[64];
  assert_int_equal(cl__base64_encoded_len(n), strlen(want));
  cl__base64_encode(in, n, enc);
  assert_string_equal(enc, want);
  long m = cl__base64_decode(want, strlen(want), dec);
  assert_int_equal(m, (long)n);
  assert_memory_equal(dec, in, n);
}

static void test_crypto__base64_matches_rfc4648(void **state) {
  (void)state;
  round_trip("", "");
  round_trip("f", "Zg==");
  round_trip("fo", "Zm8=");
  round_trip("foo", "Zm9v");
  round_trip("foob", "Zm9vYg==");
  round_trip("fooba", "Zm9vYmE=");
  round_trip("foobar", "Zm9vYmFy");
}

static long decode(const char *text, unsigned char *out) {
  return cl__base64_decode(text, strlen(text), out);
}

static void test_crypto__base64_decodes_unpadded_input(void **state) {
  (void)state;
  unsigned char out[16];
  assert_int_equal(decode("Zg", out), 1);
  assert_memory_equal(out, "f", 1);
  assert_int_equal(decode("Zm8", out), 2);
  assert_memory_equal(out, "fo", 2);
  assert_int_equal(decode("Zm9vYg", out), 4);
  assert_memory_equal(out, "foob", 4);
  assert_int_equal(decode("Zm9vYmE", out), 5);
  assert_memory_equal(out, "fooba", 5);
}

static void test_crypto__base64_keeps_binary_bytes(void **state) {
  (void)state;
  unsigned char bytes[256], back[256 + 3];
  char text[sizeof bytes / 3 * 4 + 8];
  for (int i = 0; i < 256; i++) bytes[i] = (unsigned char)(255 - i);
  for (size_t n = 0; n <= sizeof bytes; n += 37) {
    cl__base64_encode(bytes, n, text);
    assert_int_equal(strlen(text), cl__base64_encoded_len(n));
    assert_int_equal(cl__base64_decode(text, strlen(text), back), (long)n);
    assert_memory_equal(back, bytes, n);
  }
  /* '+' and '/' are the last two letters of the standard alphabet. */
  const unsigned char fb[] = {0xfb, 0xff, 0xbf};
  cl__base64_encode(fb, sizeof fb, text);
  assert_string_equal(text, "+/+/");
}

static void test_crypto__base64_refuses_what_is_not_base64(void **state) {
  (void)state;
  unsigned char out[32];
  const char *bad[] = {
      "Z",           /* one character cannot hold a byte */
      "Zm9vY",       /* nor can a group of one */
      "Zg=",         /* padding that does not complete the group */
      "Zg===",       /* too much padding */
      "====",        /* padding alone */
      "=",           /* idem */
      "Zm8=Zm8=",    /* padding inside */
      "Zm 9v",       /* whitespace */
      "Zm9v\n",      /* a newline */
      "Zm9v-_",      /* the URL-safe alphabet */
      "Zm9v*A==",    /* a character outside both */
      "Zm9v\x80\x80" /* bytes above ASCII */
  };
  for (size_t i = 0; i < CT_ARRAY_LEN(bad); i++)
    if (decode(bad[i], out) != -1) fail_msg("decoded \"%s\"", bad[i]);
  /* A NUL inside the given length is not base64 either. */
  assert_int_equal(cl__base64_decode("Zm\0v", 4, out), -1);
}

/* The example of the Standard Webhooks specification: the key is the
 * base64 after "whsec_", the signed content "<id>.<timestamp>.<payload>". */
static void test_crypto__standard_webhooks_example_signature(void **state) {
  (void)state;
  const char *secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
  const char *content = "msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}";
  const char *b64 = secret + strlen("whsec_");
  unsigned char key[64], mac[CL__SHA256_LEN];
  char sig[8 + 2 * CL__SHA256_LEN];
  long key_len = cl__base64_decode(b64, strlen(b64), key);
  assert_int_equal(key_len, 24);
  assert_true(cl__hmac_sha256(key, (size_t)key_len, content, strlen(content), mac));
  snprintf(sig, sizeof sig, "v1,");
  cl__base64_encode(mac, sizeof mac, sig + 3);
  assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crypto__hmac_sha256_matches_rfc4231),
      cmocka_unit_test(test_crypto__hmac_sha256_takes_empty_key_and_data),
      cmocka_unit_test(test_crypto__base64_matches_rfc4648),
      cmocka_unit_test(test_crypto__base64_decodes_unpadded_input),
      cmocka_unit_test(test_crypto__base64_keeps_binary_bytes),
      cmocka_unit_test(test_crypto__base64_refuses_what_is_not_base64),
      cmocka_unit_test(test_crypto__standard_webhooks_example_signature),
  };
  return cmocka_run_group_tests_name("crypto", tests, NULL, NULL);
}
