/* AddressSanitizer annotations of the engine's fiber switches (docs/emulation.md, "Sanitizers").
 *
 * ASan keeps the bounds of the stack a thread runs on; when an exception unwinds a fiber it unpoisons the
 * unwound frames within those bounds.  Unannotated, every fiber runs on a stack ASan does not know, the
 * unpoisoning is skipped, and later frames on a reused fiber stack report false stack-buffer-overflows.
 * Each switch is therefore bracketed: start_switch(destination stack) just before it, finish_switch just
 * after arriving.  Without ASan these are empty. */
#ifndef BNK_EMU_FIBER_ASAN_H
#define BNK_EMU_FIBER_ASAN_H

#include <pthread.h>

#include "asan.h"

#include <cstddef>

#if defined(BNK_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

namespace bnk_emu {
namespace detail {

struct stack_span {
  const void *lo = nullptr;
  size_t size = 0;
};

/* The calling OS thread's own stack: where the scheduler of a worker runs. */
inline stack_span thread_stack() {
  stack_span s;
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void *lo = nullptr;
    size_t size = 0;
    if (pthread_attr_getstack(&attr, &lo, &size) == 0) s = stack_span{lo, size};
    pthread_attr_destroy(&attr);
  }
  return s;
}

/* fake_stack: where ASan saves the leaving context's fake stack (use-after-return detection); null when
 * the leaving context never runs again (a fiber that exits). */
inline void asan_start_switch(void **fake_stack, const stack_span &to) {
#if defined(BNK_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake_stack, to.lo, to.size);
#else
  (void)fake_stack;
  (void)to;
#endif
}

inline void asan_finish_switch(void *fake_stack) {
#if defined(BNK_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)fake_stack;
#endif
}

}  // namespace detail
}  // namespace bnk_emu

#endif
