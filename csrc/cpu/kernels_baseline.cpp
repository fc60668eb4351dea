// The CPU kernels for the compiler's baseline target (x86-64: SSE2; any other architecture: its
// default). Used where the CPU lacks AVX2, or when GRADEX_CPU_ISA=baseline asks for it.
#include "kernel_deps.h"

#define GRADEX_CPU_ISA baseline
#include "chain_impl.h"
#include "reduce_stage_impl.h"
#undef GRADEX_CPU_ISA
