/* Compiled with -std=c11 -pedantic -Werror: the public header is plain C. */
#include "bnk.h"

unsigned bnk_header_c11_check(void) { return bnk_version() + (unsigned)BNK_ERROR_INTERNAL + (unsigned)BNK_NHWC; }
