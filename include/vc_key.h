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

/* Copy a key of n bytes, n known only at run time.  Given a memcpy of a length it can
 * bound (a key already checked against the maximum), GCC expands it into `rep movsq`,
 * whose microcoded start waits for the source: after a cache miss on a caller's key
 * object, the loop around it stops issuing its loads until the miss is served (in
 * put_many's read of a million pairs, 80% of the loop's samples were on that copy).
 * Here keys of up to 32 bytes go by two overlapping moves of 4, 8 or 16 bytes; longer
 * ones in 32-byte steps, the last step overlapping the one before. */
static inline void vc_key_copy(unsigned char *dst, const unsigned char *src, size_t n)
{
    if (n <= 16) {
        if (n >= 8) {
            uint64_t a, b;
            memcpy(&a, src, 8);
            memcpy(&b, src + n - 8, 8);
            memcpy(dst, &a, 8);
            memcpy(dst + n - 8, &b, 8);
        } else if (n >= 4) {
            uint32_t a, b;
            memcpy(&a, src, 4);
            memcpy(&b, src + n - 4, 4);
            memcpy(dst, &a, 4);
            memcpy(dst + n - 4, &b, 4);
        } else {
            size_t i;
            for (i = 0; i < n; i++)
                dst[i] = src[i];
        }
    } else if (n <= 32) {
        unsigned char a[16], b[16];
        memcpy(a, src, 16);
        memcpy(b, src + n - 16, 16);
        memcpy(dst, a, 16);
        memcpy(dst + n - 16, b, 16);
    } else {
        unsigned char t[32];
        size_t i;
        for (i = 0; i + 32 < n; i += 32)
            memcpy(dst + i, src + i, 32);
        memcpy(t, src + n - 32, 32);
        memcpy(dst + n - 32, t, 32);
    }
}

/* Whether two keys are equal (length first: most unequal keys stop there). */
static inline int vc_key_eq(const unsigned char *a, uint32_t alen,
                            const unsigned char *b, uint32_t blen)
{
    return alen == blen && vc_key_cmp(a, alen, b, blen) == 0;
}

#endif
