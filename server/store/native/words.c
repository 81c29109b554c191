/* Word Bloom filters of a segment's row groups (see server/store/words.py for the format).
 * Built with the C compiler at first use; words.py holds the same hash in numpy. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define P 0x100000001B3ULL
#define GOLD 0x9E3779B97F4A7C15ULL

static uint8_t lut[256];

static void init_lut(void) {
    for (int c = 0; c < 256; c++) {
        if (c >= 0x80) lut[c] = (uint8_t)c;
        else if (c >= 'a' && c <= 'z') lut[c] = (uint8_t)c;
        else if (c >= '0' && c <= '9') lut[c] = (uint8_t)c;
        else if (c >= 'A' && c <= 'Z') lut[c] = (uint8_t)(c + 32);
        else lut[c] = 0;
    }
}

static int insert(uint64_t **setp, uint64_t *capp, int64_t *distinct, uint64_t h) {
    uint64_t *set = *setp, cap = *capp;
    if (!h) h = 1;
    uint64_t j = (h * GOLD) >> 20 & (cap - 1);
    while (set[j] && set[j] != h) j = (j + 1) & (cap - 1);
    if (set[j]) return 0;
    set[j] = h;
    if (++*distinct * 2 > (int64_t)cap) {      /* grow: rehash at 2x */
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
    if (!lut['a']) init_lut();
    int64_t used = 0, n_rg = 0;
    int64_t groups = bounds ? n_bounds - 1 : (n_strings + rg_rows - 1) / rg_rows;
    if (groups < 1) groups = 1;                /* an empty segment: one empty filter */
    for (int64_t r = 0; r < groups; r++) {
        int64_t lo = bounds ? bounds[r] : r * rg_rows;
        int64_t last = bounds ? bounds[r + 1] : lo + rg_rows;
        if (last > n_strings) last = n_strings;
        uint64_t cap = 1 << 16;
        uint64_t *set = calloc(cap, sizeof(uint64_t));
        if (!set) return -1;
        int64_t distinct = 0;
        for (int64_t s = lo; s < last; s++) {
            uint64_t h = 0, pw = 1, len = 0;
            int digit = 0, high = 0, fold = 0;
            int64_t at = order ? order[s] : s, end = offsets[at + 1];
            for (int64_t i = offsets[at]; i <= end; i++) {
                uint8_t b = i < end ? lut[data[i]] : 0;
                if (b) {
                    h += (uint64_t)b * pw;
                    pw *= P;
                    len++;
                    digit |= b <= '9';
                    high |= b >= 0x80;
                    fold |= (b == 0xAA && len >= 3 && data[i - 1] == 0x84 && data[i - 2] == 0xE2)
                            || (b == 0xBF && len >= 2 && data[i - 1] == 0xC5);
                    continue;
                }
                if (!len) continue;
                h ^= len * GOLD;
                int kept = !(letters_only && digit);
                if ((kept && insert(&set, &cap, &distinct, h)) ||
                    (kept && non_ascii && high && insert(&set, &cap, &distinct, non_ascii)) ||
                    (kept && folds && fold && insert(&set, &cap, &distinct, folds))) {
                    free(set);
                    return -1;
                }
                h = 0; pw = 1; len = 0; digit = 0; high = 0; fold = 0;
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
        free(set);
        out_sizes[n_rg++] = (int64_t)(m / 8);
        used += (int64_t)(m / 8);
    }
    return n_rg;
}
