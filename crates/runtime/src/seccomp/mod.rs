//! The spec's seccomp filter compiled to classic BPF by this crate.
//!
//! Why our own compiler: libseccomp needs libseccomp-dev at build time and a C library at run
//! time, and seccompiler can express neither NOTIFY nor multi-arch (x86_64 + x86 + x32)
//! profiles; the OCI profile needs both. The program is a per-arch dispatch, then for each
//! syscall named by the profile a compare-and-jump into its rule block; argument conditions
//! compare the two 32-bit halves of each 64-bit argument. Compiled programs are cached in
//! memory (for a long-lived caller such as the shim) and on disk under the state root (for the
//! one-shot CLI), keyed by the SHA-256 of the profile's JSON.

mod table;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
    LinuxSyscall,
};
use sha2::Digest;

/// Seccomp errors.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The spec's filter is not valid (what is wrong).
    #[error("seccomp: {0}")]
    Invalid(String),
    /// The compiled program has more instructions than the kernel takes.
    #[error("seccomp: program too large ({0} instructions)")]
    TooLarge(usize),
    /// The kernel refused the filter.
    #[error("seccomp: load filter")]
    Load(#[source] std::io::Error),
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const ALU_AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const X32_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// A compiled filter plus its load flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The instructions.
    pub insns: Vec<SockFilter>,
    /// `SECCOMP_FILTER_FLAG_*` to load it with.
    pub flags: u32,
    /// True when some rule returns SECCOMP_RET_USER_NOTIF (a listener fd is created).
    pub notify: bool,
}

fn action(a: LinuxSeccompAction, errno: Option<u32>, default_errno: u32) -> u32 {
    let e = errno.unwrap_or(default_errno) & 0xffff;
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => RET_KILL_THREAD,
        LinuxSeccompAction::ScmpActKillProcess => RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => RET_ERRNO | e,
        LinuxSeccompAction::ScmpActNotify => RET_USER_NOTIF,
        LinuxSeccompAction::ScmpActTrace => RET_TRACE | e,
        LinuxSeccompAction::ScmpActLog => RET_LOG,
        LinuxSeccompAction::ScmpActAllow => RET_ALLOW,
    }
}

/// Jump targets before resolution.
#[derive(Debug, Clone, Copy)]
enum T {
    Next,
    L(usize),
}

#[derive(Debug)]
enum Op {
    Ld(u32),
    And(u32),
    Jmp(u16, u32, T, T),
    Ja(usize),
    Ret(u32),
    Label(usize),
}

#[derive(Debug, Default)]
struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }

    fn finish(self) -> Result<Vec<SockFilter>, SeccompError> {
        let mut pos = vec![0usize; self.labels];
        let mut n = 0;
        for op in &self.ops {
            match op {
                Op::Label(l) => pos[*l] = n,
                _ => n += 1,
            }
        }
        if n > 4096 {
            return Err(SeccompError::TooLarge(n));
        }
        let mut out = Vec::with_capacity(n);
        let rel = |pc: usize, t: T| -> Result<u8, SeccompError> {
            match t {
                T::Next => Ok(0),
                T::L(l) => {
                    let d = pos[l] - pc - 1;
                    u8::try_from(d).map_err(|_| SeccompError::TooLarge(n))
                }
            }
        };
        for op in &self.ops {
            let pc = out.len();
            let ins = match *op {
                Op::Label(_) => continue,
                Op::Ld(off) => SockFilter {
                    code: LD_W_ABS,
                    jt: 0,
                    jf: 0,
                    k: off,
                },
                Op::And(k) => SockFilter {
                    code: ALU_AND_K,
                    jt: 0,
                    jf: 0,
                    k,
                },
                Op::Jmp(code, k, jt, jf) => SockFilter {
                    code,
                    jt: rel(pc, jt)?,
                    jf: rel(pc, jf)?,
                    k,
                },
                Op::Ja(l) => SockFilter {
                    code: JMP_JA,
                    jt: 0,
                    jf: 0,
                    k: (pos[l] - pc - 1) as u32,
                },
                Op::Ret(k) => SockFilter {
                    code: RET_K,
                    jt: 0,
                    jf: 0,
                    k,
                },
            };
            out.push(ins);
        }
        Ok(out)
    }
}

