//! Device access rules: the v1 `devices.allow`/`devices.deny` lines and the v2 eBPF program.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{CgResult, CgroupError};

/// One rule; `None` major/minor means any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow (or deny) what the rule matches.
    pub allow: bool,
    /// 'a', 'b' or 'c'.
    pub kind: char,
    /// Major number, `None` for any.
    pub major: Option<i64>,
    /// Minor number, `None` for any.
    pub minor: Option<i64>,
    /// A subset of "rwm".
    pub access: String,
}

impl DeviceRule {
    pub(crate) fn from_spec(d: &LinuxDeviceCgroup) -> CgResult<Self> {
        let kind = match d.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => 'a',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::P => {
                return Err(CgroupError::Invalid("device rule type", "p".into()));
            }
        };
        let access = d.access().clone().unwrap_or_else(|| "rwm".into());
        if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(CgroupError::Invalid("device rule access", access));
        }
        for n in [d.major(), d.minor()].into_iter().flatten() {
            if n < 0 {
                return Err(CgroupError::Invalid("device rule number", n.to_string()));
            }
        }
        Ok(DeviceRule {
            allow: d.allow(),
            kind,
            major: d.major(),
            minor: d.minor(),
            access,
        })
    }

    fn rule(allow: bool, kind: char, major: Option<i64>, minor: Option<i64>, access: &str) -> Self {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    /// The v1 line: "c 1:3 rwm".
    pub fn v1_line(&self) -> String {
        if self.kind == 'a' {
            return "a".into();
        }
        let n = |v: Option<i64>| v.map_or_else(|| "*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }

    fn access_bits(&self) -> i32 {
        let mut bits = 0;
        for c in self.access.chars() {
            bits |= match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            };
        }
        bits
    }
}

/// The devices runc always allows (on top of the spec's rules): mknod of anything, and the
/// standard character devices.
pub fn default_device_rules() -> Vec<DeviceRule> {
    let c = |maj, min: Option<i64>| DeviceRule::rule(true, 'c', Some(maj), min, "rwm");
    vec![
        DeviceRule::rule(true, 'c', None, None, "m"),
        DeviceRule::rule(true, 'b', None, None, "m"),
        c(1, Some(3)),
        c(1, Some(8)),
        c(1, Some(7)),
        c(5, Some(0)),
        c(1, Some(5)),
        c(1, Some(9)),
        c(5, Some(1)),
        c(136, None),
        c(5, Some(2)),
        c(10, Some(200)),
    ]
}

/// Writes the rules into a v1 devices cgroup. A leading allow-all or deny-all resets the list.
pub(crate) fn apply_v1(dir: &Path, rules: &[DeviceRule]) -> CgResult<()> {
    for r in rules {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        super::write(dir, file, &r.v1_line())?;
    }
    Ok(())
}

// eBPF encoding (linux/bpf.h).
const LDX_W_MEM: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_JEQ_K: u8 = 0x15;
const JMP_EXIT: u8 = 0x95;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BpfInsn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

/// Compiles rules to a `BPF_PROG_TYPE_CGROUP_DEVICE` program. As in v1, the last matching rule
/// wins, and no match means deny; so rules are tested from last to first.
pub(crate) fn compile_v2(rules: &[DeviceRule]) -> Vec<BpfInsn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor
    let mut p = vec![
        insn(LDX_W_MEM, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W_MEM, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_W_MEM, 4, 1, 4, 0),
        insn(LDX_W_MEM, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut block = Vec::new();
        // Each check jumps to the end of the block when it fails; offsets are patched below.
        if r.kind != 'a' {
            let t = if r.kind == 'b' { 1 } else { 2 };
            block.push(insn(JMP_JNE_K, 2, 0, 0, t));
        }
        let bits = r.access_bits();
        if r.kind == 'a' || bits != 7 {
            block.push(insn(ALU64_MOV_X, 1, 3, 0, 0));
            if r.allow {
                // Every requested bit must be granted: (access & !bits) == 0.
                block.push(insn(ALU64_AND_K, 1, 0, 0, !bits & 7));
                block.push(insn(JMP_JNE_K, 1, 0, 0, 0));
            } else {
                // Deny when any requested bit is denied.
                block.push(insn(ALU64_AND_K, 1, 0, 0, bits));
                block.push(insn(JMP_JEQ_K, 1, 0, 0, 0));
            }
        }
        if r.kind != 'a' {
            if let Some(m) = r.major {
                block.push(insn(JMP_JNE_K, 4, 0, 0, m as i32));
            }
            if let Some(m) = r.minor {
                block.push(insn(JMP_JNE_K, 5, 0, 0, m as i32));
            }
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K || ins.code == JMP_JEQ_K {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    // Later fields stay zero; the kernel accepts a shorter attr.
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the program and attaches it to the cgroup directory.
pub(crate) fn attach_v2(dir: &Path, rules: &[DeviceRule]) -> CgResult<()> {
    let prog = compile_v2(rules);
    let license = c"Apache-2.0";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr points at live memory of the declared sizes for the whole call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(CgroupError::Io {
            op: "load device program for",
            path: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the kernel just returned this new fd to us.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir_file = std::fs::File::open(dir).map_err(super::io_err("open", dir))?;
    let attach = ProgAttachAttr {
        target_fd: dir_file.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: as above.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(CgroupError::Io {
            op: "attach device program to",
            path: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions compile_v2 emits, so the program's decisions are
    /// checked without the kernel.
    fn run(p: &[BpfInsn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [kind | (access << 16), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W_MEM => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JMP_JEQ_K if r[dst] == i.imm as i64 as u64 => pc += i.off as usize,
                JMP_JNE_K | JMP_JEQ_K => {}
                JMP_EXIT => return r[0],
                c => panic!("unexpected code {c:#x}"),
            }
        }
    }

    #[test]
    fn v2_program_last_match_wins() {
        let mut rules = vec![DeviceRule::rule(false, 'a', None, None, "rwm")];
        rules.extend(default_device_rules());
        rules.push(DeviceRule::rule(false, 'c', Some(1), Some(9), "w"));
        let p = compile_v2(&rules);
        let (c, b) = (2, 1);
        assert_eq!(run(&p, c, 2 | 4, 1, 3), 1, "rw /dev/null");
        assert_eq!(run(&p, c, 2, 1, 9), 1, "read urandom");
        assert_eq!(run(&p, c, 4, 1, 9), 0, "write urandom denied by last rule");
        assert_eq!(run(&p, b, 2, 8, 0), 0, "read sda");
        assert_eq!(run(&p, b, 1, 8, 0), 1, "mknod any block");
        assert_eq!(run(&p, c, 2, 136, 7), 1, "any pts");
        let allow_all = compile_v2(&[DeviceRule::rule(true, 'a', None, None, "rwm")]);
        assert_eq!(run(&allow_all, b, 7, 8, 0), 1);
    }

    #[test]
    fn v1_lines() {
        let r = DeviceRule::rule(true, 'c', Some(136), None, "rwm");
        assert_eq!(r.v1_line(), "c 136:* rwm");
        assert_eq!(
            DeviceRule::rule(false, 'a', None, None, "rwm").v1_line(),
            "a"
        );
    }
}

/// The v2 program through the real verifier: this host has a cgroup2 mount (with no
/// controllers) at /sys/fs/cgroup/unified, enough to attach a device program and test it.
#[cfg(test)]
mod kernel_tests {
    use super::*;

    #[test]
    fn v2_program_enforced_by_the_kernel() {
        let unified = Path::new("/sys/fs/cgroup/unified");
        let base = if unified.join("cgroup.procs").exists() {
            unified.to_path_buf()
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Path::new("/sys/fs/cgroup").to_path_buf()
        } else {
            eprintln!("no cgroup2 mount; skipped");
            return;
        };
        let dir = base.join(format!("berth-test-dev-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        struct Rm(std::path::PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        // Deny everything, then allow /dev/zero read-only.
        let rules = vec![
            DeviceRule::rule(false, 'a', None, None, "rwm"),
            DeviceRule::rule(true, 'c', Some(1), Some(5), "r"),
        ];
        attach_v2(&dir, &rules).unwrap();
        // A child in that cgroup reports which opens work, through its exit code.
        let procs = dir.join("cgroup.procs");
        // SAFETY: the test process forks a child that only does syscalls and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = (|| {
                std::fs::write(&procs, "0").ok()?;
                let zero_r = std::fs::File::open("/dev/zero").is_ok();
                let zero_w = std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/zero")
                    .is_ok();
                let null_r = std::fs::File::open("/dev/null").is_ok();
                Some(i32::from(zero_r) | (i32::from(zero_w) << 1) | (i32::from(null_r) << 2))
            })()
            .unwrap_or(64);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            1,
            "only reading /dev/zero is allowed"
        );
    }
}
