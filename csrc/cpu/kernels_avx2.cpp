// The CPU kernels compiled for AVX2 with FMA and F16C (x86-64 CPUs since 2013/2015), chosen at
// run time when the CPU has them (ops_cpu.cpp): 8-wide vectors and hardware half-float
// conversion, where the baseline has 4-wide SSE2. Library headers come first (kernel_deps.h), so
// that only gradex's own functions below are compiled for the wider target.
#include "kernel_deps.h"

#ifdef GRADEX_HAS_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define GRADEX_CPU_ISA avx2
#include "chain_impl.h"
#include "reduce_stage_impl.h"
#undef GRADEX_CPU_ISA
#pragma GCC pop_options
#endif