fn arg_lo(i: usize) -> u32 {
    16 + 8 * i as u32
}

fn arg_hi(i: usize) -> u32 {
    16 + 8 * i as u32 + 4
}

/// Emits one argument condition: falls through when it holds, jumps to `fail` otherwise.
fn emit_cond(
    a: &mut Asm,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    two: u64,
    fail: usize,
) {
    let (vhi, vlo) = ((value >> 32) as u32, value as u32);
    let f = T::L(fail);
    match op {
        LinuxSeccompOperator::ScmpCmpEq => {
            a.ops.push(Op::Ld(arg_hi(index)));
            a.ops.push(Op::Jmp(JMP_JEQ_K, vhi, T::Next, f));
            a.ops.push(Op::Ld(arg_lo(index)));
            a.ops.push(Op::Jmp(JMP_JEQ_K, vlo, T::Next, f));
        }
        LinuxSeccompOperator::ScmpCmpNe => {
            let ok = a.label();
            a.ops.push(Op::Ld(arg_hi(index)));
            a.ops.push(Op::Jmp(JMP_JEQ_K, vhi, T::Next, T::L(ok)));
            a.ops.push(Op::Ld(arg_lo(index)));
            a.ops.push(Op::Jmp(JMP_JEQ_K, vlo, f, T::Next));
            a.ops.push(Op::Label(ok));
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (thi, tlo) = ((two >> 32) as u32, two as u32);
            a.ops.push(Op::Ld(arg_hi(index)));
            a.ops.push(Op::And(vhi));
            a.ops.push(Op::Jmp(JMP_JEQ_K, thi, T::Next, f));
            a.ops.push(Op::Ld(arg_lo(index)));
            a.ops.push(Op::And(vlo));
            a.ops.push(Op::Jmp(JMP_JEQ_K, tlo, T::Next, f));
        }
        LinuxSeccompOperator::ScmpCmpGt
        | LinuxSeccompOperator::ScmpCmpGe
        | LinuxSeccompOperator::ScmpCmpLt
        | LinuxSeccompOperator::ScmpCmpLe => {
            // Unsigned 64-bit compare: the high words decide unless they are equal.
            let ok = a.label();
            let greater_ok = matches!(
                op,
                LinuxSeccompOperator::ScmpCmpGt | LinuxSeccompOperator::ScmpCmpGe
            );
            a.ops.push(Op::Ld(arg_hi(index)));
            let (hi_gt, hi_lt) = if greater_ok {
                (T::L(ok), f)
            } else {
                (f, T::L(ok))
            };
            a.ops.push(Op::Jmp(JMP_JGT_K, vhi, hi_gt, T::Next));
            a.ops.push(Op::Jmp(JMP_JEQ_K, vhi, T::Next, hi_lt));
            a.ops.push(Op::Ld(arg_lo(index)));
            match op {
                LinuxSeccompOperator::ScmpCmpGt => a.ops.push(Op::Jmp(JMP_JGT_K, vlo, T::Next, f)),
                LinuxSeccompOperator::ScmpCmpGe => a.ops.push(Op::Jmp(JMP_JGE_K, vlo, T::Next, f)),
                LinuxSeccompOperator::ScmpCmpLt => a.ops.push(Op::Jmp(JMP_JGE_K, vlo, f, T::Next)),
                _ => a.ops.push(Op::Jmp(JMP_JGT_K, vlo, f, T::Next)),
            }
            a.ops.push(Op::Label(ok));
        }
    }
}

fn lookup(table: &[(&str, u32)], name: &str) -> Option<u32> {
    table
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| table[i].1)
}

