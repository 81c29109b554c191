/* The parameters of mined lines, gathered from the lines' bytes (see _output in
 * embeddings/miner.py, which does the same with Arrow takes). */
#include <stdint.h>
#include <string.h>

/* Line i (bytes data[starts[i], starts[i+1])) is of class codes[i]; its parameters are
 * the pieces [rel[2p], rel[2p+1]) of the line for p in the class's bounds
 * rel[cls_off[c], cls_off[c+1]) (start/end pairs, relative to the line). Writes the
 * pieces' bytes to out (room for out_cap bytes) and their n_params + 1 offsets to voff;
 * returns the number of bytes, or -1 when a piece lies outside its line or out is full. */
int64_t mohlog_mine_gather(const uint8_t *data, const int32_t *starts, const int64_t *codes,
                           int64_t n_lines, const int32_t *cls_off, const int32_t *rel,
                           uint8_t *out, int64_t out_cap, int32_t *voff) {
    int64_t pos = 0, k = 0;
    voff[0] = 0;
    for (int64_t i = 0; i < n_lines; i++) {
        int64_t c = codes[i], base = starts[i], len = starts[i + 1] - base;
        for (int32_t b = cls_off[c]; b < cls_off[c + 1]; b += 2) {
            int32_t x0 = rel[b], x1 = rel[b + 1];
            if (x0 < 0 || x1 < x0 || x1 > len || pos + (x1 - x0) > out_cap) return -1;
            memcpy(out + pos, data + base + x0, (size_t)(x1 - x0));
            pos += x1 - x0;
            voff[++k] = (int32_t)pos;
        }
    }
    return pos;
}

/* ---- Known line classes (see _ClassCache in embeddings/miner.py) ----------------------
 * Two hash tables of byte keys: "digits" maps a line's first-level key (every ASCII digit
 * made '1', but digits followed by 'x'/'X') to the positions of the digits of its literal
 * text; "classes" maps the class key (the first-level key with those digits put back) to
 * a class id. mohlog_known_lookup finds the class of every line in one pass. */
#include <stdlib.h>

typedef struct {
    uint64_t h;
    int64_t koff, val;
    int32_t klen, used;
} Slot;

typedef struct {
    Slot *slots;
    uint64_t mask;
    int64_t n;
    uint8_t *keys;
    int64_t kcap, klen;
} Table;

typedef struct {
    Table digits, classes;
    int32_t *pos;
    int64_t pcap, plen;
} Known;

static inline uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Two independent multiply-xorshift lanes over 8-byte words (keys are compared whole
 * on a hash match: the hash only spreads them). */
static uint64_t hash_bytes(const uint8_t *p, int64_t n) {
    uint64_t a = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, b = 0x2545F4914F6CDD1DULL;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a = (a ^ rd64(p + i)) * 0xbf58476d1ce4e5b9ULL;
        b = (b ^ rd64(p + i + 8)) * 0x94d049bb133111ebULL;
        a ^= a >> 31;
        b ^= b >> 29;
    }
    if (i + 8 <= n) {
        a = (a ^ rd64(p + i)) * 0xbf58476d1ce4e5b9ULL;
        a ^= a >> 31;
        i += 8;
    }
    if (i < n) {
        uint64_t t = 0;
        memcpy(&t, p + i, (size_t)(n - i));
        b = (b ^ t) * 0x94d049bb133111ebULL;
        b ^= b >> 29;
    }
    uint64_t h = (a ^ (b >> 7) ^ (b << 57)) * 0xff51afd7ed558ccdULL;
    return h ^ (h >> 33);
}

static int table_init(Table *t, uint64_t cap) {
    memset(t, 0, sizeof *t);
    t->slots = calloc(cap, sizeof(Slot));
    if (!t->slots) return -1;
    t->mask = cap - 1;
    return 0;
}

static void table_free(Table *t) {
    free(t->slots);
    free(t->keys);
    memset(t, 0, sizeof *t);
}

static Slot *table_find(const Table *t, uint64_t h, const uint8_t *k, int64_t len) {
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        Slot *s = &t->slots[i];
        if (!s->used) return s;
        if (s->h == h && s->klen == len && memcmp(t->keys + s->koff, k, (size_t)len) == 0)
            return s;
    }
}

static int table_grow(Table *t) {
    uint64_t cap = (t->mask + 1) * 2;
    Slot *slots = calloc(cap, sizeof(Slot));
    if (!slots) return -1;
    for (uint64_t i = 0; i <= t->mask; i++) {
        Slot *s = &t->slots[i];
        if (!s->used) continue;
        uint64_t j = s->h & (cap - 1);
        while (slots[j].used) j = (j + 1) & (cap - 1);
        slots[j] = *s;
    }
    free(t->slots);
    t->slots = slots;
    t->mask = cap - 1;
    return 0;
}

static int table_put(Table *t, const uint8_t *k, int64_t len, int64_t val) {
    if (len < 0 || len > INT32_MAX) return -1;
    if ((t->n + 1) * 2 > (int64_t)(t->mask + 1) && table_grow(t)) return -1;
    uint64_t h = hash_bytes(k, len);
    Slot *s = table_find(t, h, k, len);
    if (s->used) {
        s->val = val;
        return 0;
    }
    if (t->klen + len > t->kcap) {
        int64_t cap = t->kcap ? t->kcap : 1 << 16;
        while (cap < t->klen + len) cap *= 2;
        uint8_t *keys = realloc(t->keys, (size_t)cap);
        if (!keys) return -1;
        t->keys = keys;
        t->kcap = cap;
    }
    if (len) memcpy(t->keys + t->klen, k, (size_t)len);
    s->h = h;
    s->koff = t->klen;
    s->klen = (int32_t)len;
    s->val = val;
    s->used = 1;
    t->klen += len;
    t->n++;
    return 0;
}

