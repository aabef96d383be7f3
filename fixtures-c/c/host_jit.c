/* host_jit: runs generated code the way a JIT does. The machine code lives in an anonymous
 * executable mapping that no loaded module describes; its unwind information is registered at
 * run time with libgcc's __register_frame, as JITs (LuaJIT, V8 with unwinding info) register
 * theirs. The generated function calls back into jit_leak, which leaks 1 block of 77 bytes:
 * its stack must go on through the generated frame to jit_caller and main, as libgcc's walk
 * goes. The mapping is unmapped and the frame deregistered before exit: nothing else leaks.
 * residue_fixtures::jit mirrors these numbers. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void __register_frame(void *begin);
void __deregister_frame(void *begin);

void *jit_sink;

__attribute__((noinline)) void jit_leak(void) {
    jit_sink = malloc(77);
    memset(jit_sink, 7, 77);
}

typedef void (*callback)(void);
typedef void (*generated)(callback);

__attribute__((noinline)) void jit_caller(generated code) {
    code(jit_leak);
    __asm__ volatile("" ::: "memory"); /* keeps the call out of tail position */
}

/* sub $8,%rsp; call *%rdi; add $8,%rsp; ret */
static const uint8_t CODE[] = {0x48, 0x83, 0xec, 0x08, 0xff, 0xd7, 0x48, 0x83, 0xc4, 0x08, 0xc3};

static size_t put(uint8_t *at, const void *bytes, size_t n) {
    memcpy(at, bytes, n);
    return n;
}

/* .eh_frame for CODE at `pc`: a CIE (augmentation "zR", absolute 8-byte addresses; CFA =
 * rsp+8, return address at CFA-8), one FDE (CFA = rsp+16 after the sub, rsp+8 after the add),
 * and the zero terminator (libgcc reads them unaligned). */
static void eh_frame(uint8_t *eh, uint64_t pc) {
    static const uint8_t cie_body[] = {
        0, 0, 0, 0,          /* CIE id */
        1,                   /* version */
        'z', 'R', 0,         /* augmentation */
        1,                   /* code alignment */
        0x78,                /* data alignment: -8 */
        16,                  /* return address register: rip */
        1, 0x00,             /* augmentation data: FDE addresses are DW_EH_PE_absptr */
        0x0c, 7, 8,          /* DW_CFA_def_cfa rsp, 8 */
        0x90, 1,             /* DW_CFA_offset rip, CFA-8 */
        0, 0, 0,             /* DW_CFA_nop padding */
    };
    size_t n = 0;
    uint32_t len = sizeof cie_body;
    n += put(eh + n, &len, 4);
    n += put(eh + n, cie_body, sizeof cie_body);
    static const uint8_t fde_tail[] = {
        0,                   /* augmentation data length */
        0x44, 0x0e, 16,      /* advance 4 (after the sub): DW_CFA_def_cfa_offset 16 */
        0x46, 0x0e, 8,       /* advance 6 (after the add): DW_CFA_def_cfa_offset 8 */
        0, 0, 0, 0, 0, 0,    /* DW_CFA_nop padding */
    };
    len = 4 + 8 + 8 + sizeof fde_tail;
    n += put(eh + n, &len, 4);
    uint32_t cie_pointer = (uint32_t)n; /* from this field back to the CIE, at offset 0 */
    n += put(eh + n, &cie_pointer, 4);
    uint64_t range = sizeof CODE;
    n += put(eh + n, &pc, 8);
    n += put(eh + n, &range, 8);
    n += put(eh + n, fde_tail, sizeof fde_tail);
    uint32_t end = 0;
    put(eh + n, &end, 4);
}

int main(void) {
    uint8_t *mem = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memcpy(mem, CODE, sizeof CODE);
    if (mprotect(mem, 4096, PROT_READ | PROT_EXEC) != 0) {
        perror("mprotect");
        return 1;
    }
    static uint64_t eh_storage[16];
    uint8_t *eh = (uint8_t *)eh_storage;
    eh_frame(eh, (uint64_t)(uintptr_t)mem);
    __register_frame(eh);
    jit_caller((generated)mem);
    __deregister_frame(eh);
    munmap(mem, 4096);
    return 0;
}