/// Compiles a profile for the native arch (x86_64, with x86 and x32 if listed).
pub fn compile(s: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let default_errno = s.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(s.default_action(), None, default_errno);
    let archs: Vec<Arch> = s.architectures().clone().unwrap_or_default();
    let want =
        |a: Arch| archs.is_empty() || archs.contains(&a) || archs.contains(&Arch::ScmpArchNative);
    for a in &archs {
        if !matches!(
            a,
            Arch::ScmpArchNative | Arch::ScmpArchX86_64 | Arch::ScmpArchX86 | Arch::ScmpArchX32
        ) {
            // Other arches cannot occur on this machine's syscall entry; ignore as runc does
            // for arches the kernel cannot run.
            continue;
        }
    }
    let mut notify = default == RET_USER_NOTIF;
    let syscalls: &[LinuxSyscall] = s.syscalls().as_deref().unwrap_or(&[]);
    for sc in syscalls {
        if sc.action() == LinuxSeccompAction::ScmpActNotify {
            notify = true;
        }
        for arg in sc.args().iter().flatten() {
            if arg.index() > 5 {
                return Err(SeccompError::Invalid(format!(
                    "argument index {} > 5",
                    arg.index()
                )));
            }
        }
    }
    let mut a = Asm::default();
    let kill = RET_KILL_PROCESS;
    let l64 = a.label();
    let l32 = a.label();
    a.ops.push(Op::Ld(4));
    a.ops
        .push(Op::Jmp(JMP_JEQ_K, AUDIT_ARCH_X86_64, T::Next, T::L(l32)));
    a.ops.push(Op::Ja(l64));
    a.ops.push(Op::Label(l32));
    let lx86 = a.label();
    a.ops
        .push(Op::Jmp(JMP_JEQ_K, AUDIT_ARCH_I386, T::Next, T::L(lx86)));
    let body32 = a.label();
    a.ops.push(Op::Ja(body32));
    a.ops.push(Op::Label(lx86));
    a.ops.push(Op::Ret(kill));
    // x86_64 entry: split x32 calls off by their bit.
    a.ops.push(Op::Label(l64));
    a.ops.push(Op::Ld(0));
    let lx32 = a.label();
    let native = a.label();
    a.ops
        .push(Op::Jmp(JMP_JGE_K, X32_BIT, T::Next, T::L(native)));
    a.ops.push(Op::Ja(lx32));
    a.ops.push(Op::Label(native));
    type ArchBlock<'t> = (bool, &'t [(&'t str, u32)], Option<usize>);
    let arches: [ArchBlock<'_>; 3] = [
        (want(Arch::ScmpArchX86_64), table::X86_64, None),
        (want(Arch::ScmpArchX32), table::X32, Some(lx32)),
        (want(Arch::ScmpArchX86), table::X86, Some(body32)),
    ];
    for (enabled, tab, label) in arches {
        if let Some(l) = label {
            a.ops.push(Op::Label(l));
            a.ops.push(Op::Ld(0));
        }
        if !enabled {
            a.ops.push(Op::Ret(kill));
            continue;
        }
        // Group the rules by syscall number, keeping profile order within a syscall.
        let mut by_nr: Vec<(u32, Vec<&LinuxSyscall>)> = Vec::new();
        for sc in syscalls {
            for name in sc.names() {
                let Some(nr) = lookup(tab, name) else {
                    continue;
                };
                match by_nr.iter_mut().find(|(n, _)| *n == nr) {
                    Some((_, v)) => v.push(sc),
                    None => by_nr.push((nr, vec![sc])),
                }
            }
        }
        // Syscalls whose first rule has no argument conditions just return its action: one
        // compare each, jumping to a return shared by the chunk (conditional jumps reach only
        // 255 instructions, hence chunks). The others get a block of their own.
        let simple_ret = |rules: &[&LinuxSyscall]| {
            let r = rules.first()?;
            r.args()
                .as_ref()
                .is_none_or(|a| a.is_empty())
                .then(|| action(r.action(), r.errno_ret(), default_errno))
        };
        let simple: Vec<(u32, u32)> = by_nr
            .iter()
            .filter_map(|(nr, rules)| simple_ret(rules).map(|ret| (*nr, ret)))
            .collect();
        by_nr.retain(|(_, rules)| simple_ret(rules).is_none());
        for chunk in simple.chunks(200) {
            let mut rets: Vec<(u32, usize)> = Vec::new();
            for (_, ret) in chunk {
                if !rets.iter().any(|(r, _)| r == ret) {
                    rets.push((*ret, a.label()));
                }
            }
            let after = a.label();
            for (nr, ret) in chunk {
                let l = rets
                    .iter()
                    .find(|(r, _)| r == ret)
                    .map(|(_, l)| *l)
                    .unwrap_or(after);
                a.ops.push(Op::Jmp(JMP_JEQ_K, *nr, T::L(l), T::Next));
            }
            a.ops.push(Op::Ja(after));
            for (ret, l) in rets {
                a.ops.push(Op::Label(l));
                a.ops.push(Op::Ret(ret));
            }
            a.ops.push(Op::Label(after));
        }
        let blocks: Vec<usize> = by_nr.iter().map(|_| a.label()).collect();
        for ((nr, _), l) in by_nr.iter().zip(&blocks) {
            let skip = a.label();
            a.ops.push(Op::Jmp(JMP_JEQ_K, *nr, T::Next, T::L(skip)));
            a.ops.push(Op::Ja(*l));
            a.ops.push(Op::Label(skip));
        }
        a.ops.push(Op::Ret(default));
        for ((_, rules), l) in by_nr.iter().zip(&blocks) {
            a.ops.push(Op::Label(*l));
            for sc in rules {
                let ret = action(sc.action(), sc.errno_ret(), default_errno);
                let args = sc.args().as_deref().unwrap_or(&[]);
                if args.is_empty() {
                    a.ops.push(Op::Ret(ret));
                    break;
                }
                let fail = a.label();
                for arg in args {
                    emit_cond(
                        &mut a,
                        arg.index(),
                        arg.op(),
                        arg.value(),
                        arg.value_two().unwrap_or(0),
                        fail,
                    );
                }
                a.ops.push(Op::Ret(ret));
                a.ops.push(Op::Label(fail));
                // A multi-arg rule compares after loading other words: reload nr is not needed,
                // the next rule reloads what it compares.
            }
            a.ops.push(Op::Ret(default));
        }
    }
    let mut flags = 0u32;
    for f in s.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 32,
        };
    }
    if notify {
        flags |= 8; // SECCOMP_FILTER_FLAG_NEW_LISTENER
        if s.listener_path().is_none() {
            return Err(SeccompError::Invalid(
                "SCMP_ACT_NOTIFY needs listenerPath".into(),
            ));
        }
    }
    Ok(Program {
        insns: a.finish()?,
        flags,
        notify,
    })
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

impl Program {
    /// Installs the filter on the calling thread. Returns the notify listener fd if any.
    pub(crate) fn load(&self) -> Result<Option<OwnedFd>, SeccompError> {
        let prog = SockFprog {
            len: self.insns.len() as u16,
            filter: self.insns.as_ptr(),
        };
        // SAFETY: prog points at self.insns, alive for the call; flags are SECCOMP_FILTER_FLAG_*.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                1, /* SECCOMP_SET_MODE_FILTER */
                self.flags,
                &prog as *const SockFprog,
            )
        };
        if rc < 0 {
            return Err(SeccompError::Load(std::io::Error::last_os_error()));
        }
        if self.notify {
            // SAFETY: with NEW_LISTENER the return value is a fresh fd.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(rc as i32) }));
        }
        Ok(None)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.insns.len() * 8);
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&u32::from(self.notify).to_le_bytes());
        for i in &self.insns {
            v.extend_from_slice(&i.code.to_le_bytes());
            v.push(i.jt);
            v.push(i.jf);
            v.extend_from_slice(&i.k.to_le_bytes());
        }
        v
    }

    fn from_bytes(b: &[u8]) -> Option<Program> {
        if b.len() < 8 || !(b.len() - 8).is_multiple_of(8) {
            return None;
        }
        let flags = u32::from_le_bytes(b[0..4].try_into().ok()?);
        let notify = u32::from_le_bytes(b[4..8].try_into().ok()?) != 0;
        let insns = b[8..]
            .chunks_exact(8)
            .map(|c| SockFilter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Program {
            insns,
            flags,
            notify,
        })
    }
}

