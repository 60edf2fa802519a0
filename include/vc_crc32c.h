/* vc_crc32c.h: CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
 *
 * zlib-style chaining: vc_crc32c(0, buf, len) is the CRC of buf, and
 *   vc_crc32c(vc_crc32c(0, a, n), b, m) == vc_crc32c(0, a||b, n + m).
 * Check value: vc_crc32c(0, "123456789", 9) == 0xE3069283.
 *
 * The x86 hardware path (SSE4.2 crc32 instruction) is compiled with
 * __attribute__((target("sse4.2"))), so the package needs no -msse4.2 and runs on
 * CPUs without it; the choice is made once at run time with __builtin_cpu_supports.
 * Everywhere else a slicing-by-8 table is used, built on first use.
 */
#ifndef VC_CRC32C_H
#define VC_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define VC_CRC32C_X86 1
#endif

#define VC_CRC32C_POLY 0x82F63B78u

/* Bit-at-a-time reference; only used if the table cannot be allocated. */
static inline uint32_t vc_crc32c_bitwise_(uint32_t crc, const unsigned char *p, size_t len)
{
    int k;
    while (len--) {
        crc ^= *p++;
        for (k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (VC_CRC32C_POLY & (0u - (crc & 1u)));
    }
    return crc;
}

/* The slicing-by-8 table, published once with a compare-and-swap.
 * Acquire on load pairs with the release of the winning CAS, so a reader that sees the
 * pointer also sees the table contents; a thread that loses the race frees its copy. */
static uint32_t (*vc_crc32c_table_)[256] = NULL;

static inline const uint32_t (*vc_crc32c_table(void))[256]
{
    uint32_t (*t)[256] = __atomic_load_n(&vc_crc32c_table_, __ATOMIC_ACQUIRE);
    uint32_t (*expected)[256] = NULL;
    uint32_t c;
    int n, k;
    if (t != NULL)
        return (const uint32_t (*)[256])t;
    t = (uint32_t (*)[256])malloc(8 * 256 * sizeof(uint32_t));
    if (t == NULL)
        return NULL;
    for (n = 0; n < 256; n++) {
        c = (uint32_t)n;
        for (k = 0; k < 8; k++)
            c = (c >> 1) ^ (VC_CRC32C_POLY & (0u - (c & 1u)));
        t[0][n] = c;
    }
    for (n = 0; n < 256; n++) {
        c = t[0][n];
        for (k = 1; k < 8; k++) {
            c = t[0][c & 0xFF] ^ (c >> 8);
            t[k][n] = c;
        }
    }
    if (!__atomic_compare_exchange_n(&vc_crc32c_table_, &expected, t, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        free(t);
        t = expected;   /* the winner's table */
    }
    return (const uint32_t (*)[256])t;
}

/* Portable path: slicing-by-8.  Public so tests can compare it with the hardware path. */
static inline uint32_t vc_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    const uint32_t (*t)[256] = vc_crc32c_table();
    uint32_t lo, hi;
    crc = ~crc;
    if (t == NULL)
        return ~vc_crc32c_bitwise_(crc, p, len);
    while (len && ((uintptr_t)p & 7)) {
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        /* byte-wise loads keep this endian-neutral */
        lo = crc ^ ((uint32_t)p[0] | ((uint32_t)p[1] << 8) |
                    ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
        hi = (uint32_t)p[4] | ((uint32_t)p[5] << 8) |
             ((uint32_t)p[6] << 16) | ((uint32_t)p[7] << 24);
        crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^
              t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
              t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^
              t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

#ifdef VC_CRC32C_X86
__attribute__((target("sse4.2")))
static inline uint32_t vc_crc32c_sse42_(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = _mm_crc32_u8(crc, *p++);
        len--;
    }
#if defined(__x86_64__)
    {
        uint64_t c64 = crc, word;
        while (len >= 8) {
            memcpy(&word, p, 8);
            c64 = _mm_crc32_u64(c64, word);
            p += 8;
            len -= 8;
        }
        crc = (uint32_t)c64;
    }
#else
    {
        uint32_t word;
        while (len >= 4) {
            memcpy(&word, p, 4);
            crc = _mm_crc32_u32(crc, word);
            p += 4;
            len -= 4;
        }
    }
#endif
    while (len--)
        crc = _mm_crc32_u8(crc, *p++);
    return ~crc;
}
#endif

/* 1 when the SSE4.2 instruction is used.  The probe result is cached; a race between
 * two first callers just stores the same value twice (relaxed is enough: it is an int
 * that every thread computes identically). */
static int vc_crc32c_hw_state_ = -1;

static inline int vc_crc32c_hw(void)
{
    int s = __atomic_load_n(&vc_crc32c_hw_state_, __ATOMIC_RELAXED);
    if (s < 0) {
#ifdef VC_CRC32C_X86
        __builtin_cpu_init();
        s = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
        s = 0;
#endif
        __atomic_store_n(&vc_crc32c_hw_state_, s, __ATOMIC_RELAXED);
    }
    return s;
}

static inline uint32_t vc_crc32c(uint32_t crc, const void *buf, size_t len)
{
#ifdef VC_CRC32C_X86
    if (vc_crc32c_hw())
        return vc_crc32c_sse42_(crc, buf, len);
#endif
    return vc_crc32c_sw(crc, buf, len);
}

#endif
