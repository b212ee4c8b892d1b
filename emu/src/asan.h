/* Whether this translation unit is built with AddressSanitizer. g++ says so with __SANITIZE_ADDRESS__; clang
 * (which builds the fuzzer, ./dev fuzz) only through __has_feature(address_sanitizer). */
#ifndef BNK_EMU_ASAN_H
#define BNK_EMU_ASAN_H

#if defined(__SANITIZE_ADDRESS__)
#define BNK_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BNK_EMU_ASAN 1
#endif
#endif

#endif