fn memory_cache() -> &'static Mutex<HashMap<String, Arc<Program>>> {
    // std Mutex: held only around a map lookup/insert, never across blocking work.
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Program>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Compiles with caching: in memory, then `<cache_dir>/seccomp-<sha256>.bpf` if a dir is given.
pub(crate) fn compile_cached(
    s: &LinuxSeccomp,
    cache_dir: Option<&Path>,
) -> Result<Arc<Program>, SeccompError> {
    let json = serde_json::to_vec(s).map_err(|e| SeccompError::Invalid(e.to_string()))?;
    let mut h = sha2::Sha256::new();
    h.update(b"berth-seccomp-v1\0");
    h.update(&json);
    let key = hex::encode(h.finalize());
    if let Some(p) = memory_cache()
        .lock()
        .ok()
        .and_then(|m| m.get(&key).cloned())
    {
        return Ok(p);
    }
    let file = cache_dir.map(|d| d.join(format!("seccomp-{key}.bpf")));
    let cached = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| Program::from_bytes(&b));
    let prog = match cached {
        Some(p) => Arc::new(p),
        None => {
            let p = Arc::new(compile(s)?);
            if let (Some(f), Some(d)) = (&file, cache_dir) {
                // A cache write failure only costs a recompile next time.
                let _ = std::fs::create_dir_all(d);
                let _ = crate::state::write_atomic(f, &p.to_bytes());
            }
            p
        }
    };
    if let Ok(mut m) = memory_cache().lock() {
        m.insert(key, prog.clone());
    }
    Ok(prog)
}

