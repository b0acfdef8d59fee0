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
    int (*cs_option)(csh, int, size_t);
    csh hd;        /* details on, for lt_relocate; 0 until lt_scan_set_layout */
    void *insn_d;
    lt_cs_layout l;
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
    *(void **)&s->cs_option = dlsym(s->lib, "cs_option");
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
    if (s->hd) {
        s->cs_free(s->insn_d, 1);
        s->cs_close(&s->hd);
    }
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

/* ---- relocation ------------------------------------------------------ */

enum { CS_OPT_DETAIL = 2, CS_OPT_ON = 3 };

int lt_scan_set_layout(lt_scanner *s, const lt_cs_layout *layout)
{
    if (s->hd)
        return 0;
    if (!s->cs_option || s->cs_open(CS_ARCH_X86, CS_MODE_64, &s->hd) != 0)
        return -1;
    if (s->cs_option(s->hd, CS_OPT_DETAIL, CS_OPT_ON) != 0) {
        s->cs_close(&s->hd);
        s->hd = 0;
        return -1;
    }
    s->l = *layout;
    s->insn_d = s->cs_malloc(s->hd);
    return 0;
}

typedef struct {
    const lt_cs_layout *l;
    const uint8_t *insn, *det, *x86;
} insn_view;

static uint8_t u8_at(const uint8_t *p, uint32_t off) { return p[off]; }
static uint32_t u32_at(const uint8_t *p, uint32_t off)
{
    uint32_t v;
    memcpy(&v, p + off, 4);
    return v;
}
static int64_t i64_at(const uint8_t *p, uint32_t off)
{
    int64_t v;
    memcpy(&v, p + off, 8);
    return v;
}

static int in_group(const insn_view *v, uint32_t g)
{
    unsigned n = u8_at(v->det, v->l->det_groups_count);
    for (unsigned i = 0; i < n && i < 8; i++)
        if (u8_at(v->det, v->l->det_groups + i) == g)
            return 1;
    return 0;
}

static const uint8_t *operand(const insn_view *v, unsigned i)
{
    return v->x86 + v->l->x86_operands + i * v->l->op_size;
}

static int rip_relative(const insn_view *v)
{
    unsigned n = u8_at(v->x86, v->l->x86_op_count);
    for (unsigned i = 0; i < n && i < 8; i++) {
        const uint8_t *op = operand(v, i);
        if (u32_at(op, v->l->op_type) == v->l->op_mem_kind && u32_at(op, v->l->op_mem_base) == v->l->reg_rip)
            return 1;
    }
    return 0;
}

/* rel32 from the end of an instruction at frm_end to target, or 0 when out of reach */
static int rel32(uint64_t frm_end, uint64_t target, uint8_t out[4])
{
    int64_t d = (int64_t)(target - frm_end);
    if (d < INT32_MIN || d > INT32_MAX)
        return 0;
    uint32_t u = (uint32_t)(int32_t)d;
    for (int i = 0; i < 4; i++)
        out[i] = (uint8_t)(u >> (8 * i));
    return 1;
}

static int is_padding(const insn_view *v, unsigned id, unsigned size, const uint8_t *bytes)
{
    return id == v->l->ins_nop || id == v->l->ins_int3 || (size == 2 && bytes[0] == 0 && bytes[1] == 0);
}

#define PUT(buf, n) do { if (olen + (n) > cap) return LT_RELOC_UNRELOCATABLE; \
                         memcpy(out + olen, (buf), (n)); olen += (n); } while (0)

