/* vc_huge.h: large zeroed mappings on 2 MiB boundaries, advised for transparent huge
 * pages (the page cache's arrays), and mappings backed at once in the kernel's default
 * pages (memtable arena chunks, vc_pages_alloc_backed).
 *
 * The page cache's arrays (page frames, hint blocks, frame descriptors, page table) are
 * read at random over up to cache_mb.  With 4 KiB pages nearly every such read also
 * misses the TLB and walks the page tables; one 2 MiB page covers 512 of them.  Memory
 * is still touched lazily (a huge page is faulted in, zeroed, on first touch), so an
 * idle cache costs address space only.  The advice is a hint: where the kernel has no
 * transparent huge pages the mapping simply has 4 KiB pages.  Allocations under 2 MiB
 * get plain pages.
 *
 * Under AddressSanitizer the memory comes from the heap instead (still zeroed and
 * aligned), so that ASan sees its bounds: a read past the last frame is reported.
 */
#ifndef VC_HUGE_H
#define VC_HUGE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define VC_HUGE_PAGE ((size_t)2 << 20)

/* the length a mapping of n bytes occupies (what vc_huge_free unmaps) */
static inline size_t vc_huge_len(size_t n)
{
    if (n < VC_HUGE_PAGE)
        return (n + 4095) & ~(size_t)4095;
    return (n + VC_HUGE_PAGE - 1) & ~(VC_HUGE_PAGE - 1);
}

/* n zeroed bytes, 2 MiB aligned when n >= 2 MiB (else page aligned); NULL when out of
 * memory. */
static inline void *vc_huge_alloc(size_t n)
{
    size_t len = vc_huge_len(n), lead;
    unsigned char *m;
    if (n == 0)
        return NULL;
#if defined(__SANITIZE_ADDRESS__)
    {
        void *p = NULL;
        if (posix_memalign(&p, len < VC_HUGE_PAGE ? 4096 : VC_HUGE_PAGE, n) != 0)
            return NULL;
#ifdef MADV_HUGEPAGE
        if (len >= VC_HUGE_PAGE)
            (void)madvise(p, n & ~(VC_HUGE_PAGE - 1), MADV_HUGEPAGE);
#endif
        memset(p, 0, n);
        return p;
    }
#endif
    if (len < VC_HUGE_PAGE) {
        m = (unsigned char *)mmap(NULL, len, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return m == (unsigned char *)MAP_FAILED ? NULL : m;
    }
    /* map one huge page more than needed and trim both ends to a 2 MiB boundary */
    m = (unsigned char *)mmap(NULL, len + VC_HUGE_PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == (unsigned char *)MAP_FAILED)
        return NULL;
    lead = (VC_HUGE_PAGE - ((uintptr_t)m & (VC_HUGE_PAGE - 1))) & (VC_HUGE_PAGE - 1);
    if (lead)
        munmap(m, lead);
    munmap(m + lead + len, VC_HUGE_PAGE - lead);
    m += lead;
#ifdef MADV_HUGEPAGE
    (void)madvise(m, len, MADV_HUGEPAGE);
#endif
    return m;
}

/* n zeroed bytes (n a multiple of 4 KiB), page aligned, backed now (MAP_POPULATE): one
 * system call instead of a fault per page.  No huge-page advice: where guest memory is
 * backed lazily by a hypervisor, a fresh huge page can cost ten times what 512 small
 * ones do (benchmarks/fresh_memory.py); the kernel's own THP policy still applies.
 * Freed with vc_huge_free (n >= 2 MiB must then be a multiple of 2 MiB). */
static inline void *vc_pages_alloc_backed(size_t n)
{
    void *m;
#if defined(__SANITIZE_ADDRESS__)
    m = NULL;
    if (posix_memalign(&m, 4096, n) != 0)
        return NULL;
    memset(m, 0, n);
    return m;
#else
    m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
             -1, 0);
    return m == MAP_FAILED ? NULL : m;
#endif
}

static inline void vc_huge_free(void *m, size_t n)
{
#if defined(__SANITIZE_ADDRESS__)
    (void)n;
    free(m);
#else
    if (m != NULL)
        munmap(m, vc_huge_len(n));
#endif
}

#endif
