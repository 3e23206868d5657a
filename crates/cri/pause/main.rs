//! `berth-pause`: the first process of a pod sandbox. It holds the pod's namespaces, reaps
//! the zombies of a shared pid namespace, and exits 0 on SIGINT or SIGTERM, as Kubernetes'
//! pause does.
//!
//! It is built by `crates/cri/build.rs` with rustc directly (`panic=abort`, which a cargo
//! profile cannot set for one crate) and embedded in berthd, which makes the pause image from it.
//! It is freestanding (no std, no libc): the whole program is a handful of system calls, so the
//! binary is a few kilobytes and runs from an image with nothing else in it. Signals are blocked
//! and taken with `rt_sigtimedwait`, so no handler runs: that works as pid 1 of a namespace, where
//! the kernel drops signals whose action is the default but still queues blocked ones.

#![cfg_attr(target_arch = "x86_64", no_std)]
#![cfg_attr(target_arch = "x86_64", no_main)]

#[cfg(target_arch = "x86_64")]
mod pause {
    use core::arch::{asm, global_asm};

    const SYS_WRITE: usize = 1;
    const SYS_RT_SIGPROCMASK: usize = 14;
    const SYS_WAIT4: usize = 61;
    const SYS_RT_SIGTIMEDWAIT: usize = 128;
    const SYS_EXIT_GROUP: usize = 231;

    const SIGINT: usize = 2;
    const SIGTERM: usize = 15;
    const SIGCHLD: usize = 17;
    const SIG_BLOCK: usize = 0;
    const WNOHANG: usize = 1;

    /// # Safety
    /// The caller passes arguments valid for system call `n`.
    unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        // SAFETY: the x86_64 Linux system call convention; rcx and r11 are clobbered by the
        // kernel, the caller vouches for the arguments.
        unsafe {
            asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b,
                 in("rdx") c, in("r10") d, lateout("rcx") _, lateout("r11") _,
                 options(nostack));
        }
        ret
    }

    fn write(fd: usize, s: &[u8]) {
        // SAFETY: `s` is a live buffer of `s.len()` bytes.
        unsafe { syscall4(SYS_WRITE, fd, s.as_ptr() as usize, s.len(), 0) };
    }

    fn exit(code: usize) -> ! {
        loop {
            // SAFETY: exit_group takes a status and never returns.
            unsafe { syscall4(SYS_EXIT_GROUP, code, 0, 0, 0) };
        }
    }

    // The entry point: the kernel starts us with the stack holding argc, argv, envp.
    global_asm!(
        ".globl _start",
        "_start:",
        "xor rbp, rbp",
        "mov rdi, rsp",
        "and rsp, -16",
        "call {main}",
        "ud2",
        main = sym pause_main,
    );

    /// # Safety
    /// `sp` is the initial stack pointer the kernel gave `_start`.
    unsafe extern "C" fn pause_main(sp: *const usize) -> ! {
        // SAFETY: the initial stack starts with argc, then argc argument pointers.
        let argc = unsafe { *sp };
        if argc > 1 {
            // SAFETY: argv[1] exists (argc > 1) and is a NUL-terminated string.
            let arg = unsafe { *sp.add(2) } as *const u8;
            // SAFETY: reading the string up to its NUL.
            let (a0, a1) = unsafe { (*arg, if *arg == 0 { 0 } else { *arg.add(1) }) };
            if a0 == b'-' && a1 == b'v' {
                write(1, concat!("berth-pause ", env!("BERTH_PAUSE_VERSION"), "\n").as_bytes());
                exit(0);
            }
        }
        let set: u64 = (1 << (SIGINT - 1)) | (1 << (SIGTERM - 1)) | (1 << (SIGCHLD - 1));
        // SAFETY: a valid signal set of 8 bytes; no old set wanted.
        unsafe { syscall4(SYS_RT_SIGPROCMASK, SIG_BLOCK, &set as *const u64 as usize, 0, 8) };
        loop {
            // SAFETY: waits for a signal of `set`; no siginfo, no timeout.
            let sig = unsafe {
                syscall4(SYS_RT_SIGTIMEDWAIT, &set as *const u64 as usize, 0, 0, 8)
            };
            match sig {
                s if s == SIGINT as isize || s == SIGTERM as isize => {
                    write(2, b"Shutting down, got signal\n");
                    exit(0);
                }
                s if s == SIGCHLD as isize => {
                    // Reap every exited child (orphans of the pid namespace come to us).
                    // SAFETY: wait4 with a null status and rusage.
                    while unsafe { syscall4(SYS_WAIT4, usize::MAX, 0, WNOHANG, 0) } > 0 {}
                }
                _ => {}
            }
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        exit(2)
    }
}

/// On other architectures, a portable (std) pause with the same behaviour.
#[cfg(not(target_arch = "x86_64"))]
fn main() {
    if std::env::args().nth(1).is_some_and(|a| a.starts_with("-v")) {
        println!("berth-pause {}", env!("BERTH_PAUSE_VERSION"));
        return;
    }
    loop {
        std::thread::park();
    }
}
