/* vc_sort.h: stable sort of a batch of keys (indexes into packed key arrays).
 *
 * Batch calls (get_many, put_many) visit their keys in key order: consecutive lookups
 * then share tree leaves and skip-list paths instead of missing the cache each time.
 * Sorting a million keys with qsort and a comparison callback costs more than the
 * lookups it saves, so this is a most-significant-word radix sort:
 *
 *   - keys are compared 8 bytes ("a word", big-endian, zero-padded) at a time;
 *   - a run of keys is sorted by (word at depth, how many of its bytes the key has,
 *     capped at 9 = "continues") with a stable LSD radix sort over those 9 bytes,
 *     passes whose byte is the same for every key skipped (the table id, shared
 *     prefixes);
 *   - runs equal in both that continue past the word recurse at depth + 8;
 *   - runs of at most VC_SORT_SMALL keys use a stable insertion sort on whole keys.
 *
 * Order: memcmp order, the shorter key first on a tie; equal keys keep input order
 * (put_many relies on it: a repeated key ends with its last value).
 */
#ifndef VC_SORT_H
#define VC_SORT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "vc_key.h"

#define VC_SORT_SMALL 24

typedef struct vc_sort_rec {
    uint64_t word;      /* 8 key bytes from the current depth, big-endian, zero-padded */
    uint32_t idx;       /* key index */
    uint32_t avail;     /* key bytes from depth on, capped at 9 */
} vc_sort_rec;

typedef struct vc_sort_keys {
    const unsigned char *data;   /* packed keys */
    const size_t *offs;          /* key i starts at data + offs[i] */
    const uint32_t *lens;        /* and has lens[i] bytes */
} vc_sort_keys;

static inline uint64_t vc_sort_word(const vc_sort_keys *k, uint32_t i, uint32_t depth,
                                    uint32_t *avail)
{
    const unsigned char *p = k->data + k->offs[i];
    uint32_t len = k->lens[i];
    unsigned char b[8];
    if (len >= depth + 8) {
        *avail = len > depth + 8 ? 9 : 8;
        return vc_load_be64(p + depth);
    }
    *avail = len > depth ? len - depth : 0;
    memset(b, 0, 8);
    if (*avail)
        memcpy(b, p + depth, *avail);
    return vc_load_be64(b);
}

static void vc_sort_small(const vc_sort_keys *k, uint32_t *idx, size_t n)
{
    size_t i, j;
    for (i = 1; i < n; i++) {
        uint32_t x = idx[i];
        const unsigned char *xk = k->data + k->offs[x];
        uint32_t xl = k->lens[x];
        j = i;
        while (j > 0) {
            uint32_t y = idx[j - 1];
            if (vc_key_cmp(k->data + k->offs[y], k->lens[y], xk, xl) <= 0)
                break;       /* stable: equal keys stay in input order */
            idx[j] = y;
            j--;
        }
        idx[j] = x;
    }
}

/* Sort idx[0..n) (indexes of keys that agree on their first `depth` bytes).
   recs and tmp: scratch of at least n records.  Returns 0, or -1 if out of memory. */
static int vc_sort_run(const vc_sort_keys *k, uint32_t *idx, size_t n, uint32_t depth,
                       vc_sort_rec *recs, vc_sort_rec *tmp)
{
    size_t (*counts)[256];      /* on the heap: the recursion can be 129 words deep */
    size_t i, start;
    int pass;
    vc_sort_rec *src = recs, *dst = tmp, *sw;

    if (n <= VC_SORT_SMALL) {
        vc_sort_small(k, idx, n);
        return 0;
    }
    counts = (size_t (*)[256])calloc(9, sizeof(*counts));
    if (counts == NULL)
        return -1;
    for (i = 0; i < n; i++) {
        uint32_t avail;
        uint64_t w = vc_sort_word(k, idx[i], depth, &avail);
        src[i].word = w;
        src[i].idx = idx[i];
        src[i].avail = avail;
        counts[0][avail]++;
        for (pass = 1; pass < 9; pass++)
            counts[pass][(w >> (8 * (pass - 1))) & 0xFF]++;
    }
    /* least significant first: the length class, then word bytes 7 .. 0 */
    for (pass = 0; pass < 9; pass++) {
        size_t sum = 0, c;
        int b, trivial = 0;
        for (b = 0; b < 256; b++) {
            if (counts[pass][b] == n) { trivial = 1; break; }
        }
        if (trivial)
            continue;
        for (b = 0; b < 256; b++) {
            c = counts[pass][b];
            counts[pass][b] = sum;
            sum += c;
        }
        for (i = 0; i < n; i++) {
            unsigned b2 = pass == 0 ? src[i].avail : (unsigned)((src[i].word >> (8 * (pass - 1))) & 0xFF);
            dst[counts[pass][b2]++] = src[i];
        }
        sw = src; src = dst; dst = sw;
    }
    for (i = 0; i < n; i++)
        idx[i] = src[i].idx;
    free(counts);
    /* runs that tie on this word and continue: next word */
    start = 0;
    while (start < n) {
        size_t end = start + 1;
        while (end < n && src[end].word == src[start].word && src[end].avail == src[start].avail)
            end++;
        if (end - start > 1 && src[start].avail == 9) {
            if (vc_sort_run(k, idx + start, end - start, depth + 8, recs + start, tmp + start) < 0)
                return -1;
            /* recs[start..end) was overwritten; src may alias it, but the loop only
               needs src[end] onwards, which the recursion did not touch */
        }
        start = end;
    }
    return 0;
}

/* Stable sort of idx[0..n) (initialised by the caller) by key.  scratch: room for 2 * n
   records (VC_SORT_SCRATCH(n) bytes, 8-byte aligned) that the sort may overwrite, or NULL
   for the sort to allocate its own.  0, or -1 if out of memory. */
#define VC_SORT_SCRATCH(n) (2 * (size_t)(n) * sizeof(vc_sort_rec))

static int vc_sort_keys_by_index(const unsigned char *data, const size_t *offs,
                                 const uint32_t *lens, uint32_t *idx, size_t n,
                                 void *scratch)
{
    vc_sort_keys k;
    vc_sort_rec *recs, *tmp;
    int rc;
    size_t i;
    k.data = data;
    k.offs = offs;
    k.lens = lens;
    /* already in order (a sorted load): one pass over neighbours, no sort */
    for (i = 1; i < n; i++) {
        if (vc_key_cmp(data + offs[idx[i - 1]], lens[idx[i - 1]],
                       data + offs[idx[i]], lens[idx[i]]) > 0)
            break;
    }
    if (i >= n)
        return 0;
    if (n <= VC_SORT_SMALL) {
        vc_sort_small(&k, idx, n);
        return 0;
    }
    if (scratch != NULL) {
        recs = (vc_sort_rec *)scratch;
        return vc_sort_run(&k, idx, n, 0, recs, recs + n);
    }
    recs = (vc_sort_rec *)malloc(n * sizeof(vc_sort_rec));
    tmp = (vc_sort_rec *)malloc(n * sizeof(vc_sort_rec));
    if (recs == NULL || tmp == NULL) {
        free(recs);
        free(tmp);
        return -1;
    }
    rc = vc_sort_run(&k, idx, n, 0, recs, tmp);
    free(recs);
    free(tmp);
    return rc;
}

#endif
