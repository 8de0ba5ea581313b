// CPU kernels compiled for one instruction set: Baseline x86-64 (SSE2) or the compiler's default target elsewhere.
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

#define TCESTIM_ISA isa_default
#if defined(__x86_64__)
#define TCESTIM_VECTOR_BYTES 16
#endif
#include "kernel_instances.inc"
