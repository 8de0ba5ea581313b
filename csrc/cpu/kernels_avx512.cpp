// CPU kernels compiled for one instruction set: AVX-512F (x86-64 only).
// Standard headers come first so that only the kernels are compiled for the target.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx512f,avx2,fma")
#define TCESTIM_ISA isa_avx512
#define TCESTIM_VECTOR_BYTES 64
#include "kernel_instances.inc"
#endif
