//! Buffers whose first element is 64-byte (cache-line) aligned, for what the kernels load a
//! whole 64-byte vector at a time: packed weights and packed activations.
//!
//! Why: a `Vec` is only as aligned as its element (the allocator gives 16 bytes), and a 64-byte
//! load from a 16-byte-aligned address crosses a cache line three times in four; each crossing
//! is a second load (Intel's optimisation manual, "cache line split"). The kernels' packed
//! layouts are whole 64-byte steps, so an aligned start keeps every one of their loads inside
//! one line.

use std::marker::PhantomData;

/// One cache line of storage.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// Element types with no invalid bit patterns, whose size divides 64: all zero bytes is zero.
pub trait Plain: Copy + Default + 'static {}
impl Plain for u8 {}
impl Plain for i8 {}
impl Plain for f32 {}

/// A `Vec<T>` starting on a cache line.
#[derive(Clone)]
pub struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> Default for Aligned<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Plain> Aligned<T> {
    /// Empty (for a `thread_local!` scratch buffer).
    pub const fn new() -> Self {
        Aligned {
            lines: Vec::new(),
            len: 0,
            _t: PhantomData,
        }
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut a = Self::default();
        a.resize(len);
        a
    }

    /// A copy of `items`.
    pub fn from_slice(items: &[T]) -> Self {
        let mut a = Self::zeroed(items.len());
        a.copy_from_slice(items);
        a
    }

    /// `len` zeros, reusing the allocation (a scratch buffer cleared for each use).
    pub fn zeroed_to(&mut self, len: usize) -> &mut [T] {
        self.resize(len);
        self.fill(T::default());
        self
    }

    /// `len` elements, reusing the allocation without clearing it: for a scratch buffer its
    /// user writes in full before reading (a `memset` of every use was 2% of ResNet-50's
    /// samples). Debug builds fill it with all-ones bytes (NaN for f32), so that tests see
    /// any element read before it is written.
    pub fn sized_to(&mut self, len: usize) -> &mut [T] {
        self.resize(len);
        if cfg!(debug_assertions) {
            self.lines.fill(Line([0xff; 64]));
        }
        self
    }

    /// `len` elements: those kept keep their values; the others are zero, or what they held
    /// before a shrink (scratch buffers overwrite them).
    pub fn resize(&mut self, len: usize) {
        let bytes = len * std::mem::size_of::<T>();
        self.lines.resize(bytes.div_ceil(64), Line([0; 64]));
        self.len = len;
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len * size_of::<T>()` initialised bytes, aligned to
        // 64 (more than any `Plain` type needs), and every bit pattern is a valid `T`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Plain> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} x {})", self.len, std::any::type_name::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_keeps_values_across_resizes() {
        let mut a = Aligned::from_slice(&[1.5f32, -2.0, 3.0]);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert_eq!(&a[..], &[1.5, -2.0, 3.0]);
        a.resize(40);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert_eq!(&a[..4], &[1.5, -2.0, 3.0, 0.0]);
        assert_eq!(a.len(), 40);
        a.resize(2);
        assert_eq!(&a[..], &[1.5, -2.0]);
        assert_eq!(a.zeroed_to(5), &[0.0; 5]);
        if cfg!(debug_assertions) {
            assert!(a.sized_to(3).iter().all(|v| v.is_nan()));
        }
    }
}
