/* Parameters of a segment packed as one string per row: every parameter followed by the
 * separator byte (see server/store/params.py, which holds the same in numpy). */
#include <stdint.h>
#include <string.h>

/* Pack rows [0, n_rows) of a list<string>: voff are the value offsets into data, loff the
 * list offsets into voff, valid (NULL: all rows) says which rows are not null (null rows
 * get no bytes). Writes the bytes to out and n_rows + 1 offsets to ooff; returns the number
 * of bytes, or -1 when a parameter holds the separator (the rows cannot be packed). */
int64_t mohlog_params_pack(const uint8_t *data, const int32_t *voff, const int32_t *loff,
                           const uint8_t *valid, int64_t n_rows, uint8_t sep, uint8_t *out,
                           int64_t *ooff) {
    int64_t pos = 0;
    ooff[0] = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        if (!valid || valid[r]) {
            for (int32_t k = loff[r]; k < loff[r + 1]; k++) {
                const uint8_t *s = data + voff[k];
                int64_t len = voff[k + 1] - voff[k];
                if (len && memchr(s, sep, (size_t)len)) return -1;
                memcpy(out + pos, s, (size_t)len);
                pos += len;
                out[pos++] = sep;
            }
        }
        ooff[r + 1] = pos;
    }
    return pos;
}

/* Unpack n_rows packed strings (soff: n_rows + 1 offsets into data): the parameter bytes
 * without separators to out, their n_params + 1 offsets to voff, the rows' n_rows + 1 list
 * offsets to loff; returns n_params. out has room for every byte of data and voff for
 * n_bytes + 2 offsets (the caller's memory is only touched as far as it is used). Bytes
 * after a row's last separator (never written by pack) are dropped. */
int64_t mohlog_params_unpack(const uint8_t *data, const int64_t *soff, int64_t n_rows,
                          uint8_t sep, uint8_t *out, int32_t *voff, int32_t *loff) {
    int64_t pos = 0, k = 0;
    voff[0] = 0;
    loff[0] = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        int64_t k0 = k, pos0 = pos;
        /* branch-free: every byte is copied, a separator is overwritten by the next one;
         * voff[k + 1] always holds the end of the open value (room: n_bytes + 2) */
        for (int64_t i = soff[r]; i < soff[r + 1]; i++) {
            uint8_t c = data[i];
            int is_sep = c == sep;
            out[pos] = c;
            pos += !is_sep;
            voff[k + 1] = (int32_t)pos;
            k += is_sep;
        }
        pos = k > k0 ? voff[k] : pos0;      /* drop bytes after the last separator */
        loff[r + 1] = (int32_t)k;
    }
    return k;
}
