/* Function shapes that compilers and hand-written assembly produce and a
 * patcher must survive; each is called from distro_shapes.c.
 * No endbr64: each first instruction is the one that matters. */
        .text

/* long loop_to_entry(long n, long acc): acc + n + (n-1) + ... + 1.
 * Its loop jumps back to its own first instruction. */
        .globl  loop_to_entry
        .type   loop_to_entry, @function
loop_to_entry:
        addq    %rdi, %rsi
        decq    %rdi
        jnz     loop_to_entry
        movq    %rsi, %rax
        ret
        .size   loop_to_entry, .-loop_to_entry

/* void ret_only(void): one instruction. */
        .globl  ret_only
        .type   ret_only, @function
ret_only:
        ret
        .size   ret_only, .-ret_only

/* long jmp_only(long x): one instruction, a tail jump to tail_shared. */
        .globl  jmp_only
        .type   jmp_only, @function
jmp_only:
        jmp     tail_shared
        .size   jmp_only, .-jmp_only

/* long tail_first(long x) = 2x + 7, by jumping into the middle of
 * tail_shared's first bytes: the two functions share a tail. */
        .globl  tail_first
        .type   tail_first, @function
tail_first:
        leaq    (%rdi,%rdi), %rax
        jmp     .Lshared_tail
        .size   tail_first, .-tail_first

/* long tail_shared(long x) = x + 7. */
        .globl  tail_shared
        .type   tail_shared, @function
tail_shared:
        movq    %rdi, %rax
.Lshared_tail:
        addq    $7, %rax
        ret
        .size   tail_shared, .-tail_shared

/* long jump_entered(long x) = 3x + 1; entered only by a jump. */
        .globl  jump_entered
        .type   jump_entered, @function
jump_entered:
        leaq    1(%rdi,%rdi,2), %rax
        ret
        .size   jump_entered, .-jump_entered

/* long enter_by_jump(long x): pushes its own return point and jumps to
 * jump_entered, which returns there. */
        .globl  enter_by_jump
        .type   enter_by_jump, @function
enter_by_jump:
        subq    $8, %rsp
        leaq    1f(%rip), %rax
        pushq   %rax
        jmp     jump_entered
1:      addq    $8, %rsp
        ret
        .size   enter_by_jump, .-enter_by_jump

        .section .note.GNU-stack,"",@progbits
