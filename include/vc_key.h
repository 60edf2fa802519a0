/* vc_key.h: key comparison for the engine's hot paths.
 *
 * Keys are compared as unsigned byte strings (memcmp order, the shorter first on a tie).
 * Eight bytes at a time are loaded, byte-swapped to big-endian order and compared as
 * integers, which is the same order as memcmp and avoids a libc call per comparison:
 * composite keys (4-byte table id + user key) of typical sizes differ within the first
 * two words.  The tail of fewer than 8 bytes is compared byte by byte.
 */
#ifndef VC_KEY_H
#define VC_KEY_H

#include <stdint.h>
#include <string.h>

static inline uint64_t vc_load_be64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);          /* unaligned-safe; compiles to one load */
#if defined(__GNUC__) || defined(__clang__)
#  if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#  endif
#else
    v = ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
        ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
        ((uint64_t)p[6] << 8) | (uint64_t)p[7];
#endif
    return v;
}

/* <0, 0, >0 like memcmp over the common length, then the shorter key first. */
static inline int vc_key_cmp(const unsigned char *a, uint32_t alen,
                             const unsigned char *b, uint32_t blen)
{
    uint32_t n = alen < blen ? alen : blen;
    uint32_t i = 0;
    while (i + 8 <= n) {
        uint64_t x = vc_load_be64(a + i), y = vc_load_be64(b + i);
        if (x != y)
            return x < y ? -1 : 1;
        i += 8;
    }
    while (i < n) {
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
        i++;
    }
    return (alen > blen) - (alen < blen);
}

/* Whether two keys are equal (length first: most unequal keys stop there). */
static inline int vc_key_eq(const unsigned char *a, uint32_t alen,
                            const unsigned char *b, uint32_t blen)
{
    return alen == blen && vc_key_cmp(a, alen, b, blen) == 0;
}

#endif
