/* vc_poison.h: mark memory the engine keeps but must not read (a pruned version on a
 * memtable free list) as poisoned under AddressSanitizer, so a reader that still held
 * a pointer to it is reported.  No-ops in normal builds. */
#ifndef VC_POISON_H
#define VC_POISON_H

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define VC_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define VC_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define VC_POISON(p, n) ((void)(p), (void)(n))
#define VC_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#endif
