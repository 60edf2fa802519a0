/* vc_crc32c.h: CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
 *
 * zlib-style chaining: vc_crc32c(0, buf, len) is the CRC of buf, and
 *   vc_crc32c(vc_crc32c(0, a, n), b, m) == vc_crc32c(0, a||b, n + m).
 * Check value: vc_crc32c(0, "123456789", 9) == 0xE3069283.
 *
 * The x86-64 hardware path (SSE4.2 crc32 instruction, three streams at once on long
 * buffers) is compiled with __attribute__((target("sse4.2"))), so the package needs no
 * -msse4.2 and runs on CPUs without it; the choice is made once at run time with
 * __builtin_cpu_supports.  Everywhere else a slicing-by-8 table is used, built on first
 * use.
 */
#ifndef VC_CRC32C_H
#define VC_CRC32C_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
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

/* Publish table t at *slot unless another thread did first: then t is freed and the
 * winner's table returned. */
static inline const uint32_t (*vc_crc32c_publish_(uint32_t (**slot)[256],
                                                  uint32_t (*t)[256]))[256]
{
    uint32_t (*expected)[256] = NULL;
    if (!__atomic_compare_exchange_n(slot, &expected, t, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        free(t);
        t = expected;
    }
    return (const uint32_t (*)[256])t;
}

static inline const uint32_t (*vc_crc32c_table(void))[256]
{
    uint32_t (*t)[256] = __atomic_load_n(&vc_crc32c_table_, __ATOMIC_ACQUIRE);
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
    return vc_crc32c_publish_(&vc_crc32c_table_, t);
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
/* Three streams at once.  The crc32 instruction takes three cycles before its result can
 * feed the next one but starts a new one every cycle, so one chain of them runs at a third
 * of the rate the unit allows.  A long buffer is cut into rounds of three blocks of
 * `blk` bytes, each block's CRC register run from 0 beside the others (the first's from
 * the register so far), and the three joined: the register is linear over GF(2), so
 *     crc(s, A||B||C) = Z(Z(crc(s, A)) ^ crc(0, B)) ^ crc(0, C)
 * where Z applies what `blk` zero bytes do to a register (registers here are the raw
 * ones, between the inversions).  Z is a 32x32 bit matrix, applied a byte at a time from
 * four 256-entry tables, built once per block size (vc_crc32c_zeros).  Two block sizes:
 * VC_CRC32C_LONG cuts a page's 4,092 checksummed bytes (less the 4 taken one at a time
 * to reach an 8-byte boundary) into three with 8 bytes left, VC_CRC32C_SHORT serves what
 * remains of longer buffers. */
#define VC_CRC32C_LONG 1360
#define VC_CRC32C_SHORT 168

__attribute__((target("sse4.2")))
static inline uint32_t vc_crc32c_raw_(uint32_t crc, const unsigned char *p, size_t len)
{
    /* the raw register over len bytes, 8 at a time (p 8-byte aligned or not: memcpy) */
    uint64_t c64 = crc, word;
    while (len >= 8) {
        memcpy(&word, p, 8);
        c64 = _mm_crc32_u64(c64, word);
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)c64;
    while (len--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}

/* Z for blk zero bytes as four tables: z[k][b] = Z applied to b << 8k.  Published once
 * with a compare-and-swap (vc_crc32c_publish_), as the slicing table is. */
static uint32_t (*vc_crc32c_zeros_[2])[256] = {NULL, NULL};

__attribute__((target("sse4.2")))
static inline const uint32_t (*vc_crc32c_zeros(int which))[256]
{
    uint32_t (*t)[256] = __atomic_load_n(&vc_crc32c_zeros_[which], __ATOMIC_ACQUIRE);
    uint32_t col[32], v;
    size_t blk = which ? VC_CRC32C_SHORT : VC_CRC32C_LONG, i;
    int bit, k, b;
    if (t != NULL)
        return (const uint32_t (*)[256])t;
    t = (uint32_t (*)[256])malloc(4 * 256 * sizeof(uint32_t));
    if (t == NULL)
        return NULL;
    for (bit = 0; bit < 32; bit++) {      /* Z's columns: each unit register run over zeros */
        uint64_t c64 = (uint64_t)1 << bit;
        for (i = 0; i < blk; i += 8)
            c64 = _mm_crc32_u64(c64, 0);
        col[bit] = (uint32_t)c64;
    }
    for (k = 0; k < 4; k++)
        for (b = 0; b < 256; b++) {
            v = 0;
            for (bit = 0; bit < 8; bit++)
                if (b & (1 << bit))
                    v ^= col[8 * k + bit];
            t[k][b] = v;
        }
    return vc_crc32c_publish_(&vc_crc32c_zeros_[which], t);
}

static inline uint32_t vc_crc32c_shift_(const uint32_t (*z)[256], uint32_t crc)
{
    return z[0][crc & 0xFF] ^ z[1][(crc >> 8) & 0xFF] ^ z[2][(crc >> 16) & 0xFF] ^
           z[3][crc >> 24];
}

__attribute__((target("sse4.2")))
static inline const unsigned char *vc_crc32c_rounds_(uint32_t *crcp, const unsigned char *p,
                                                     size_t *lenp, size_t blk, int which)
{
    /* as many rounds of three blk-byte blocks as *lenp holds; p 8-byte aligned */
    const uint32_t (*z)[256];
    uint64_t a, b, c, wa, wb, wc;
    size_t i;
    if (*lenp < 3 * blk || (z = vc_crc32c_zeros(which)) == NULL)
        return p;
    while (*lenp >= 3 * blk) {
        a = *crcp;
        b = 0;
        c = 0;
        for (i = 0; i < blk; i += 8) {
            memcpy(&wa, p + i, 8);
            memcpy(&wb, p + blk + i, 8);
            memcpy(&wc, p + 2 * blk + i, 8);
            a = _mm_crc32_u64(a, wa);
            b = _mm_crc32_u64(b, wb);
            c = _mm_crc32_u64(c, wc);
        }
        *crcp = vc_crc32c_shift_(z, vc_crc32c_shift_(z, (uint32_t)a) ^ (uint32_t)b) ^
                (uint32_t)c;
        p += 3 * blk;
        *lenp -= 3 * blk;
    }
    return p;
}

__attribute__((target("sse4.2")))
static inline uint32_t vc_crc32c_sse42_(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = _mm_crc32_u8(crc, *p++);
        len--;
    }
    p = vc_crc32c_rounds_(&crc, p, &len, VC_CRC32C_LONG, 0);
    p = vc_crc32c_rounds_(&crc, p, &len, VC_CRC32C_SHORT, 1);
    return ~vc_crc32c_raw_(crc, p, len);
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
