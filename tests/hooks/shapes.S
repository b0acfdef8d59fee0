/* Function shapes that decide whether an entry may be patched (hooksafety).
 * Each is named after what the injector must decide for it. */
    .text
    .globl main
    .type main, @function
main:
    endbr64
    call fast_plain
    call loop_to_entry
    call branch_into_patch
    call ret_then_padding
    call ret_then_code
    call calls_first
    call jrcxz_first
    call packed_branch_into_patch
    /* wait for the test to read us */
1:  mov $34, %eax           /* SYS_pause */
    syscall
    jmp 1b
    .size main, .-main

    .p2align 4
    .globl fast_plain
    .type fast_plain, @function
fast_plain:
    endbr64
    push %rbx
    mov %rdi, %rbx
    lea 1(%rbx), %rax
    pop %rbx
    ret
    .size fast_plain, .-fast_plain

    .p2align 4
    .globl loop_to_entry
    .type loop_to_entry, @function
loop_to_entry:               /* its loop jumps back to its first instruction */
    dec %edi
    nop
    nop
    nop
    jg loop_to_entry
    ret
    .size loop_to_entry, .-loop_to_entry

    .p2align 4
    .globl branch_into_patch
    .type branch_into_patch, @function
branch_into_patch:           /* a loop lands on its second instruction; padding before it */
    xor %eax, %eax
2:  add $1, %eax
    cmp $3, %eax
    jl 2b
    ret
    .size branch_into_patch, .-branch_into_patch

    .p2align 4
    .globl ret_then_padding
    .type ret_then_padding, @function
ret_then_padding:            /* one instruction; alignment padding follows */
    ret
    .size ret_then_padding, .-ret_then_padding
    .p2align 4, 0x90
    nop

    .p2align 4
    .globl ret_then_code
    .type ret_then_code, @function
ret_then_code:               /* one instruction; unnamed code follows at once */
    ret
    .size ret_then_code, .-ret_then_code
    mov $1, %eax
    ret

    .p2align 4
    .globl calls_first
    .type calls_first, @function
calls_first:                 /* sub rsp; call: the call is relocated */
    sub $8, %rsp
    call fast_plain
    add $8, %rsp
    ret
    .size calls_first, .-calls_first

    .p2align 4
    .globl jrcxz_first
    .type jrcxz_first, @function
jrcxz_first:                 /* jrcxz has no rel32 form: it cannot be moved */
    mov %rdi, %rcx
    jrcxz 3f
    mov $2, %eax
3:  ret
    .size jrcxz_first, .-jrcxz_first

    .globl packed_branch_into_patch
    .type packed_branch_into_patch, @function
packed_branch_into_patch:    /* as branch_into_patch, but no padding before it */
    xor %eax, %eax
4:  add $1, %eax
    cmp $3, %eax
    jl 4b
    ret
    .size packed_branch_into_patch, .-packed_branch_into_patch

    .section .note.GNU-stack,"",@progbits
