/*
 * crypto.c - HMAC-SHA256 and standard base64 for signed webhooks, from
 * OpenSSL's libcrypto (HMAC(), EVP_EncodeBlock, EVP_DecodeBlock).  The
 * checks libcrypto leaves to its caller (padding, the alphabet, unpadded
 * input) are made here.  Uses nothing else of the engine.
 */
#include "crypto.h"

#include <limits.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

/* EVP_*Block take an int length: longer input goes in slices of a whole
 * number of groups (3 bytes in, 4 characters out), which encode and decode
 * exactly as the whole would. */
#define ENCODE_SLICE ((size_t)3 << 28)
#define DECODE_SLICE ((size_t)4 << 28)

bool cl__hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                     unsigned char out[CL__SHA256_LEN]) {
  unsigned int out_len = 0;
  /* HMAC() is the one-shot call OpenSSL 3 keeps (the HMAC_CTX API is
   * deprecated); it takes an int key length and wants non-NULL pointers. */
  if (key_len > INT_MAX) return false;
  if (!HMAC(EVP_sha256(), key_len ? key : "", (int)key_len, len ? data : (const void *)"", len, out,
            &out_len))
    return false;
  return out_len == CL__SHA256_LEN;
}

size_t cl__base64_encoded_len(size_t n) { return (n + 2) / 3 * 4; }

void cl__base64_encode(const void *in, size_t n, char *out) {
  const unsigned char *p = in;
  unsigned char *o = (unsigned char *)out;
  *o = '\0';
  while (n > 0) {
    size_t take = n < ENCODE_SLICE ? n : ENCODE_SLICE;
    int w = EVP_EncodeBlock(o, p, (int)take); /* writes the NUL too */
    o += w;
    p += take;
    n -= take;
  }
}

static bool is_b64(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

long cl__base64_decode(const char *in, size_t len, unsigned char *out) {
  size_t pad = 0, body, full, rem, n = 0;
  /* EVP_DecodeBlock skips blanks and counts '=' as zero bytes, so what it
   * is given is checked first: the alphabet only, then at most two '=' that
   * complete the last group. */
  while (pad < len && pad < 3 && in[len - 1 - pad] == '=') pad++;
  if (pad > 2) return -1;
  body = len - pad;
  for (size_t i = 0; i < body; i++)
    if (!is_b64((unsigned char)in[i])) return -1;
  rem = body % 4;
  if (rem == 1 || (pad && (body + pad) % 4 != 0)) return -1;
  if (body / 4 * 3 + 3 > LONG_MAX) return -1;

  full = body - rem;
  for (size_t done = 0; done < full;) {
    size_t take = full - done < DECODE_SLICE ? full - done : DECODE_SLICE;
    int w = EVP_DecodeBlock(out + n, (const unsigned char *)in + done, (int)take);
    if (w < 0) return -1;
    n += (size_t)w;
    done += take;
  }
  if (rem) {
    /* The last 2 or 3 characters (padded or not) hold rem - 1 bytes. */
    unsigned char group[4] = {'=', '=', '=', '='}, bytes[3];
    memcpy(group, in + full, rem);
    if (EVP_DecodeBlock(bytes, group, 4) != 3) return -1;
    memcpy(out + n, bytes, rem - 1);
    n += rem - 1;
  }
  return (long)n;
}
