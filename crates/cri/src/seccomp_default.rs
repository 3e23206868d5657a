//! containerd 1.6's default seccomp profile (`RuntimeDefault` in CRI), as the OCI
//! `linux.seccomp` object.
//!
//! This mirrors `DefaultProfile` of containerd's `contrib/seccomp` package (release 1.6, read
//! at tag v1.6.39), which containerd's CRI plugin installs for a `RuntimeDefault` security
//! profile: deny with the runtime's default errno (EPERM) unless a rule allows the call; a base
//! allow-list; `personality(2)` only for a few personas; per-architecture extras; extra calls
//! for each capability in the bounding set; and, without `CAP_SYS_ADMIN`, `clone(2)` only
//! without namespace flags and `clone3(2)` answered with ENOSYS so libc falls back to `clone`.
//!
//! The output follows Go's JSON encoding of `specs.LinuxSeccomp`: empty `args`, a zero
//! `valueTwo` and empty `architectures` are left out, and there is no `defaultErrnoRet`.

use std::sync::OnceLock;

use serde_json::{Value, json};

/// Calls every container may make, whatever its capabilities (356 names).
#[rustfmt::skip]
const BASE_ALLOW: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "io_uring_enter",
    "io_uring_register", "io_uring_setup", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link",
    "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "map_shadow_stack", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socket", "socketcall", "socketpair",
    "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice",
    "wait4", "waitid", "waitpid", "write", "writev",
];

/// `personality(2)` arguments allowed: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff (query the current persona).
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
/// CLONE_NEWNET: the flags `clone(2)` may not carry without `CAP_SYS_ADMIN`.
const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

/// Calls a capability in the bounding set adds, one rule per capability, in containerd's words.
const CAP_ALLOW: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The default profile for a process whose capability set (bounding) is `caps`
/// (names like "CAP_SYS_ADMIN"), for the host architecture.
pub(crate) fn default_profile(caps: &[String]) -> Value {
    profile_for(host_goarch(), caps, kernel_at_least(4, 8))
}

/// The profile for Go architecture `goarch`; `ptrace_by_kernel` is whether the host kernel is
/// 4.8 or newer (where seccomp can no longer be bypassed with ptrace, so containerd allows it).
fn profile_for(goarch: &str, caps: &[String], ptrace_by_kernel: bool) -> Value {
    let mut rules = vec![allow(BASE_ALLOW)];
    rules.extend(PERSONAS.iter().map(|&persona| {
        json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}],
        })
    }));
    if ptrace_by_kernel {
        rules.push(allow(&["ptrace"]));
    }
    let extra = arch_allow(goarch);
    if !extra.is_empty() {
        rules.push(allow(extra));
    }

    // One rule per capability, in the bounding set's order (repeats included), as containerd.
    let mut admin = false;
    for cap in caps {
        admin |= cap == "CAP_SYS_ADMIN";
        if let Some((_, names)) = CAP_ALLOW.iter().find(|(c, _)| *c == cap.as_str()) {
            rules.push(allow(names));
        }
    }

    if !admin {
        // s390's clone(2) takes the flags as its second argument.
        let index = if matches!(goarch, "s390" | "s390x") {
            1
        } else {
            0
        };
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": index, "value": CLONE_NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        rules.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": enosys(goarch),
        }));
    }

    let mut profile = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules});
    let arches = architectures(goarch);
    if !arches.is_empty() {
        profile["architectures"] = json!(arches);
    }
    profile
}

/// An unconditional allow rule.
fn allow(names: &[&str]) -> Value {
    json!({"names": names, "action": "SCMP_ACT_ALLOW"})
}

/// The host's architecture as Go's `GOARCH` spells it ("" when containerd has no case for it).
fn host_goarch() -> &'static str {
    let little = cfg!(target_endian = "little");
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" if little => "ppc64le",
        "powerpc64" => "ppc64",
        "mips64" if little => "mips64le",
        "mips64" => "mips64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        _ => "",
    }
}

/// The seccomp architectures the filter covers. containerd lists none for some
/// architectures (386, arm, ppc64le), and then the field is left out.
fn architectures(goarch: &str) -> &'static [&'static str] {
    match goarch {
        "amd64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "arm64" => &["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"],
        "mips64" => &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32"],
        "s390x" => &["SCMP_ARCH_S390", "SCMP_ARCH_S390X"],
        "riscv64" => &["SCMP_ARCH_RISCV64"],
        _ => &[],
    }
}

