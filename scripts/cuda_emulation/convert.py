"""Rewrites a .cu file for the CPU emulation: <<<...>>> launches -> emu::launch(...), the dynamic
shared memory declaration -> the emulator's per-block buffer, and alignment checks in load_quad/store_quad."""
import re, sys
src = open(sys.argv[1]).read()
src, n = re.subn(r'([\w:]+(?:<[^<>;]*>)?)<<<([^;]*?)>>>\(', r'emu::launch(\1, \2, ', src)
assert n >= 5, n
old = 'extern __shared__ __align__(32) unsigned char tcestim_dynamic_smem[];'
assert old in src
src = src.replace(old, 'unsigned char* tcestim_dynamic_smem = emu::smem_base();')
a = '__device__ __forceinline__ Quad<T> load_quad(const T* p) {'
assert a in src
src = src.replace(a, a + ' if (reinterpret_cast<uintptr_t>(p) % sizeof(Quad<T>)) { std::fprintf(stderr, "misaligned load\\n"); std::abort(); }')
b = '__device__ __forceinline__ void store_quad(T* p, const Quad<T>& q) {'
assert b in src
src = src.replace(b, b + ' if (reinterpret_cast<uintptr_t>(p) % sizeof(Quad<T>)) { std::fprintf(stderr, "misaligned store\\n"); std::abort(); }')
src = '#include <cstdio>\n#include <cstdlib>\n' + src
open(sys.argv[2], 'w').write(src)
print("launches replaced:", n)
