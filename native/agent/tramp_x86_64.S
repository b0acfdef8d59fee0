/*
 * tramp_x86_64.S — the two trampolines of the replaceFast hook path.
 *
 * Per hooked function the agent emits a stub (agent.c, lt_make_stub):
 *     endbr64; push rax; movabs rax, &desc; jmp [rip+0]; .quad lt_entry_tramp
 * Interceptor.replaceFast redirects the function to that stub, so on entry
 * here rax = desc, [rsp] = the caller's rax, [rsp+8] = its return address.
 *
 * Every caller-saved general register is preserved in both directions, not
 * only the argument/return ones: with -fipa-ra, gcc lets a caller keep
 * values in the caller-saved registers its (local) callee is known not to
 * touch, so a hook may only change what the hooked function itself changes.
 * The vector registers and x87 state are never touched: the C side is built
 * with -mgeneral-regs-only, and its rare libc slow path saves the vector
 * state itself (agent.c, thread_init_safe).
 */
#include "tramp_offsets.h"

    .text
    .intel_syntax noprefix

/* One 32-byte index record at the producer's fill, stamped with rdtsc, then
 * the fill published and the periodic check's countdown taken. rcx = producer, esi = depth; fid at [FIDSRC + FIDOFF];
 * clobbers rax, rdx and SCRATCH. */
    .macro WRITE_RECORD fidsrc, fidoff, scratch64, scratch32, kind
    rdtsc
    shl rdx, 32
    or rax, rdx                                 /* ts */
    mov edx, dword ptr [rcx + LT_P_FILL]
    shl rdx, 5
    add rdx, qword ptr [rcx + LT_P_RING]        /* the record */
    mov qword ptr [rdx + LT_R_TS], rax
    mov rax, qword ptr [rcx + LT_P_SEQ]
    add rax, 1
    mov qword ptr [rcx + LT_P_SEQ], rax
    mov qword ptr [rdx + LT_R_SEQ], rax
    mov \scratch32, dword ptr [rcx + LT_P_TID]
    mov eax, dword ptr [\fidsrc + \fidoff]
    shl rax, 32
    or rax, \scratch64
    mov qword ptr [rdx + LT_R_TID_FID], rax
    mov eax, esi
    shl eax, 16
    or eax, \kind                               /* kind, depth, flags 0 */
    mov qword ptr [rdx + LT_R_KIND_DEPTH], rax
    mov eax, dword ptr [rcx + LT_P_FILL]
    add eax, 1
    mov dword ptr [rcx + LT_P_FILL], eax
    mov rdx, qword ptr [rcx + LT_P_RING_FILL]
    mov dword ptr [rdx], eax    /* release (x86 stores are): pairs with the drainer's acquire of fill */
    sub dword ptr [rcx + LT_P_COUNTDOWN], 1
    .endm

/* To LABEL unless the assembly path may record: TSC stamps, the thread's own
 * lane only, no periodic check due, room in the active ring (what emit()'s
 * fast path checks in C). rcx = producer; clobbers SCRATCH. */
    .macro FAST_RECORD_OR scratch32, label
    cmp dword ptr [rip + g_clock_tsc], 0
    je \label
    cmp dword ptr [rcx + LT_P_ROUTE], 1         /* LT_ROUTE_LANE only */
    jne \label
    cmp dword ptr [rcx + LT_P_COUNTDOWN], 1     /* the periodic check is due */
    jbe \label
    cmp qword ptr [rcx + LT_P_RING], 0
    je \label
    mov \scratch32, dword ptr [rcx + LT_P_FILL]
    cmp \scratch32, dword ptr [rcx + LT_P_CAP]
    jae \label
    .endm


/* The common case runs here without C, as lt_on_entry would: a traced
 * (role 0), non-trigger function on an active thread not inside our
 * handler, recording on in the thread's session, TSC stamps, room in the
 * per-thread ring with no check due, and a shadow stack with nothing stale
 * on top (empty, or its top frame's slot above this one and both on the
 * thread's own stack) and not full. It writes the ENTRY record, pushes the
 * frame and hijacks the return, saving only the five registers it uses
 * besides rax (the descriptor; the caller's rax is in the stub's slot A).
 * Anything else falls through to lt_on_entry with the full register block,
 * the first six pushes being the same. */
    .globl lt_entry_tramp
    .hidden lt_entry_tramp
    .type lt_entry_tramp, @function
    .p2align 4