/// Seccomp facts for `features`.
pub fn supported_actions() -> Vec<&'static str> {
    vec![
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_TRAP",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a compiled program on (arch, nr, args) the way the kernel would.
    fn run(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = p.insns[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    acc =
                        u32::from_le_bytes(data[i.k as usize..i.k as usize + 4].try_into().unwrap())
                }
                ALU_AND_K => acc &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                JMP_JGT_K => pc += usize::from(if acc > i.k { i.jt } else { i.jf }),
                JMP_JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                c => panic!("bad code {c:#x}"),
            }
        }
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn allow_list_with_args() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                "syscalls":[
                 {"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                 {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                 {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
                 {"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                 {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
                 {"names":["kill"],"action":"SCMP_ACT_ALLOW","args":[{"index":1,"value":10,"op":"SCMP_CMP_LT"},{"index":1,"value":2,"op":"SCMP_CMP_GE"}]},
                 {"names":["getpid"],"action":"SCMP_ACT_KILL_PROCESS"},
                 {"names":["no_such_call"],"action":"SCMP_ACT_ALLOW"}
                ]}"#,
        ))
        .unwrap();
        let x = AUDIT_ARCH_X86_64;
        let enosys = RET_ERRNO | 38;
        assert_eq!(run(&p, x, 0, [0; 6]), RET_ALLOW, "read");
        assert_eq!(run(&p, x, 1, [0; 6]), RET_ALLOW, "write");
        assert_eq!(run(&p, x, 2, [0; 6]), enosys, "open: default");
        assert_eq!(
            run(&p, x, 135, [8, 0, 0, 0, 0, 0]),
            RET_ALLOW,
            "personality(8)"
        );
        assert_eq!(run(&p, x, 135, [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p, x, 135, [9, 0, 0, 0, 0, 0]), enosys);
        assert_eq!(
            run(&p, x, 135, [(1 << 32) | 8, 0, 0, 0, 0, 0]),
            enosys,
            "high word checked"
        );
        assert_eq!(
            run(&p, x, 56, [0x11, 0, 0, 0, 0, 0]),
            RET_ALLOW,
            "clone w/o ns flags"
        );
        assert_eq!(
            run(&p, x, 56, [0x2000_0000, 0, 0, 0, 0, 0]),
            enosys,
            "clone NEWPID"
        );
        assert_eq!(run(&p, x, 83, [0; 6]), RET_ERRNO | 13, "mkdir errnoRet");
        assert_eq!(run(&p, x, 62, [1, 5, 0, 0, 0, 0]), RET_ALLOW, "kill sig 5");
        assert_eq!(run(&p, x, 62, [1, 1, 0, 0, 0, 0]), enosys, "kill sig 1");
        assert_eq!(run(&p, x, 62, [1, 10, 0, 0, 0, 0]), enosys, "kill sig 10");
        assert_eq!(run(&p, x, 39, [0; 6]), RET_KILL_PROCESS, "getpid");
        // i386: read is 3, getpid 20.
        assert_eq!(run(&p, AUDIT_ARCH_I386, 3, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p, AUDIT_ARCH_I386, 20, [0; 6]), RET_KILL_PROCESS);
        // x32: read is 0 | X32 bit.
        assert_eq!(run(&p, x, X32_BIT, [0; 6]), RET_ALLOW);
        // Unknown arch: killed.
        assert_eq!(run(&p, 0xc000_00b7, 0, [0; 6]), RET_KILL_PROCESS);
    }

    /// A Docker-sized allow-list (every syscall the tables know, three arches) fits in the
    /// kernel's 4096-instruction limit and every jump stays in range.
    #[test]
    fn large_profile_fits() {
        let names: Vec<&str> = table::X86_64
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != "personality")
            .collect();
        let s = profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                "syscalls":[{{"names":{},"action":"SCMP_ACT_ALLOW"}},
                 {{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":8,"op":"SCMP_CMP_EQ"}}]}}]}}"#,
            serde_json::to_string(&names).unwrap()
        ));
        let p = compile(&s).unwrap();
        assert!(p.insns.len() < 2500, "{} instructions", p.insns.len());
        let x = AUDIT_ARCH_X86_64;
        assert_eq!(run(&p, x, 0, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p, x, 435, [0; 6]), RET_ALLOW, "clone3");
        assert_eq!(run(&p, x, 135, [8, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&p, x, 135, [1, 0, 0, 0, 0, 0]), RET_ERRNO | 1);
        assert_eq!(run(&p, x, 999, [0; 6]), RET_ERRNO | 1);
        assert_eq!(run(&p, x, X32_BIT | 1, [0; 6]), RET_ALLOW, "x32 write");
        assert_eq!(run(&p, AUDIT_ARCH_I386, 4, [0; 6]), RET_ALLOW, "i386 write");
    }

    #[test]
    fn only_native_arch_kills_x32_and_i386() {
        let p = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        ))
        .unwrap();
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 83, [0; 6]), RET_ERRNO | 1);
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 0, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p, AUDIT_ARCH_I386, 3, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, X32_BIT, [0; 6]),
            RET_KILL_PROCESS
        );
    }

    #[test]
    fn notify_needs_listener_and_sets_flag() {
        let s = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(compile(&s).is_err());
        let s = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/x","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let p = compile(&s).unwrap();
        assert!(p.notify && p.flags & 8 != 0);
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 83, [0; 6]), RET_USER_NOTIF);
    }

    #[test]
    fn bad_index_rejected_and_cache_roundtrip() {
        let s = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(compile(&s).is_err());
        let t = tempfile::tempdir().unwrap();
        let s = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let a = compile_cached(&s, Some(t.path())).unwrap();
        let files: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
        let bytes = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(Program::from_bytes(&bytes).unwrap(), *a);
    }
}
