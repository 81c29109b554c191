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