static const Slot *table_get(const Table *t, uint64_t h, const uint8_t *k, int64_t len) {
    const Slot *s = table_find(t, h, k, len);
    return s->used ? s : NULL;
}

/* A line's first-level key: every ASCII digit made '1', unless an 'x'/'X' follows it
 * (the "0" of "0x"). The first loop is vectorised. */
__attribute__((optimize("O3"))) static void normalise(const uint8_t *line, uint8_t *buf,
                                                       int64_t len) {
    for (int64_t j = 0; j < len; j++) {
        uint8_t c = line[j];
        buf[j] = (uint8_t)(c - '0') < 10 ? '1' : c;
    }
    for (int x = 'x'; x >= 'X'; x -= 32) {
        const uint8_t *q = line + 1;
        while (q < line + len && (q = memchr(q, x, (size_t)(line + len - q))) != NULL) {
            int64_t j = q - line - 1;
            buf[j] = line[j];
            q++;
        }
    }
}

void mohlog_known_free(void *p) {
    Known *k = p;
    if (!k) return;
    table_free(&k->digits);
    table_free(&k->classes);
    free(k->pos);
    free(k);
}

void *mohlog_known_new(void) {
    Known *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    if (table_init(&k->digits, 1024) || table_init(&k->classes, 1024)) {
        mohlog_known_free(k);
        return NULL;
    }
    return k;
}

/* The first-level key -> the n positions (in the line) of its literal digits. 0, or -1
 * when out of memory. */
int mohlog_known_add_digits(void *p, const uint8_t *key, int64_t len, const int32_t *pos,
                            int32_t n) {
    Known *k = p;
    if (n < 0 || n >= 1 << 16) return -1;
    if (k->plen + n > k->pcap) {
        int64_t cap = k->pcap ? k->pcap : 1 << 12;
        while (cap < k->plen + n) cap *= 2;
        int32_t *np_ = realloc(k->pos, (size_t)cap * sizeof(int32_t));
        if (!np_) return -1;
        k->pos = np_;
        k->pcap = cap;
    }
    if (table_put(&k->digits, key, len, (k->plen << 16) | n)) return -1;
    if (n) memcpy(k->pos + k->plen, pos, (size_t)n * sizeof(int32_t));
    k->plen += n;
    return 0;
}

/* The class key -> class id cls. 0, or -1 when out of memory. */
int mohlog_known_add_class(void *p, const uint8_t *key, int64_t len, int32_t cls) {
    Known *k = p;
    return table_put(&k->classes, key, len, cls);
}

/* The class id of each line i (bytes data[starts[i], starts[i+1])) in out[i], -1 for a
 * line whose keys are not known; the hash of such a line's first-level key in
 * key_hash[i] (0 for the others). Returns the number of such lines, -1 when out of
 * memory. */
int64_t mohlog_known_lookup(const void *p, const uint8_t *data, const int32_t *starts,
                            int64_t n_lines, int32_t *out, uint64_t *key_hash) {
    const Known *k = p;
    int64_t longest = 1, misses = 0;
    for (int64_t i = 0; i < n_lines; i++)
        if (starts[i + 1] - starts[i] > longest) longest = starts[i + 1] - starts[i];
    uint8_t *buf = malloc((size_t)longest);
    if (!buf) return -1;
    for (int64_t i = 0; i < n_lines; i++) {
        const uint8_t *line = data + starts[i];
        int64_t len = starts[i + 1] - starts[i];
        normalise(line, buf, len);
        uint64_t h = hash_bytes(buf, len);
        const Slot *d = table_get(&k->digits, h, buf, len);
        key_hash[i] = 0;
        if (!d) {
            out[i] = -1;
            key_hash[i] = h;
            misses++;
            continue;
        }
        int64_t at = d->val >> 16, cnt = d->val & 0xFFFF;
        int ok = 1;
        for (int64_t q = 0; q < cnt; q++) {
            int32_t x = k->pos[at + q];
            if (x < 0 || x >= len) { ok = 0; break; }
            buf[x] = line[x];
        }
        const Slot *c = ok ? table_get(&k->classes, cnt ? hash_bytes(buf, len) : h, buf, len)
                           : NULL;
        out[i] = c ? (int32_t)c->val : -1;
        if (!c) {
            key_hash[i] = h;
            misses++;
        }
    }
    free(buf);
    return misses;
}

/* Codes numbered in order of first appearance: cls[i] (in [0, n_cls)) -> out[i]; first[r]
 * = the first line of code r; map: room for n_cls. Returns the number of codes, -1 when a
 * class is out of range. */
int64_t mohlog_first_order(const int64_t *cls, int64_t n, int64_t n_cls, int64_t *map,
                           int64_t *out, int64_t *first) {
    int64_t r = 0;
    for (int64_t c = 0; c < n_cls; c++) map[c] = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t c = cls[i];
        if (c < 0 || c >= n_cls) return -1;
        if (map[c] < 0) {
            first[r] = i;
            map[c] = r++;
        }
        out[i] = map[c];
    }
    return r;
}
