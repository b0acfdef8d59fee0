/*
 * detail.c — the drainer's half of the flight recorder: summarize and split
 * the detail-record copies it holds as pre-roll (see lanetrace/detail.h).
 * Python only decides which windows and horizon apply; the per-record work
 * stays here because a busy target produces millions of records a second.
 */
#include "lanetrace/detail.h"

void lt_detail_summarize(const uint8_t *buf, size_t len, lt_detail_summary *out)
{
    lt_detail_summary s = {0, UINT64_MAX, 0, 0};
    size_t off = 0;
    lt_detail_record r;
    uint32_t n;
    while ((n = lt_detail_at(buf, len, off, &r)) != 0) {
        s.records++;
        if (r.ts_ns < s.min_ts)
            s.min_ts = r.ts_ns;
        if (r.ts_ns > s.max_ts)
            s.max_ts = r.ts_ns;
        off += n;
    }
    s.valid_bytes = off;
    *out = s;
}

void lt_detail_split(const uint8_t *buf, size_t len, const uint64_t *win, size_t nwin,
                     uint64_t horizon, uint8_t *send, uint8_t *keep,
                     lt_detail_split_result *res)
{
    lt_detail_split_result r = {0};
    size_t off = 0;
    lt_detail_record h;
    uint32_t n;
    while ((n = lt_detail_at(buf, len, off, &h)) != 0) {
        if (lt_detail_in_windows(h.ts_ns, win, nwin)) {
            memcpy(send + r.send_bytes, buf + off, n);
            r.send_bytes += n;
            r.send_records++;
        } else if (h.ts_ns >= horizon) {
            memcpy(keep + r.keep_bytes, buf + off, n);
            r.keep_bytes += n;
            r.keep_records++;
        } else {
            r.discard_records++;
        }
        off += n;
    }
    r.invalid_bytes = len - off;
    *res = r;
}
