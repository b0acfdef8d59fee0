/*
 * install.c — installs a batch of fast hooks in one call from agent.js.
 *
 * The injector decides every hook outside the target (hooksafety.py) and
 * sends the batch as one hex string; decoding it here and calling
 * lt_install (agent.c) for each record replaces a JS -> native round trip
 * and a per-byte hex decode in JS per function, which cost ~0.25 ms per
 * function on the installing thread.
 *
 * Runs on the Frida JS thread only, while a running program's threads are
 * stopped: no libc lock may be taken (no malloc, no stdio). The caller owns
 * every buffer.
 *
 * Record layout (little-endian, packed; hooksafety.pack_install_batch):
 *   u32 fid, u32 role, u64 site, u64 slot, u64 tramp, u64 window_lo,
 *   u64 window_hi, u8 patch_len, u8 code_len, then code[code_len],
 *   expect[patch_len], and tramp_expect[5] when tramp != 0.
 */
#include <stdint.h>

#define EXPORT __attribute__((visibility("default")))

void *lt_install(uint32_t fid, uint32_t role, uint8_t *site, uint32_t patch_len, uint8_t *slot,
                 const uint8_t *code, uint32_t code_len, const uint8_t *expect, uint8_t *tramp,
                 const uint8_t *tramp_expect, int *why);
int lt_unlock_code(uint64_t lo, uint64_t hi);
void lt_lock_code(void);

#define HEADER_BYTES 50u
#define MAX_FIELD 255u

static int nibble(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* n bytes from hex text at *pos (advanced); -1 when it runs out or is not hex */
static int take(const char *hex, uint64_t hexlen, uint64_t *pos, uint8_t *out, uint32_t n)
{
    if (*pos + 2ull * n > hexlen)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        int hi = nibble((uint8_t)hex[*pos]), lo = nibble((uint8_t)hex[*pos + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
        *pos += 2;
    }
    return 0;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Installs every record of the batch, in order. For record i: fids[i] = its
 * function id, stubs[i] = the stub (lt_install's handle) or 0, whys[i] = 0
 * or lt_install's reason (1 code changed, 2 mprotect refused, 3 out of
 * memory). Each r-x mapping a patch lies in is made writable once while its
 * records are written (records come sorted by window). Returns the number of
 * records, or -1 - i when record i is malformed (records before it are
 * installed and reported). */
EXPORT int64_t lt_install_batch(const char *hex, uint64_t hexlen, uint32_t max, uint32_t *fids,
                                uint64_t *stubs, int32_t *whys)
{
    uint64_t pos = 0, win_lo = 0, win_hi = 0;
    int unlocked = 0;
    uint32_t n = 0;
    while (pos < hexlen) {
        uint8_t h[HEADER_BYTES], code[MAX_FIELD], expect[MAX_FIELD], texpect[5];
        if (n >= max || take(hex, hexlen, &pos, h, HEADER_BYTES) != 0)
            goto malformed;
        uint32_t fid = (uint32_t)le(h, 4), role = (uint32_t)le(h + 4, 4);
        uint64_t site = le(h + 8, 8), slot = le(h + 16, 8), tramp = le(h + 24, 8);
        uint64_t lo = le(h + 32, 8), hi = le(h + 40, 8);
        uint32_t patch_len = h[48], code_len = h[49];
        if (take(hex, hexlen, &pos, code, code_len) != 0 || take(hex, hexlen, &pos, expect, patch_len) != 0 ||
            (tramp && take(hex, hexlen, &pos, texpect, 5) != 0))
            goto malformed;
        if (hi && (lo != win_lo || hi != win_hi)) {
            if (unlocked)
                lt_lock_code();
            unlocked = lt_unlock_code(lo, hi) == 0;
            win_lo = lo;
            win_hi = hi;
        }
        int why = 0;
        void *stub = lt_install(fid, role, (uint8_t *)site, patch_len, (uint8_t *)slot, code, code_len,
                                expect, (uint8_t *)tramp, texpect, &why);
        fids[n] = fid;
        stubs[n] = (uint64_t)stub;
        whys[n] = stub ? 0 : why;
        n++;
    }
    if (unlocked)
        lt_lock_code();
    return n;
malformed:
    if (unlocked)
        lt_lock_code();
    return -1 - (int64_t)n;
}
