//! Fuzzes config.json handling: any bytes are parsed and validated as a runtime spec, and a
//! seccomp section that gets through is compiled to BPF. Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = berth_runtime::parse_spec(data)
        && let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref())
        && let Ok(p) = berth_runtime::compile_seccomp(s)
    {
        assert!(p.insns.len() <= 4096);
    }
});
