// Compiled with -pedantic -Werror: the public header is usable from C++ with C linkage.
#include "bnk.h"

unsigned bnk_header_cxx_check() { return bnk_version() + static_cast<unsigned>(BNK_ERROR_INTERNAL); }
