/*
 * crypto.h - the primitives a signed webhook needs, from OpenSSL's
 * libcrypto: HMAC-SHA256 and standard base64 (RFC 4648, with padding).
 * Lua-free; the policy state exposes them as cl.crypto.*.
 */
#ifndef CL_CRYPTO_H
#define CL_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

#define CL__SHA256_LEN 32

/* out gets the 32-byte MAC of data under key; false only if libcrypto fails. */
bool cl__hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                     unsigned char out[CL__SHA256_LEN]);
/* Encoded length of n bytes, without the NUL. */
size_t cl__base64_encoded_len(size_t n);
/* Writes the encoding of n bytes and a NUL to out (cl__base64_encoded_len(n) + 1 bytes). */
void cl__base64_encode(const void *in, size_t n, char *out);
/*
 * Decodes `len` characters of standard base64 (with its '=' padding or
 * without it: both are accepted; no whitespace, no URL-safe alphabet, no
 * '=' but at the end) into out, which has room for
 * len / 4 * 3 + 3 bytes.  Returns the decoded length, or -1 when the text
 * is not base64.
 */
long cl__base64_decode(const char *in, size_t len, unsigned char *out);

#endif