lt_entry_tramp:
    endbr64
    push rax            /* becomes the caller's rax (B) */
    push rcx
    push rdx
    push rsi
    push rdi
    push r8             /* r8 rdi rsi rdx rcx | B +40 | A +48 | ret +56 */
    cmp byte ptr [rax + LT_D_ROLE], 0
    jne .Lentry_slow
    cmp byte ptr [rax + LT_D_TRIGGER], 0
    jne .Lentry_slow
    mov rcx, qword ptr [rip + tls_self@GOTTPOFF]
    mov rcx, qword ptr fs:[rcx]                 /* t */
    test rcx, rcx
    jz .Lentry_slow                             /* the thread's first event */
    cmp dword ptr [rcx + LT_T_STATE], 1         /* ACTIVE */
    jne .Lentry_slow
    cmp dword ptr [rcx + LT_T_GUARD], 0         /* not one 8-byte load: the last hook's */
    jne .Lentry_slow                            /* 4-byte guard store would not forward to it */
    mov dword ptr [rcx + LT_T_GUARD], 1
    cmp dword ptr [rip + g_recording], 0
    je .Lentry_unguard
    mov edx, dword ptr [rip + g_epoch]
    cmp edx, dword ptr [rcx + LT_T_EPOCH]       /* a new session: re-register in C */
    jne .Lentry_unguard
    FAST_RECORD_OR edx, .Lentry_unguard
    mov esi, dword ptr [rcx + LT_T_DEPTH]
    test esi, esi
    jz .Lentry_record                           /* no frame: nothing can be stale */
    cmp esi, 2048                               /* LT_SHADOW_MAX: drop, in C */
    jae .Lentry_unguard
    lea r8d, [rsi - 1]
    shl r8, LT_F_SHIFT
    mov r8, qword ptr [rcx + r8 + LT_T_FRAMES + LT_F_SLOT] /* the top frame's slot */
    lea rdi, [rsp + 56]                         /* this call's slot */
    cmp r8, rdi
    jbe .Lentry_unguard                         /* top at or below: longjmp or tail call, in C */
    mov rdx, qword ptr [rcx + LT_T_STK_HI]
    sub rdx, qword ptr [rcx + LT_T_STK_LO]      /* stack size */
    sub r8, qword ptr [rcx + LT_T_STK_LO]
    cmp r8, rdx
    jae .Lentry_unguard                         /* top frame not on the thread's stack */
    sub rdi, qword ptr [rcx + LT_T_STK_LO]
    cmp rdi, rdx
    jae .Lentry_unguard                         /* we are not: a signal alternate stack */
.Lentry_record:
    mov r8, rax                                 /* desc */
    WRITE_RECORD r8, LT_D_FID, rdi, edi, 1      /* LT_KIND_ENTRY */
    mov eax, esi
    shl rax, LT_F_SHIFT
    lea rdx, [rcx + rax + LT_T_FRAMES]          /* the new frame */
    mov rax, qword ptr [rsp + 56]
    mov qword ptr [rdx + LT_F_RET], rax
    lea rax, [rsp + 56]
    mov qword ptr [rdx + LT_F_SLOT], rax
    mov eax, dword ptr [r8 + LT_D_FID]
    mov qword ptr [rdx + LT_F_FID], rax         /* fid, flags 0 */
    mov eax, dword ptr [rcx + LT_T_EPOCH]
    mov qword ptr [rdx + LT_F_EPOCH], rax       /* epoch, pad 0 */
    add esi, 1
    mov dword ptr [rcx + LT_T_DEPTH], esi
    lea rax, [rip + lt_exit_tramp]
    mov qword ptr [rsp + 56], rax               /* the return comes to us */
    mov dword ptr [rcx + LT_T_GUARD], 0
    mov rax, qword ptr [rsp + 48]               /* A: the caller's rax */
    mov qword ptr [rsp + 40], rax               /* into B */
    mov rax, qword ptr [r8 + LT_D_ORIG]
    mov qword ptr [rsp + 48], rax               /* A = where to go */
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    lea rsp, [rsp + 8]  /* rsp -> return address, as at the call */
    jmp [rsp - 8]       /* below rsp but inside the red zone: signals skip it */
.Lentry_unguard:
    mov dword ptr [rcx + LT_T_GUARD], 0
