/* Checks of the parameters of a row group for a search term (server/store/filters.py):
 * which contain a needle (_contains), which meet what their template slot needs for a
 * match to cross their edge (_needs_met). The same rules as the numpy code, in one pass
 * over the parameters instead of a dozen numpy passes. */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>

enum { NOTHING = 0, ANYTHING = 1, LIST = 2 };
enum { END = 0, START = 1, EQ = 2 };

static inline uint8_t fold(uint8_t c, int case_sensitive) {
    return (!case_sensitive && c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

static int same(const uint8_t *p, const uint8_t *w, int64_t m, int case_sensitive) {
    for (int64_t i = 0; i < m; i++)
        if (fold(p[i], case_sensitive) != w[i]) return 0;
    return 1;
}

/* Does one parameter (p, size bytes) of a slot with code c meet the slot's needs? */
static int met_one(const uint8_t *p, int64_t size, int32_t c, const int8_t *ckind,
                   const int64_t *shortest, const uint8_t *empty, const int32_t *e_off,
                   const int8_t *ekind, const int64_t *woff, const int64_t *wlen,
                   const uint8_t *blob, int case_sensitive) {
    if (ckind[c] == ANYTHING) return 1;
    if (size == 0) return empty[c];
    int64_t least = shortest[c] > 1 ? shortest[c] : 1;
    if (ckind[c] != LIST || size < least) return 0;
    if (!case_sensitive)
        for (int64_t i = 0; i < size; i++)
            if (p[i] >= 0x80) return 1;     /* Unicode folding is not modelled: may */
    for (int32_t e = e_off[c]; e < e_off[c + 1]; e++) {
        int64_t m = wlen[e];
        const uint8_t *w = blob + woff[e];
        if (m == 0) continue;
        if (ekind[e] == EQ) {
            if (size == m && same(p, w, m, case_sensitive)) return 1;
        } else if (size >= m && same(ekind[e] == END ? p + size - m : p, w, m,
                                     case_sensitive)) {
            return 1;
        }
    }
    return 0;
}

/* Rows r < n_rows hold parameters [loff[r], loff[r+1]) of data/voff (voff: n_params + 1
 * byte offsets); a row's template has count[r] slots whose codes are
 * slot_codes[base[r] + slot] (code 0 past them). Code c: ckind[c] (NOTHING, ANYTHING or
 * LIST of wants e_off[c]..e_off[c+1]: ekind, the bytes blob[woff, woff + wlen)),
 * shortest[c] (over its wants), empty[c] (one of them is empty). Only parameters with
 * mine[k] are looked at; valid (NULL: all) marks non-null ones. met[k] = 1 for those
 * meeting their slot's needs. Returns how many. */
int64_t mohlog_needs_met(const uint8_t *data, const int64_t *voff, const int32_t *loff,
                         int64_t n_rows, const int64_t *base, const int64_t *count,
                         const int32_t *slot_codes, const uint8_t *mine, const uint8_t *valid,
                         const int8_t *ckind, const int64_t *shortest, const uint8_t *empty,
                         const int32_t *e_off, const int8_t *ekind, const int64_t *woff,
                         const int64_t *wlen, const uint8_t *blob, int case_sensitive,
                         uint8_t *met) {
    int64_t hits = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        for (int64_t k = loff[r]; k < loff[r + 1]; k++) {
            if (!mine[k]) continue;
            int64_t slot = k - loff[r];
            int32_t c = slot < count[r] ? slot_codes[base[r] + slot] : 0;
            if ((valid && !valid[k]) ||
                met_one(data + voff[k], voff[k + 1] - voff[k], c, ckind, shortest, empty,
                        e_off, ekind, woff, wlen, blob, case_sensitive)) {
                met[k] = 1;
                hits++;
            }
        }
    }
    return hits;
}

/* The same on packed rows (row r: bytes data[soff[r], soff[r+1]), each parameter followed
 * by sep): met[r] = 1 when a parameter of row r (a row with mine[r]) meets its slot's
 * needs. Returns how many rows. */
int64_t mohlog_needs_met_rows(const uint8_t *data, const int64_t *soff, int64_t n_rows,
                              uint8_t sep, const int64_t *base, const int64_t *count,
                              const int32_t *slot_codes, const uint8_t *mine,
                              const int8_t *ckind, const int64_t *shortest,
                              const uint8_t *empty, const int32_t *e_off, const int8_t *ekind,
                              const int64_t *woff, const int64_t *wlen, const uint8_t *blob,
                              int case_sensitive, uint8_t *met) {
    int64_t hits = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        if (!mine[r]) continue;
        const uint8_t *p = data + soff[r], *end = data + soff[r + 1];
        for (int64_t slot = 0; p < end; slot++) {
            const uint8_t *q = memchr(p, sep, (size_t)(end - p));
            if (!q) break;                  /* (bytes after the last separator: none) */
            int32_t c = slot < count[r] ? slot_codes[base[r] + slot] : 0;
            if (met_one(p, q - p, c, ckind, shortest, empty, e_off, ekind, woff, wlen, blob,
                        case_sensitive)) {
                met[r] = 1;
                hits++;
                break;
            }
            p = q + 1;
        }
    }
    return hits;
}

/* Which strings i < n (bytes data[off[i], off[i+1])) contain the needle (m bytes, ASCII
 * letters folded when folding): out[i] = 1. Folding, a string holding a non-ASCII byte
 * and no ASCII match is not decided here (Unicode case folding: the Kelvin sign folds to
 * k): out[i] = 2. Returns the number of those undecided. */
int64_t mohlog_contains(const uint8_t *data, const int64_t *off, int64_t n,
                        const uint8_t *needle, int64_t m, int folding, uint8_t *out) {
    int64_t undecided = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = data + off[i];
        int64_t size = off[i + 1] - off[i];
        if (m == 0) {
            out[i] = 1;
            continue;
        }
        if (!folding) {                     /* exact bytes: the C library's search */
            if (size >= m && memmem(p, (size_t)size, needle, (size_t)m)) out[i] = 1;
            continue;
        }
        /* One pass: the first and last bytes first (the needle is folded already); the
         * bytes seen are or-ed, so that a string with a non-ASCII byte and no ASCII match
         * is left undecided when folding (a match found holds under any folding). */
        uint8_t first = needle[0], last = needle[m - 1], seen = 0;
        int64_t j = 0;
        for (; j + m <= size; j++) {
            seen |= p[j];
            if (fold(p[j], !folding) == first && fold(p[j + m - 1], !folding) == last &&
                same(p + j + 1, needle + 1, m - 1, !folding)) {
                out[i] = 1;
                break;
            }
        }
        if (out[i]) continue;
        for (; j < size; j++) seen |= p[j];
        if (seen >= 0x80) {
            out[i] = 2;
            undecided++;
        }
    }
    return undecided;
}
