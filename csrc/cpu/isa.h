// Which instruction set the including translation unit compiles the CPU kernels for.
//
// kernels_{default,avx2,avx512}.cpp each define TCESTIM_ISA (a namespace name) and
// TCESTIM_VECTOR_BYTES before including the kernels under a `#pragma GCC target`, so the three copies
// never share a symbol; kernel_table.cpp picks one at run time. Code that includes the kernels
// directly (the C++ unit tests) gets the compiler's own target.
#ifndef TCESTIM_ISA
#define TCESTIM_ISA isa_native
#endif

#ifndef TCESTIM_VECTOR_BYTES
#if defined(__AVX512F__)
#define TCESTIM_VECTOR_BYTES 64
#elif defined(__AVX__)
#define TCESTIM_VECTOR_BYTES 32
#else
#define TCESTIM_VECTOR_BYTES 16
#endif
#endif
