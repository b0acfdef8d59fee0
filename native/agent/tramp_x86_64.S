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
    .text
    .intel_syntax noprefix

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
    push r8
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
 * second time, where the jmp's target is predicted from its history. */
    .globl lt_exit_tramp
    .hidden lt_exit_tramp
    .type lt_exit_tramp, @function
    .p2align 4
lt_exit_tramp:
    endbr64
    sub rsp, 8          /* becomes the real return address */
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
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
