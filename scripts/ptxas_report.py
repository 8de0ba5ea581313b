"""Registers, spills and stack of every kernel in `nvcc -Xptxas -v` output, as a markdown table.

    python3 scripts/ptxas_report.py ptxas.log [more.log ...]

Works on mangled names (no c++filt needed): a kernel is named by its identifier (letters and
underscores, ending in "kernel" or "kernel_large"), its element type (f/d) and its weights
(Structured/Dense), where present.
"""
import re
import sys


def kernel_label(mangled: str) -> str:
    name = None
    for start in range(len(mangled)):  # a length prefix can follow other digits (namespace ids)
        for end in range(start + 1, min(start + 4, len(mangled))):
            if not mangled[start:end].isdigit():
                break
            candidate = mangled[end:end + int(mangled[start:end])]
            # No digits in a kernel's name: a namespace id's digits can spell a length whose span
            # ends in "kernel" too (e.g. "..._526ec406_919714forward_kernel": 26 chars from "ec406").
            if re.fullmatch(r"[A-Za-z_]+(kernel|kernel_large)", candidate):
                name, rest = candidate, mangled[end + len(candidate):]
                break
        if name is not None:
            break
    if name is None:
        return mangled
    parts = [name]
    if rest.startswith("I"):
        parts.append({"f": "float", "d": "double"}.get(rest[1:2], rest[1:2]))
    for weights in ("Structured", "Dense"):
        if weights + "Weights" in rest:
            parts.append(weights.lower())
    return " ".join(parts)


def parse(lines):
    rows, current = {}, None
    for line in lines:
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = kernel_label(m.group(1))
            rows[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            rows[current].update(stack=int(m.group(1)), stores=int(m.group(2)), loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            rows[current]["registers"] = int(m.group(1))
    return rows


def table(rows) -> str:
    out = ["| kernel | registers | spill stores / loads (bytes) | stack (bytes) |", "|---|---:|---:|---:|"]
    for name in sorted(rows):
        r = rows[name]
        out.append(f"| {name} | {r.get('registers', '?')} | {r.get('stores', '?')} / {r.get('loads', '?')} "
                   f"| {r.get('stack', '?')} |")
    return "\n".join(out)


if __name__ == "__main__":
    lines = []
    for path in sys.argv[1:]:
        with open(path) as f:
            lines += f.readlines()
    print(table(parse(lines)))
