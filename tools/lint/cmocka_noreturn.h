/* Included into every unit by tools/lint.sh for clang-tidy only: cmocka's
 * _fail() longjmps out of the test and never returns, but cmocka.h does not
 * declare it so, and without this the analyser follows the path past a
 * failed assertion into double frees and NULL dereferences.  Attributes of
 * a function's declarations accumulate, so cmocka.h's own comes after
 * harmlessly.  (This file lies outside the header filter: not checked.) */
void _fail(const char *const file, const int line) __attribute__((noreturn));
