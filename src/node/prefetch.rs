//! The CPU's prefetch instruction, for the fast path's read-ahead (`fast::serve`): it asks for
//! a cache line that will be needed soon and returns at once. A hint only: it never faults,
//! whatever the address, and changes nothing the program can observe but its timing. A no-op
//! on targets other than x86_64.

/// Starts loading the cache line that holds `p` into every cache level.
#[inline(always)]
pub fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 does not access memory in the architectural sense: it never faults,
    // for any address (a stale or invalid one included), and has no effect but on timing.
    // Its only requirement is SSE, part of the x86_64 baseline.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    /// Any address is fine: a dangling one, null, the end of a slice.
    #[test]
    fn never_faults() {
        let v = vec![1u8; 100];
        super::line(v.as_ptr());
        super::line(v.as_ptr().wrapping_add(100));
        super::line(std::ptr::null());
        super::line(usize::MAX as *const u8);
        let gone = v.as_ptr();
        drop(v);
        super::line(gone);
    }
}