.Lentry_slow:
    push r9
    push r10
    push r11            /* regs: r11 r10 r9 r8 rdi rsi rdx rcx | B | A | ret */
    mov rcx, [rsp + 72] /* A: the caller's rax, pushed by the stub */
    mov [rsp + 64], rcx
    push rbp
    mov rbp, rsp
    and rsp, -16        /* callers are not obliged to keep us aligned here */
    mov rdi, rax        /* desc */
    lea rsi, [rbp + 8]  /* regs; return address at regs[10] */
    call lt_on_entry    /* -> original function (replaceFast's trampoline) */
    mov [rbp + 8 + 72], rax /* A = where to go */
    mov rsp, rbp
    pop rbp
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    lea rsp, [rsp + 8]  /* rsp -> return address, as at the call */
    jmp [rsp - 8]       /* below rsp but inside the red zone: signals skip it */
    .size lt_entry_tramp, .-lt_entry_tramp

/* Reached by the hooked function's `ret` (lt_on_entry put our address in
 * its return slot), a return the CPU mispredicts. rsp = that slot + 8. It
 * leaves with an indirect jmp, not a `ret`: the return stack buffer's top
 * is the caller's own return by now, so a `ret` would be mispredicted a
 * second time, where the jmp's target is predicted from its history.
 *
 * The common case runs here without C: the thread is active and not inside
 * our handler, the top shadow frame is this return's, recording is on in
 * the frame's session, records are TSC-stamped, and the per-thread ring has
 * room with no check due. It saves the six registers it uses (rdtsc takes
 * rax/rdx) and does what lt_on_exit and write_index do. Anything else falls
 * through to lt_on_exit with the full register block, the first six pushes
 * being the same. The guard is up while the shadow stack and the ring are
 * changed, so a signal handler's hooked calls pass through, as in C. */
    .globl lt_exit_tramp
    .hidden lt_exit_tramp
    .type lt_exit_tramp, @function
    .p2align 4
lt_exit_tramp:
    endbr64
    sub rsp, 8          /* becomes the real return address: the hooked frame's slot */
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8             /* slot at rsp + 48 */
    mov rcx, qword ptr [rip + tls_self@GOTTPOFF]
    mov rcx, qword ptr fs:[rcx]                 /* t: set, we hooked this return */
    cmp dword ptr [rcx + LT_T_STATE], 1         /* ACTIVE */
    jne .Lexit_slow
    cmp dword ptr [rcx + LT_T_GUARD], 0
    jne .Lexit_slow
    mov dword ptr [rcx + LT_T_GUARD], 1
    mov esi, dword ptr [rcx + LT_T_DEPTH]
    sub esi, 1                                  /* the frame's depth */
    jb .Lexit_unguard                           /* no frame */
    mov edi, esi
    shl rdi, LT_F_SHIFT
    lea rdi, [rcx + rdi + LT_T_FRAMES]          /* f = the top frame */
    lea rax, [rsp + 48]
    cmp qword ptr [rdi + LT_F_SLOT], rax        /* not this return's: longjmp'd over */
    jne .Lexit_unguard
    cmp dword ptr [rip + g_recording], 0
    je .Lexit_unguard
    mov eax, dword ptr [rdi + LT_F_EPOCH]
    cmp eax, dword ptr [rcx + LT_T_EPOCH]
    jne .Lexit_unguard
    FAST_RECORD_OR eax, .Lexit_unguard
    WRITE_RECORD rdi, LT_F_FID, r8, r8d, 2      /* LT_KIND_RETURN */
    mov dword ptr [rcx + LT_T_DEPTH], esi       /* pop the frame */
    mov rax, qword ptr [rdi + LT_F_RET]
    mov qword ptr [rsp + 48], rax
    mov dword ptr [rcx + LT_T_GUARD], 0
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    lea rsp, [rsp + 8]  /* as after the hooked function's own return */
    jmp [rsp - 8]       /* below rsp but inside the red zone: signals skip it */
.Lexit_unguard:
    mov dword ptr [rcx + LT_T_GUARD], 0
.Lexit_slow:
    push r9
    push r10
    push r11            /* regs: r11 r10 r9 r8 rdi rsi rdx rcx rax | RA */
    push rbp
    mov rbp, rsp
    and rsp, -16
    lea rdi, [rbp + 8]  /* regs */
    lea rsi, [rbp + 88] /* sp at return: the hooked frame's slot was sp - 8 */
    call lt_on_exit     /* -> real return address, popped from the shadow stack */
    mov [rbp + 8 + 72], rax
    mov rsp, rbp
    pop rbp
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    lea rsp, [rsp + 8]  /* as after the hooked function's own return */
    jmp [rsp - 8]       /* below rsp but inside the red zone: signals skip it */
    .size lt_exit_tramp, .-lt_exit_tramp

    .section .note.GNU-stack,"",@progbits
