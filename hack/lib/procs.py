#!/usr/bin/env python3
"""Finds and signals the processes a harness run started, and never any other.

    procs.py list   SELECTION                 PIDs, one a line; exit 1 when there is none
    procs.py signal SIG SELECTION             sends SIG (TERM, KILL, 15, ...) to each
    procs.py stop   SELECTION [--grace S]     TERM, up to S seconds (default 5) for them to
                                              exit, then KILL until none is left (5 s more)

SELECTION: at least one --cgroup, --ppid or --cmdline-has; every test given must hold.
    --cgroup DIR        in the cgroup DIR or one below it (DIR: a directory of a mounted
                        cgroup hierarchy; repeatable, any of them)
    --ppid PID          a child of PID (repeatable, any of them)
    --cmdline-has TEXT  whose command line holds TEXT, e.g. a path under the run's own temp
                        directory (repeatable, all of them)
    --pid PID           only this process (repeatable, any of them)

A run's cgroup (uniquely named, made by the run, removed by it), a process's parent and a path
in the run's own temp directory are facts that cannot be reused while this looks: a PID, a process name, a port or a namespace
inode number can (the kernel hands a freed namespace number to the next new namespace at once).
Each candidate is pinned with a pidfd before it is checked, and the signal goes through that
pidfd: when the PID was freed and reused in between, the signal reaches the process that was
checked, or nobody (ESRCH). The caller and its ancestors are never chosen.
"""

import argparse
import os
import select
import signal
import sys
import time


def cgroup_members(dirs):
    pids = set()
    for d in dirs:
        for root, _, _ in os.walk(d):
            try:
                with open(os.path.join(root, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except OSError:
                pass  # removed while we walked
    return pids


def state_and_parent(pid):
    """(state letter, parent PID) from /proc/PID/stat; (None, None) when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None, None
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def parent_of(pid):
    return state_and_parent(pid)[1]


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ancestors():
    out, pid = set(), os.getpid()
    while pid and pid not in out:
        out.add(pid)
        pid = parent_of(pid)
    return out


def candidates(args):
    if args.cgroup:
        pids = cgroup_members(args.cgroup)
    else:
        pids = {int(p.name) for p in os.scandir("/proc") if p.name.isdigit()}
    if args.pid:
        pids &= set(args.pid)
    return pids - ancestors()


def selected(args):
    """{pid: pidfd} of the processes that match, each checked after it was pinned."""
    pinned = {}
    for pid in candidates(args):
        try:
            pinned[pid] = os.pidfd_open(pid)
        except OSError:
            pass  # gone
    # Checked again now that each is pinned: a PID reused before its pidfd_open is a process
    # that fails these tests (or one that passes them, and so is ours as well).
    keep = candidates(args) if args.cgroup else set(pinned)
    # A zombie has exited already: nothing to signal, only its parent's wait to come.
    stats = {p: state_and_parent(p) for p in keep}
    keep = {p for p, (st, pp) in stats.items()
            if st not in (None, "Z", "X") and (not args.ppid or pp in args.ppid)
            and all(t in cmdline(p) for t in args.cmdline_has)}
    for pid in list(pinned):
        if pid not in keep:
            os.close(pinned.pop(pid))
    return pinned


def send(pinned, sig):
    sent = []
    for pid, fd in sorted(pinned.items()):
        try:
            signal.pidfd_send_signal(fd, sig)
            sent.append(pid)
        except ProcessLookupError:
            pass  # it exited after it was pinned
    return sent


def wait_exit(pinned, seconds):
    """Waits until every pinned process has exited or `seconds` passed; True when all did."""
    deadline = time.monotonic() + seconds
    left = dict(pinned)
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        p = select.poll()
        for fd in left.values():
            p.register(fd, select.POLLIN)
        for fd, _ in p.poll(remaining * 1000):
            for pid, f in list(left.items()):
                if f == fd:
                    del left[pid]
    return True


def close(pinned):
    for fd in pinned.values():
        os.close(fd)


def parse_signal(s):
    if s.isdigit():
        return int(s)
    name = s.upper()
    return int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("verb", choices=["list", "signal", "stop"])
    ap.add_argument("sig", nargs="?", help="the signal (signal only)")
    ap.add_argument("--cgroup", action="append", default=[])
    ap.add_argument("--ppid", action="append", type=int, default=[])
    ap.add_argument("--pid", action="append", type=int, default=[])
    ap.add_argument("--cmdline-has", action="append", default=[])
    ap.add_argument("--grace", type=float, default=5.0)
    args = ap.parse_args()
    if not args.cgroup and not args.ppid and not args.cmdline_has:
        ap.error("choose processes by --cgroup, --ppid or --cmdline-has (a PID alone can be "
                 "reused)")
    if (args.verb == "signal") != (args.sig is not None):
        ap.error("a signal is given with `signal` and only then")
    if args.cgroup:
        # A run that never made its cgroup (or already removed it) has nothing in it.
        args.cgroup = [d for d in args.cgroup if os.path.isfile(os.path.join(d, "cgroup.procs"))]
        if not args.cgroup:
            return 1 if args.verb == "list" else 0

    if args.verb == "list":
        pinned = selected(args)
        close(pinned)
        for pid in sorted(pinned):
            print(pid)
        return 0 if pinned else 1
    if args.verb == "signal":
        pinned = selected(args)
        for pid in send(pinned, parse_signal(args.sig)):
            print(pid)
        close(pinned)
        return 0

    # stop: TERM, a grace period, then KILL for what is left and whatever appeared meanwhile.
    pinned = selected(args)
    termed = send(pinned, signal.SIGTERM)
    wait_exit(pinned, args.grace)
    close(pinned)
    killed = set()
    deadline = time.monotonic() + 5
    while True:
        pinned = selected(args)
        if not pinned:
            break
        killed.update(send(pinned, signal.SIGKILL))
        wait_exit(pinned, 0.5)
        close(pinned)
        if time.monotonic() > deadline:
            left = sorted(selected(args))
            print("procs.py: still running after SIGKILL: %s" % left, file=sys.stderr)
            return 1
    if killed:
        print("procs.py: SIGKILL for %s (did not exit on SIGTERM)" % sorted(killed),
              file=sys.stderr)
    for pid in termed:
        print(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
