#!/usr/bin/env python3
"""Writes crates/runtime/src/seccomp/table.rs: syscall numbers by name for x86_64, i386 and x32,
from the kernel headers of Debian's linux-libc-dev (<asm/unistd_{64,32,x32}.h>) plus the syscalls
newer kernels added (ADDED below; extend it when the kernel adds more). Sorted by name, for the
runtime's binary search.

Usage: hack/gen-seccomp-table.py [OUT]     (default: the file in the tree)
"""
import os, re, sys

HEADERS = "/usr/include/x86_64-linux-gnu/asm"
X32_BIT = 0x40000000

# Syscalls after bookworm's headers (which end at 450), up to Linux 6.17, with their generic
# numbers; the architectures that lack one are named.
ADDED = [
    ("cachestat", 451, ()),
    ("fchmodat2", 452, ()),
    ("map_shadow_stack", 453, ("X86",)),
    ("futex_wake", 454, ()),
    ("futex_wait", 455, ()),
    ("futex_requeue", 456, ()),
    ("statmount", 457, ()),
    ("listmount", 458, ()),
    ("lsm_get_self_attr", 459, ()),
    ("lsm_set_self_attr", 460, ()),
    ("lsm_list_modules", 461, ()),
    ("mseal", 462, ()),
    ("setxattrat", 463, ()),
    ("getxattrat", 464, ()),
    ("listxattrat", 465, ()),
    ("removexattrat", 466, ()),
    ("open_tree_attr", 467, ()),
    ("file_getattr", 468, ()),
    ("file_setattr", 469, ()),
]

ARCHES = [("X86_64", "unistd_64.h", 0), ("X86", "unistd_32.h", 0), ("X32", "unistd_x32.h", X32_BIT)]


def read(header):
    out = {}
    for line in open(os.path.join(HEADERS, header)):
        m = re.match(r"#define __NR_(\w+) (?:\(__X32_SYSCALL_BIT \+ )?(\d+)\)?\s*$", line)
        if m:
            bit = X32_BIT if "__X32_SYSCALL_BIT" in line else 0
            out[m.group(1)] = int(m.group(2)) + bit
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        root, "crates/runtime/src/seccomp/table.rs")
    parts = [
        "//! Syscall numbers by name, generated from bookworm's <asm/unistd_{64,32,x32}.h> plus the\n"
        "//! syscalls added up to Linux 6.17 (451-469). Sorted by name for binary search.\n"
        "//! Regenerate with `hack/gen-seccomp-table.py`.\n"
    ]
    for name, header, bit in ARCHES:
        table = read(header)
        for sc, nr, lacking in ADDED:
            if name not in lacking:
                table.setdefault(sc, nr + bit)
        rows = "".join(f'    ("{sc}", {nr}),\n' for sc, nr in sorted(table.items()))
        parts.append(f"pub(crate) const {name}: &[(&str, u32)] = &[\n{rows}];\n")
    open(dest, "w").write("\n".join(parts))


main()
