/*
 * tramp_offsets.h — the field offsets the trampolines' assembly fast paths
 * (tramp_x86_64.S) read and write, shared with agent.c, which checks each
 * one against the C layout at compile time (a mismatch does not build).
 */
#ifndef LANETRACE_TRAMP_OFFSETS_H
#define LANETRACE_TRAMP_OFFSETS_H

/* lt_thread */
#define LT_T_STATE 0
#define LT_T_GUARD 4
#define LT_T_DEPTH 8
#define LT_T_EPOCH 12
#define LT_T_STK_LO 24
#define LT_T_STK_HI 32
#define LT_T_PROD 48   /* lt_producer prod */
#define LT_T_FRAMES 248
/* lt_producer fields, from the lt_thread */
#define LT_P_RING (LT_T_PROD + 16)
#define LT_P_RING_FILL (LT_T_PROD + 24)
#define LT_P_FILL (LT_T_PROD + 36)
#define LT_P_CAP (LT_T_PROD + 40)
#define LT_P_TID (LT_T_PROD + 44)
#define LT_P_ROUTE (LT_T_PROD + 48)
#define LT_P_COUNTDOWN (LT_T_PROD + 52)
#define LT_P_SEQ (LT_T_PROD + 56)
/* lt_frame: 32 bytes */
#define LT_F_SHIFT 5
#define LT_F_RET 0
#define LT_F_SLOT 8
#define LT_F_FID 16
#define LT_F_EPOCH 24
/* lt_desc */
#define LT_D_ORIG 0
#define LT_D_FID 16
#define LT_D_TRIGGER 20
#define LT_D_ROLE 22
/* lt_index_record */
#define LT_R_TS 0
#define LT_R_SEQ 8
#define LT_R_TID_FID 16   /* tid | func_id << 32 */
#define LT_R_KIND_DEPTH 24 /* kind | depth << 16 | flags << 32 */

#endif
