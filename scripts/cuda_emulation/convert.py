"""Rewrites a .cu file as C++ for the CPU emulation (fake_cuda/cuda_runtime_api.h):

    python3 convert.py IN.cu OUT.cpp

Local #include "*.cuh" files are inlined (once each, like #pragma once); <<<...>>> launches become
emu::launch(...); the dynamic shared memory declaration becomes the emulator's per-block buffer;
__launch_bounds__(N) becomes a check of the block size at the top of the kernel body (256 for a
kernel without a bound); and
load_quad/store_quad, where present, abort on a misaligned address.
"""
import os
import re
import sys


def inline_includes(path, seen):
    out = []
    for line in open(path):
        m = re.match(r'\s*#include\s+"([^"]+\.cuh)"', line)
        if m:
            inc = os.path.normpath(os.path.join(os.path.dirname(path), m.group(1)))
            if inc not in seen:
                seen.add(inc)
                out.append(inline_includes(inc, seen))
            continue
        if line.strip() == "#pragma once":
            continue
        out.append(line)
    return "".join(out)


def convert(src):
    src, launches = re.subn(r'([\w:]+(?:<[^<>;]*>)?)<<<([^;]*?)>>>\(', r'emu::launch(\1, \2, ', src)
    smem = 'extern __shared__ __align__(32) unsigned char tcestim_dynamic_smem[];'
    assert src.count(smem) <= 1, "one dynamic shared memory declaration expected"
    src = src.replace(smem, 'unsigned char* tcestim_dynamic_smem = emu::smem_base();')
    src, bounds = re.subn(r'__launch_bounds__\(([^()]*(?:\([^()]*\))?[^()]*)\)([^{;]*)\{',
                          r'\2{ emu::check_launch_bounds(\1);', src)
    # Without a bound ptxas may give a kernel 255 registers: only 256 threads fit the 64 K of an SM.
    src, unbounded = re.subn(r'(__global__ void \w+\([^{;]*\{)(?! emu::check_launch_bounds)',
                             r'\1 emu::check_launch_bounds(256);', src)
    code = "\n".join(line.split("//")[0] for line in src.splitlines())
    assert "__launch_bounds__" not in code, "a __launch_bounds__ was not converted"
    check = (' if (reinterpret_cast<uintptr_t>(p) % sizeof(Quad<T>)) {{ std::fprintf(stderr, '
             '"misaligned {}\\n"); std::abort(); }}')
    for head, what in (('__device__ __forceinline__ Quad<T> load_quad(const T* p) {', 'load'),
                       ('__device__ __forceinline__ void store_quad(T* p, const Quad<T>& q) {', 'store')):
        src = src.replace(head, head + check.format(what))
    return '#include <cstdio>\n#include <cstdlib>\n' + src, launches, bounds


if __name__ == "__main__":
    path = os.path.abspath(sys.argv[1])
    src, launches, bounds = convert(inline_includes(path, {path}))
    assert launches >= 1, f"no <<<...>>> launch found in {path}"
    os.makedirs(os.path.dirname(os.path.abspath(sys.argv[2])), exist_ok=True)
    with open(sys.argv[2], "w") as f:
        f.write(src)
    print(f"{os.path.basename(path)}: {launches} launches, {bounds} launch bounds")