int lt_relocate(lt_scanner *s, const uint8_t *code, size_t len, uint64_t address,
                uint64_t new_address, uint32_t min_len, uint8_t *out, size_t cap,
                uint32_t *covered)
{
    if (!s->hd)
        return LT_RELOC_NO_DECODER;
    const lt_cs_layout *l = &s->l;
    cs_insn_prefix *in = s->insn_d;
    insn_view v = {l, s->insn_d, NULL, NULL};
    const uint8_t *p = code;
    size_t left = len;
    uint64_t pc = address;
    size_t olen = 0;
    uint32_t cov = 0;
    int ended = 0;
    while (cov < min_len && s->cs_disasm_iter(s->hd, &p, &left, &pc, in)) {
        v.det = *(const uint8_t *const *)((const uint8_t *)in + l->insn_detail);
        v.x86 = v.det + l->det_x86;
        unsigned id = in->id, size = in->size;
        const uint8_t *b = in->bytes;
        uint64_t at = in->address;
        if (ended) {
            if (!is_padding(&v, id, size, b))
                return LT_RELOC_TOO_SHORT;
            cov += size;
            continue;
        }
        uint64_t here = new_address + olen;
        for (int i = 0; i < 6; i++)
            if (id == l->unmovable[i])
                return LT_RELOC_UNRELOCATABLE;
        uint8_t r[4];
        if (in_group(&v, l->grp_ret)) {
            PUT(b, size);
            ended = 1;
        } else if (in_group(&v, l->grp_iret) || in_group(&v, l->grp_int) || id == l->ins_ud2 ||
                   id == l->ins_hlt) {
            return LT_RELOC_TOO_SHORT;
        } else if (in_group(&v, l->grp_call)) {
            /* the callee returns into the function itself: push the original
             * return address, then jump */
            uint64_t ret_to = at + size;
            uint8_t push[16] = {0x48, 0x8d, 0x64, 0x24, 0xf8, 0xc7, 0x04, 0x24, 0, 0, 0, 0,
                                0xc7, 0x44, 0x24, 0x04};
            for (int i = 0; i < 4; i++)
                push[8 + i] = (uint8_t)(ret_to >> (8 * i));
            PUT(push, 16);
            uint8_t hi[4];
            for (int i = 0; i < 4; i++)
                hi[i] = (uint8_t)(ret_to >> (32 + 8 * i));
            PUT(hi, 4);
            here = new_address + olen;
            if (in_group(&v, l->grp_branch_relative)) {
                if (!rel32(here + 5, (uint64_t)i64_at(operand(&v, 0), l->op_value), r))
                    return LT_RELOC_UNRELOCATABLE;
                uint8_t j = 0xe9;
                PUT(&j, 1);
                PUT(r, 4);
            } else if (rip_relative(&v) && size >= 6 && b[size - 6] == 0xff && b[size - 5] == 0x15) {
                int32_t disp;
                memcpy(&disp, b + size - 4, 4);
                if (!rel32(here + 6, at + size + (int64_t)disp, r))
                    return LT_RELOC_UNRELOCATABLE;
                uint8_t j[2] = {0xff, 0x25};
                PUT(b, size - 6);
                PUT(j, 2);
                PUT(r, 4);
            } else {
                return LT_RELOC_UNRELOCATABLE; /* call reg / call [reg]: its jmp twin may read rsp */
            }
            ended = 1;
        } else if (in_group(&v, l->grp_branch_relative)) {
            uint64_t target = (uint64_t)i64_at(operand(&v, 0), l->op_value);
            if (id == l->ins_jmp) {
                if (!rel32(here + 5, target, r))
                    return LT_RELOC_UNRELOCATABLE;
                uint8_t j = 0xe9;
                PUT(&j, 1);
                PUT(r, 4);
                ended = 1;
            } else {
                int op = -1;
                for (int i = 0; i < 16; i++)
                    if (id == l->jcc[i])
                        op = 0x80 + i;
                if (op < 0 || !rel32(here + 6, target, r))
                    return LT_RELOC_UNRELOCATABLE;
                uint8_t j[2] = {0x0f, (uint8_t)op};
                PUT(j, 2);
                PUT(r, 4);
            }
        } else if (rip_relative(&v)) { /* moved with its displacement re-aimed */
            unsigned doff = u8_at(v.x86, l->x86_disp_offset), dsize = u8_at(v.x86, l->x86_disp_size);
            if (dsize != 4 || doff + 4 > size)
                return LT_RELOC_UNRELOCATABLE;
            int32_t disp;
            memcpy(&disp, b + doff, 4);
            if (!rel32(here + size, at + size + (int64_t)disp, r))
                return LT_RELOC_UNRELOCATABLE;
            uint8_t copy[24];
            memcpy(copy, b, size);
            memcpy(copy + doff, r, 4);
            PUT(copy, size);
            ended = in_group(&v, l->grp_jump);
        } else {
            PUT(b, size);
            ended = in_group(&v, l->grp_jump); /* jmp reg / jmp [mem]: the function ends */
        }
        cov += size;
    }
    if (cov < min_len)
        return LT_RELOC_TOO_SHORT; /* ran out of decodable bytes */
    if (!ended) {
        uint8_t r[4];
        if (!rel32(new_address + olen + 5, address + cov, r))
            return LT_RELOC_UNRELOCATABLE;
        uint8_t j = 0xe9;
        PUT(&j, 1);
        PUT(r, 4);
    }
    *covered = cov;
    return (int)olen;
}
