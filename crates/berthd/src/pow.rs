//! The daemon's one floating-point power, defined here so the process does not load libm.
//!
//! tokio's multi-threaded scheduler weighs its poll-time average with `f64::powf`, which compiles
//! to a call of the C library's `pow`; nothing else in berthd needs libm. Loading libm for that one
//! symbol cost ~0.5 MB of resident pages (its code and symbol tables), a twentieth of the idle
//! daemon. With `pow` defined in the binary the linker (`--as-needed`) leaves libm out.
//! `libm::pow` is the musl/FreeBSD implementation (C99 Annex F special cases, < 1 ulp); unlike
//! glibc's it does not set `errno` on range errors, which no caller in this process reads.

/// C's `double pow(double, double)`.
#[unsafe(no_mangle)]
pub(crate) extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    /// The symbol the scheduler calls is this one, and it answers as C's `pow` does.
    #[test]
    fn pow_is_c_pow() {
        unsafe extern "C" {
            #[link_name = "pow"]
            fn c_pow(x: f64, y: f64) -> f64;
        }
        // SAFETY: `pow` takes two doubles and returns one; no pointers, no state.
        let p = |x, y| unsafe { c_pow(x, y) };
        assert_eq!(p(2.0, 10.0), 1024.0);
        assert_eq!(p(0.9, 0.0), 1.0);
        assert_eq!(p(f64::NAN, 0.0), 1.0);
        assert_eq!(p(1.0, f64::NAN), 1.0);
        assert!(p(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(p(0.0, -1.0), f64::INFINITY);
        assert_eq!(p(10.0, 400.0), f64::INFINITY);
        let ewma = p(0.9, 17.0);
        assert!((ewma - 0.166_771_816_996_665_7).abs() < 1e-15, "{ewma}");
        assert_eq!(0.9_f64.powf(17.0), ewma);
    }
}
