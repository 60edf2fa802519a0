"""What fresh anonymous memory costs this machine, in 4 KiB pages and in huge pages.

    python benchmarks/fresh_memory.py [--mib 224] [--rounds 3] [--pause 3]

A memtable's arena takes its memory from the kernel 2 MiB at a time, and the kernel
zeroes each page before the process sees it.  On a bare machine that costs about the
same per byte whatever the page size.  Under a hypervisor that backs guest memory
lazily (and takes back what the guest frees), a page the guest has not used lately
first costs the host a fault of its own, and huge pages may be far dearer than 4 KiB
ones.  This script measures it: each round maps --mib MiB in 2 MiB pieces, each piece
in a fresh process, three ways in turn, with a pause of --pause seconds before each (so
that what the previous one freed is as cold as after any pause):

  small        mmap(MAP_POPULATE): 4 KiB pages, backed by the mmap call
  small-lazy   4 KiB pages faulted in one by one as they are first written
  huge         madvise(MADV_HUGEPAGE), then one write per 4 KiB: a 2 MiB page per fault
               where the kernel has transparent huge pages (otherwise 4 KiB pages)

and prints microseconds per 4 KiB for each, round by round, and their medians.
"""
import argparse
import mmap
import statistics
import subprocess
import sys
import time

PIECE = 2 << 20
PAGE = 4096


def child(mode, mib):
    pieces = []
    started = time.perf_counter()
    for _ in range(mib // 2):
        if mode == "small":
            m = mmap.mmap(-1, PIECE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                          | mmap.MAP_POPULATE)
        else:
            m = mmap.mmap(-1, PIECE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if mode == "huge":
                m.madvise(mmap.MADV_HUGEPAGE)
            for offset in range(0, PIECE, PAGE):
                m[offset] = 1
        pieces.append(m)
    took = time.perf_counter() - started
    print(took * 1e6 / (mib * 256))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause", type=float, default=3.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.mib)
        return 0
    modes = ("small", "small-lazy", "huge")
    got = {mode: [] for mode in modes}
    print("| round | " + " | ".join("%s us/4K" % m for m in modes) + " |")
    print("|---|" + "---:|" * len(modes))
    for r in range(args.rounds):
        row = []
        for mode in modes:
            time.sleep(args.pause)
            out = subprocess.run([sys.executable, __file__, "--child", mode,
                                  "--mib", str(args.mib)],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            got[mode].append(float(out.split()[-1]))
            row.append("%.2f" % got[mode][-1])
        print("| %d | %s |" % (r + 1, " | ".join(row)))
    print("| median | %s |" % " | ".join("%.2f" % statistics.median(got[m]) for m in modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
