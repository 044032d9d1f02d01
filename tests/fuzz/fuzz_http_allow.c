/*
 * fuzz_http_allow.c - the notifiers' allow list (src/http.c) and the
 * signing primitives' base64 (src/crypto.c), instrumented with the fuzzer.
 * Input: an allow pattern, a newline, a URL.  Whatever the bytes, nothing
 * crashes; a URL the list allows is http or https (tests/test_http.c
 * holds the cases of user info, dots and hosts); base64 decoding inverts encoding, and never writes past its
 * documented bound.
 */
#include "crypto.h"
#include "http.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *buf = malloc(size + 1);
  if (!buf) return 0;
  memcpy(buf, data, size);
  buf[size] = '\0';
  char *nl = memchr(buf, '\n', size);
  const char *url = "";
  if (nl) {
    *nl = '\0';
    url = nl + 1;
  }
  const char *allow[] = {buf, NULL};
  cl__http *h = NULL;
  cl_error err;
  if (strlen(buf) == (nl ? (size_t)(nl - buf) : size) && cl__http_new(allow, &h, &err) == CL_OK &&
      h) {
    if (cl__http_allowed(h, url)) {
      /* libcurl's parse decides (it is also what is fetched, and where
       * user info is refused): it may read "https:/host" as
       * "https://host"; the scheme is http(s) whatever the text. */
      assert(strncasecmp(url, "http:", 5) == 0 || strncasecmp(url, "https:", 6) == 0);
    }
    cl__http_free(h);
  }
  /* base64: decode(encode(x)) == x, over the raw bytes. */
  size_t elen = cl__base64_encoded_len(size);
  char *enc = malloc(elen + 1);
  unsigned char *dec = malloc(elen / 4 * 3 + 3);
  if (enc && dec) {
    cl__base64_encode(data, size, enc);
    assert(strlen(enc) == elen);
    long n = cl__base64_decode(enc, elen, dec);
    assert(n == (long)size && memcmp(dec, data, size) == 0);
  }
  free(enc);
  free(dec);
  /* and arbitrary text decodes or is refused, inside its bound */
  unsigned char *any = malloc(size / 4 * 3 + 3);
  if (any) (void)cl__base64_decode((const char *)data, size, any);
  free(any);
  free(buf);
  return 0;
}
