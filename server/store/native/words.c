/* Word Bloom filters of a segment's row groups (see server/store/words.py for the format).
 * Built with the C compiler at first use; words.py holds the same hash in numpy. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define P 0x100000001B3ULL
#define GOLD 0x9E3779B97F4A7C15ULL

static uint8_t lut[256];     /* the byte lower-cased, or 0 outside words */
static uint8_t cls[256];     /* WORD | DIGIT | HIGH | FOLD bits of a byte */
static uint64_t pw_table[64];   /* P**i */

enum { WORD = 1, DIGIT = 2, HIGH = 4, FOLD = 8 };

static void init_lut(void) {
    for (int c = 0; c < 256; c++) {
        if (c >= 0x80) lut[c] = (uint8_t)c;
        else if (c >= 'a' && c <= 'z') lut[c] = (uint8_t)c;
        else if (c >= '0' && c <= '9') lut[c] = (uint8_t)c;
        else if (c >= 'A' && c <= 'Z') lut[c] = (uint8_t)(c + 32);
        else lut[c] = 0;
        cls[c] = (uint8_t)((lut[c] ? WORD : 0) | (c >= '0' && c <= '9' ? DIGIT : 0) |
                           (c >= 0x80 ? HIGH : 0) | (c == 0xAA || c == 0xBF ? FOLD : 0));
    }
    uint64_t p = 1;
    for (int i = 0; i < 64; i++, p *= P) pw_table[i] = p;
}

static int grow(uint64_t **setp, uint64_t *capp) {     /* rehash at 2x */
    uint64_t *set = *setp, cap = *capp;
    uint64_t ncap = cap * 2, *nset = calloc(ncap, sizeof(uint64_t));
    if (!nset) return -1;
    for (uint64_t q = 0; q < cap; q++) {
        if (!set[q]) continue;
        uint64_t r = (set[q] * GOLD) >> 20 & (ncap - 1);
        while (nset[r]) r = (r + 1) & (ncap - 1);
        nset[r] = set[q];
    }
    free(set);
    *setp = nset;
    *capp = ncap;
    return 0;
}

/* Add h to the open-addressing set (0 marks a free slot, so a hash of 0 is stored as 1). */
static inline int insert(uint64_t **setp, uint64_t *capp, int64_t *distinct, uint64_t h) {
    uint64_t *set = *setp, mask = *capp - 1;
    if (!h) h = 1;
    uint64_t j = (h * GOLD) >> 20 & mask;
    for (;;) {
        uint64_t v = set[j];
        if (v == h) return 0;
        if (!v) break;
        j = (j + 1) & mask;
    }
    set[j] = h;
    if (++*distinct * 4 > (int64_t)*capp * 3) return grow(setp, capp);  /* 3/4 full */
    return 0;
}

/* Does the word data[a:e] hold a Kelvin sign (E2 84 AA) or a long s (C5 BF)? */
static int has_fold(const uint8_t *data, int64_t a, int64_t e) {
    for (int64_t i = a; i < e; i++) {
        if (data[i] == 0xAA && i - a >= 2 && data[i - 1] == 0x84 && data[i - 2] == 0xE2)
            return 1;
        if (data[i] == 0xBF && i - a >= 1 && data[i - 1] == 0xC5) return 1;
    }
    return 0;
}

/* Row group r's filter holds the words of strings [r*rg_rows, (r+1)*rg_rows) (with
 * bounds, else NULL: [bounds[r], bounds[r+1]), for the parameters of a row group's rows)
 * and the extra hashes extra[extra_off[r]:extra_off[r+1]] (field values; extra may be
 * NULL). With order (else NULL), string s is the one at offsets[order[s]] (stored order
 * given as a permutation: the strings need not be copied into it). With letters_only,
 * words holding an ASCII digit are left out. A word kept holding a non-ASCII byte also sets
 * the hash non_ascii, one holding a Kelvin sign or a long s (UTF-8 E2 84 AA, C5 BF: their
 * case folds are k and s) the hash folds, unless 0 (see words.py).
 * Returns the number of row groups, or -1 when out_cap is too small or memory runs out. */
