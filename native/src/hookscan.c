/* hookscan.c — see lanetrace/hookscan.h. */
#define _GNU_SOURCE
#include "lanetrace/hookscan.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The subset of capstone's ABI used here (capstone 5: include/capstone/capstone.h). */
typedef size_t csh;
typedef struct cs_insn_prefix {
    unsigned int id;
    uint64_t address;
    uint16_t size;
    uint8_t bytes[24];
} cs_insn_prefix;
enum { CS_ARCH_X86 = 3, CS_MODE_64 = 1 << 3 };

struct lt_scanner {
    void *lib;
    csh h;
    void *insn;
    int (*cs_open)(int, int, csh *);
    int (*cs_close)(csh *);
    void *(*cs_malloc)(csh);
    void (*cs_free)(void *, size_t);
    int (*cs_disasm_iter)(csh, const uint8_t **, size_t *, uint64_t *, void *);
};

lt_scanner *lt_scan_open(const char *libpath, char *err, size_t errlen)
{
    lt_scanner *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->lib = dlopen(libpath, RTLD_NOW | RTLD_LOCAL);
    if (!s->lib) {
        snprintf(err, errlen, "cannot load capstone: %s", dlerror());
        free(s);
        return NULL;
    }
    *(void **)&s->cs_open = dlsym(s->lib, "cs_open");
    *(void **)&s->cs_close = dlsym(s->lib, "cs_close");
    *(void **)&s->cs_malloc = dlsym(s->lib, "cs_malloc");
    *(void **)&s->cs_free = dlsym(s->lib, "cs_free");
    *(void **)&s->cs_disasm_iter = dlsym(s->lib, "cs_disasm_iter");
    if (!s->cs_open || !s->cs_close || !s->cs_malloc || !s->cs_free || !s->cs_disasm_iter ||
        s->cs_open(CS_ARCH_X86, CS_MODE_64, &s->h) != 0) {
        snprintf(err, errlen, "capstone at %s is unusable", libpath);
        dlclose(s->lib);
        free(s);
        return NULL;
    }
    s->insn = s->cs_malloc(s->h);
    return s;
}

void lt_scan_close(lt_scanner *s)
{
    if (!s)
        return;
    s->cs_free(s->insn, 1);
    s->cs_close(&s->h);
    dlclose(s->lib);
    free(s);
}

static int is_prefix(uint8_t b)
{
    return b == 0x66 || b == 0x67 || b == 0xf2 || b == 0xf3 || b == 0x2e || b == 0x3e ||
           b == 0x26 || b == 0x36 || b == 0x64 || b == 0x65 || (b >= 0x40 && b <= 0x4f);
}

/* Direct branch kind of an instruction, 0 if none; *disp_len gets 1 or 4
 * (the displacement is always the instruction's last bytes). */
static int branch_kind(const uint8_t *b, unsigned n, unsigned *disp_len)
{
    unsigned i = 0;
    while (i < n && is_prefix(b[i]))
        i++;
    if (i >= n)
        return 0;
    uint8_t op = b[i];
    if (op == 0xe8 || op == 0xe9) {
        *disp_len = n - i - 1 >= 4 ? 4 : 2;
        return op == 0xe8 ? LT_BR_CALL : LT_BR_JMP;
    }
    if (op == 0xeb) {
        *disp_len = 1;
        return LT_BR_JMP;
    }
    if (op >= 0x70 && op <= 0x7f) {
        *disp_len = 1;
        return LT_BR_JCC;
    }
    if (op >= 0xe0 && op <= 0xe3) { /* loopne, loope, loop, jrcxz */
        *disp_len = 1;
        return LT_BR_OTHER;
    }
    if (op == 0x0f && i + 1 < n && (b[i + 1] & 0xf0) == 0x80) {
        *disp_len = n - i - 2 >= 4 ? 4 : 2;
        return LT_BR_JCC;
    }
    if (op == 0xc7 && i + 1 < n && b[i + 1] == 0xf8) { /* xbegin */
        *disp_len = n - i - 2 >= 4 ? 4 : 2;
        return LT_BR_OTHER;
    }
    return 0;
}

int64_t lt_scan_branches(lt_scanner *s, const uint8_t *code, size_t len, uint64_t base,
                         const uint64_t *starts, size_t nstarts, uint64_t *src, uint64_t *dst,
                         uint8_t *kind, size_t cap)
{
    cs_insn_prefix *in = s->insn;
    int64_t found = 0;
    size_t si = 0;
    uint64_t end = base + len;
    uint64_t pc = base;
    while (pc < end) {
        while (si < nstarts && starts[si] <= pc)
            si++;
        uint64_t stop = si < nstarts && starts[si] < end ? starts[si] : end;
        const uint8_t *p = code + (pc - base);
        size_t left = stop - pc;
        uint64_t addr = pc;
        while (left) {
            if (!s->cs_disasm_iter(s->h, &p, &left, &addr, in)) {
                /* undecodable byte (data, padding): skip it */
                p++;
                left--;
                addr++;
                continue;
            }
            unsigned dl = 0;
            int k = branch_kind(in->bytes, in->size, &dl);
            if (!k)
                continue;
            int64_t disp;
            const uint8_t *d = in->bytes + in->size - dl;
            if (dl == 1)
                disp = (int8_t)d[0];
            else if (dl == 2)
                disp = (int16_t)(d[0] | d[1] << 8);
            else
                disp = (int32_t)((uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 |
                                 (uint32_t)d[3] << 24);
            if ((size_t)found < cap) {
                src[found] = in->address;
                dst[found] = in->address + in->size + (uint64_t)disp;
                kind[found] = (uint8_t)k;
            }
            found++;
        }
        pc = stop;
    }
    return found;
}
