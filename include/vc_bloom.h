/* vc_bloom.h: a blocked Bloom filter over the keys of a shared memtable.
 *
 * A point read looks for its key in the active (and frozen) memtable before the tree.
 * Most keys read are not in the memtable, and a skip-list search that finds nothing still
 * costs a dozen cache misses.  The filter answers "certainly absent" from one cache line:
 * a key sets 3 bits inside one 64-byte block chosen by its hash.
 *
 * Concurrency: writers set bits with a relaxed atomic OR before they link the key's node
 * (a release CAS); a reader that can see a committed version of the key saw that commit
 * through an acquire of the visible timestamp, which the linking thread's stores precede,
 * so it sees the bits too.  A reader racing an insert may miss the key, exactly as if it
 * had read a moment earlier.  Bits are never cleared: the filter dies with its memtable.
 */
#ifndef VC_BLOOM_H
#define VC_BLOOM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct vc_bloom {
    uint64_t *words;      /* nblocks * 8 words, 64-byte aligned */
    uint64_t block_mask;  /* nblocks - 1 (nblocks is a power of two) */
} vc_bloom;

/* 64-bit hash of a key.  Every point read of a key that is not in a memtable pays for it
 * (once the memtable holds anything), so its dependency chain is kept short: the first
 * and the last 8 bytes (overlapping on keys of 9 to 15 bytes) are mixed in two
 * independent lanes, and only the words between them (keys over 16 bytes) are chained
 * into the first lane; a multiply-xorshift finish mixes the lanes.  A byte-at-a-time
 * tail loop made up most of the hash's time on 20-byte keys. */
static inline uint64_t vc_key_hash(const unsigned char *k, uint32_t n)
{
    uint64_t a = 0, b, x, y, w, h;
    uint32_t i, lo, hi;
    if (n >= 8) {
        memcpy(&a, k, 8);
        memcpy(&b, k + n - 8, 8);
    } else if (n >= 4) {
        memcpy(&lo, k, 4);
        memcpy(&hi, k + n - 4, 4);
        a = ((uint64_t)hi << 32) | lo;
        b = a;
    } else {
        for (i = 0; i < n; i++)
            a |= (uint64_t)k[i] << (8 * i);
        b = a;
    }
    x = (a ^ 0x9E3779B97F4A7C15ULL) * 0xBF58476D1CE4E5B9ULL;
    y = (b ^ 0xC2B2AE3D27D4EB4FULL) * 0x94D049BB133111EBULL;
    for (i = 8; i + 8 < n; i += 8) {
        memcpy(&w, k + i, 8);
        x = (x ^ (x >> 29) ^ w) * 0xD6E8FEB86659FD93ULL;
    }
    h = x ^ ((y << 32) | (y >> 32)) ^ ((uint64_t)n * 0x165667B19E3779F9ULL);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return h;
}

/* A filter of about `bytes` bytes (rounded to a power of two, at least 4 KiB). 0 / -1. */
static inline int vc_bloom_init(vc_bloom *b, size_t bytes)
{
    size_t nblocks = 64;
    void *p = NULL;
    while (nblocks * 64 < bytes && nblocks < ((size_t)1 << 26))
        nblocks <<= 1;
    if (posix_memalign(&p, 64, nblocks * 64) != 0)
        return -1;
    memset(p, 0, nblocks * 64);
    b->words = (uint64_t *)p;
    b->block_mask = nblocks - 1;
    return 0;
}

static inline void vc_bloom_free(vc_bloom *b)
{
    free(b->words);
    b->words = NULL;
}

/* Set one bit unless it is set already.  A locked OR waits until the stores before it
 * (a writer's fresh node and version lines, which miss) have left the store buffer; a
 * filter that has filled up (the small one, soon after a memtable starts) has most bits
 * set, and a plain load then saves that wait.  A bit seen set is seen by every reader that
 * synchronises with this writer later (read-read coherence: bits are only ever added), so
 * skipping the OR keeps the guarantee above. */
static inline void vc_bloom_set_bit(uint64_t *w, unsigned bit)
{
    uint64_t m = 1ULL << (bit & 63);
    if (!(__atomic_load_n(w, __ATOMIC_RELAXED) & m))
        __atomic_fetch_or(w, m, __ATOMIC_RELAXED);
}

static inline void vc_bloom_add(vc_bloom *b, uint64_t h)
{
    uint64_t *blk = b->words + ((h & b->block_mask) << 3);
    unsigned b1 = (unsigned)(h >> 37) & 511, b2 = (unsigned)(h >> 46) & 511,
             b3 = (unsigned)(h >> 55) & 511;
    /* relaxed: ordered before the node's publication by that release CAS (see above) */
    vc_bloom_set_bit(&blk[b1 >> 6], b1);
    vc_bloom_set_bit(&blk[b2 >> 6], b2);
    vc_bloom_set_bit(&blk[b3 >> 6], b3);
}

/* 0: the key was certainly never added.  1: it may have been. */
static inline int vc_bloom_maybe(const vc_bloom *b, uint64_t h)
{
    const uint64_t *blk = b->words + ((h & b->block_mask) << 3);
    unsigned b1 = (unsigned)(h >> 37) & 511, b2 = (unsigned)(h >> 46) & 511,
             b3 = (unsigned)(h >> 55) & 511;
    return ((__atomic_load_n(&blk[b1 >> 6], __ATOMIC_RELAXED) >> (b1 & 63)) &
            (__atomic_load_n(&blk[b2 >> 6], __ATOMIC_RELAXED) >> (b2 & 63)) &
            (__atomic_load_n(&blk[b3 >> 6], __ATOMIC_RELAXED) >> (b3 & 63)) & 1);
}

#endif