int64_t mohlog_word_blooms(const uint8_t *data, const int64_t *offsets, int64_t n_strings,
                           int64_t rg_rows, int bits_per_word, int k, uint8_t *out,
                           int64_t out_cap, int64_t *out_sizes, const uint64_t *extra,
                           const int64_t *extra_off, const int64_t *order,
                           const int64_t *bounds, int64_t n_bounds, int letters_only,
                           uint64_t non_ascii, uint64_t folds) {
    if (!pw_table[0]) init_lut();
    int64_t used = 0, n_rg = 0;
    int64_t groups = bounds ? n_bounds - 1 : (n_strings + rg_rows - 1) / rg_rows;
    if (groups < 1) groups = 1;                /* an empty segment: one empty filter */
    /* One set for all row groups, cleared between them (not allocated anew: fresh pages
     * from the kernel cost more than the words' hashing), kept at the size it grew to. */
    uint64_t cap = 1 << 16;
    uint64_t *set = calloc(cap, sizeof(uint64_t));
    if (!set) return -1;
    for (int64_t r = 0; r < groups; r++) {
        int64_t lo = bounds ? bounds[r] : r * rg_rows;
        int64_t last = bounds ? bounds[r + 1] : lo + rg_rows;
        if (last > n_strings) last = n_strings;
        if (r) memset(set, 0, cap * sizeof(uint64_t));
        int64_t distinct = 0;
        for (int64_t s = lo; s < last; s++) {
            int64_t at = order ? order[s] : s, i = offsets[at], end = offsets[at + 1];
            while (i < end) {
                while (i < end && !(cls[data[i]] & WORD)) i++;     /* to a word's start */
                if (i >= end) break;
                int64_t a = i;
                uint64_t h = 0;
                uint8_t flags = 0;
                /* h = sum of byte * P**position; P**i from the table (no multiply chain) */
                for (; i < end && i - a < 64; i++) {
                    uint8_t c = data[i], f = cls[c];
                    if (!(f & WORD)) break;
                    flags |= f;
                    h += (uint64_t)lut[c] * pw_table[i - a];
                }
                if (i < end && i - a == 64 && (cls[data[i]] & WORD)) {   /* a long word */
                    uint64_t pw = pw_table[63] * P;
                    for (; i < end; i++, pw *= P) {
                        uint8_t c = data[i], f = cls[c];
                        if (!(f & WORD)) break;
                        flags |= f;
                        h += (uint64_t)lut[c] * pw;
                    }
                }
                uint64_t len = (uint64_t)(i - a);
                h ^= len * GOLD;
                if (letters_only && (flags & DIGIT)) continue;
                if (insert(&set, &cap, &distinct, h) ||
                    (non_ascii && (flags & HIGH) &&
                     insert(&set, &cap, &distinct, non_ascii)) ||
                    (folds && (flags & FOLD) && has_fold(data, a, i) &&
                     insert(&set, &cap, &distinct, folds))) {
                    free(set);
                    return -1;
                }
            }
        }
        if (extra)
            for (int64_t e = extra_off[n_rg]; e < extra_off[n_rg + 1]; e++)
                if (insert(&set, &cap, &distinct, extra[e])) { free(set); return -1; }
        uint64_t m = (uint64_t)distinct * (uint64_t)bits_per_word;
        m = m < 64 ? 64 : (m + 63) / 64 * 64;
        if (used + (int64_t)(m / 8) > out_cap) { free(set); return -1; }
        uint8_t *bits = out + used;
        memset(bits, 0, m / 8);
        for (uint64_t j = 0; j < cap; j++) {
            uint64_t h = set[j];
            if (!h) continue;
            /* positions (h1 + i*h2) % m for i < k (no overflow: h1, h2 < 2^32), stepped
             * without a division per probe */
            uint64_t pos = (h & 0xFFFFFFFFULL) % m, step = ((h >> 32) | 1ULL) % m;
            for (int i = 0; i < k; i++) {
                bits[pos >> 3] |= (uint8_t)(0x80 >> (pos & 7));
                pos += step;
                if (pos >= m) pos -= m;
            }
        }
        out_sizes[n_rg++] = (int64_t)(m / 8);
        used += (int64_t)(m / 8);
    }
    free(set);
    return n_rg;
}