/// Architecture-specific calls allowed to everyone.
fn arch_allow(goarch: &str) -> &'static [&'static str] {
    match goarch {
        "ppc64le" => &["sync_file_range2", "swapcontext"],
        "arm" | "arm64" => &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        "amd64" => &["arch_prctl", "modify_ldt"],
        "386" => &["modify_ldt"],
        "s390" | "s390x" => &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        "riscv64" => &["riscv_flush_icache"],
        _ => &[],
    }
}

/// ENOSYS as the architecture numbers it (MIPS differs from the generic 38).
fn enosys(goarch: &str) -> u32 {
    if goarch.starts_with("mips") { 89 } else { 38 }
}

/// Whether the running kernel is `major.minor` or newer; false when its release is unreadable,
/// as containerd then leaves the rule out.
fn kernel_at_least(major: u64, minor: u64) -> bool {
    static RELEASE: OnceLock<Option<(u64, u64)>> = OnceLock::new();
    let release = RELEASE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|s| parse_release(&s))
    });
    release.is_some_and(|v| v >= (major, minor))
}

/// The leading "major.minor" of a kernel release such as "6.1.0-13-amd64".
fn parse_release(release: &str) -> Option<(u64, u64)> {
    fn number(s: &str) -> Option<(u64, &str)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        Some((s[..end].parse().ok()?, &s[end..]))
    }
    let (major, rest) = number(release.trim_start())?;
    let (minor, _) = number(rest.strip_prefix('.')?)?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The capabilities containerd's CRI gives a container by default.
    const CRI_DEFAULT_CAPS: &[&str] = berth_runtime::defaults::CAPABILITIES;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn rules(p: &Value) -> &Vec<Value> {
        p["syscalls"].as_array().expect("syscalls")
    }

    fn names(rule: &Value) -> Vec<&str> {
        rule["names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().expect("name"))
            .collect()
    }

    /// Names in unconditional allow rules, one per occurrence.
    fn allowed(p: &Value) -> Vec<&str> {
        rules(p)
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
            .flat_map(names)
            .collect()
    }

    /// The rules that name `name`.
    fn rules_for<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
        rules(p)
            .iter()
            .filter(|r| names(r).contains(&name))
            .collect()
    }

    #[test]
    fn default_action_is_errno_without_errno_ret() {
        let p = profile_for("amd64", &[], true);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(p.get("defaultErrnoRet").is_none());
    }

    #[test]
    fn base_list_is_complete_and_unique() {
        assert_eq!(BASE_ALLOW.len(), 356);
        let set: HashSet<_> = BASE_ALLOW.iter().collect();
        assert_eq!(set.len(), BASE_ALLOW.len());
        let p = profile_for("amd64", &[], false);
        let allowed = allowed(&p);
        for name in [
            "read",
            "write",
            "execve",
            "openat",
            "futex",
            "name_to_handle_at",
        ] {
            assert!(allowed.contains(&name), "{name}");
        }
    }

    #[test]
    fn personality_only_for_listed_personas() {
        let p = profile_for("amd64", &[], false);
        let rules = rules_for(&p, "personality");
        assert_eq!(rules.len(), PERSONAS.len());
        let values: Vec<u64> = rules
            .iter()
            .map(|r| {
                assert_eq!(r["action"], "SCMP_ACT_ALLOW");
                let args = r["args"].as_array().expect("args");
                assert_eq!(args.len(), 1);
                assert_eq!(args[0]["index"], 0);
                assert_eq!(args[0]["op"], "SCMP_CMP_EQ");
                assert!(args[0].get("valueTwo").is_none());
                args[0]["value"].as_u64().expect("value")
            })
            .collect();
        assert_eq!(values, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
    }

    #[test]
    fn clone_restricted_without_sys_admin() {
        let p = profile_for("amd64", &caps(CRI_DEFAULT_CAPS), true);
        let clone = rules_for(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(
            *clone[0],
            json!({
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 2_114_060_288_u64, "op": "SCMP_CMP_MASKED_EQ"}],
            })
        );
        let clone3 = rules_for(&p, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(
            *clone3[0],
            json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
        );

        let s390 = profile_for("s390x", &[], true);
        assert_eq!(rules_for(&s390, "clone")[0]["args"][0]["index"], 1);
    }

    #[test]
    fn sys_admin_allows_clone_and_mount() {
        let p = profile_for("amd64", &caps(CRI_DEFAULT_CAPS), true);
        assert!(!allowed(&p).contains(&"mount"));
        assert!(rules_for(&p, "mount").is_empty());

        let p = profile_for("amd64", &caps(&["CAP_SYS_ADMIN"]), true);
        let allowed = allowed(&p);
        for name in [
            "mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf",
        ] {
            assert!(allowed.contains(&name), "{name}");
        }
        // No restricted clone rule and no ENOSYS for clone3.
        assert_eq!(rules_for(&p, "clone").len(), 1);
        assert!(rules(&p).iter().all(|r| r["action"] == "SCMP_ACT_ALLOW"));
    }

    #[test]
    fn ptrace_needs_cap_or_new_kernel() {
        let p = profile_for("amd64", &caps(CRI_DEFAULT_CAPS), false);
        assert!(rules_for(&p, "ptrace").is_empty());
        let p = profile_for("amd64", &caps(&["CAP_SYS_PTRACE"]), false);
        let allowed = allowed(&p);
        for name in ["ptrace", "kcmp", "process_vm_readv", "pidfd_getfd"] {
            assert!(allowed.contains(&name), "{name}");
        }
        // containerd allows ptrace to everyone on kernels from 4.8 on.
        let p = profile_for("amd64", &[], true);
        assert_eq!(rules_for(&p, "ptrace").len(), 1);
        assert!(!allowed_has(&p, "kcmp"));
    }

    fn allowed_has(p: &Value, name: &str) -> bool {
        allowed(p).contains(&name)
    }

    #[test]
    fn capability_rules() {
        for (cap, name) in [
            ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
            ("CAP_SYS_BOOT", "reboot"),
            ("CAP_SYS_CHROOT", "chroot"),
            ("CAP_SYS_MODULE", "finit_module"),
            ("CAP_SYS_PACCT", "acct"),
            ("CAP_SYS_RAWIO", "iopl"),
            ("CAP_SYS_TIME", "clock_settime"),
            ("CAP_SYS_TTY_CONFIG", "vhangup"),
            ("CAP_SYS_NICE", "mbind"),
            ("CAP_SYSLOG", "syslog"),
            ("CAP_BPF", "bpf"),
            ("CAP_PERFMON", "perf_event_open"),
        ] {
            assert!(
                !allowed_has(&profile_for("amd64", &[], true), name),
                "{name}"
            );
            assert!(
                allowed_has(&profile_for("amd64", &caps(&[cap]), true), name),
                "{cap}"
            );
        }
    }

    #[test]
    fn architectures_and_arch_calls() {
        let p = profile_for("amd64", &[], true);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        assert!(allowed_has(&p, "arch_prctl") && allowed_has(&p, "modify_ldt"));
        assert!(!allowed_has(&p, "set_tls"));

        let p = profile_for("arm64", &[], true);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"])
        );
        for name in [
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "set_tls",
        ] {
            assert!(allowed_has(&p, name), "{name}");
        }
        assert!(!allowed_has(&p, "arch_prctl"));

        let p = profile_for("", &[], true);
        assert!(p.get("architectures").is_none());
        assert_eq!(rules_for(&p, "clone3")[0]["errnoRet"], 38);
    }

    #[test]
    fn host_profile_matches_host_arch() {
        let p = default_profile(&caps(CRI_DEFAULT_CAPS));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(p["architectures"][0], "SCMP_ARCH_X86_64");
        } else if cfg!(target_arch = "aarch64") {
            assert_eq!(p["architectures"][1], "SCMP_ARCH_AARCH64");
        }
    }

    #[test]
    fn every_rule_is_well_formed() {
        for goarch in ["amd64", "arm64", "s390x", ""] {
            for set in [
                &[][..],
                CRI_DEFAULT_CAPS,
                &["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"][..],
            ] {
                let p = profile_for(goarch, &caps(set), true);
                for rule in rules(&p) {
                    assert!(!names(rule).is_empty(), "{rule}");
                    assert!(
                        rule["action"].as_str().is_some_and(|a| !a.is_empty()),
                        "{rule}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_name_allowed_twice() {
        for goarch in ["amd64", "arm64"] {
            for kernel in [false, true] {
                let p = profile_for(goarch, &caps(CRI_DEFAULT_CAPS), kernel);
                let mut seen = HashSet::new();
                for name in allowed(&p) {
                    assert!(seen.insert(name), "{goarch}: {name} allowed twice");
                }
            }
        }
    }

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_release("6.1.0-13-amd64\n"), Some((6, 1)));
        assert_eq!(parse_release("4.8"), Some((4, 8)));
        assert_eq!(parse_release("5.15.0+"), Some((5, 15)));
        assert_eq!(parse_release("6"), None);
        assert_eq!(parse_release("x.y"), None);
    }
}
