//! Convolution geometry shared by our direct-convolution kernels ([`super::int8_conv`],
//! [`super::direct_conv`]): im2col is never materialised. The padded input is split once per
//! run into stride-phase planes in which every kernel tap's im2col row is a slice, computed
//! over "virtual" positions (each output row padded to the planes' width, the extra columns
//! dropped when stored).

use std::ops::Range;

use super::on_tract_threads;

/// Positions per microkernel call of the kernels that read these planes.
pub const NR: usize = 16;

/// Shape of one convolution over one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Input channels, height, width.
    pub chw: (usize, usize, usize),
    /// Kernel height and width.
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Padding before (top, left); what falls outside the input on any side reads as the
    /// input zero point.
    pub pad: (usize, usize),
    /// Output height and width.
    pub out: (usize, usize),
}

impl Geometry {
    /// The geometry of tract's 2D `Conv` over an input of concrete shape `input` (NCHW or
    /// tract's batch-free CHW, as the conv's data format says); `None` for any other layout.
    pub fn of_conv(conv: &tract_core::ops::cnn::Conv, input: &[usize]) -> Option<Geometry> {
        use tract_core::ops::nn::DataFormat;
        let spec = &conv.pool_spec;
        let (c, h, w) = match (spec.data_format, input) {
            (DataFormat::NCHW, &[_, c, h, w]) | (DataFormat::CHW, &[c, h, w]) => (c, h, w),
            _ => return None,
        };
        let (&kh, &kw) = (spec.kernel_shape.first()?, spec.kernel_shape.get(1)?);
        let padding = spec.computed_padding(&[h, w]);
        Some(Geometry {
            chw: (c, h, w),
            kernel: (kh, kw),
            stride: spec.strides.as_ref().map_or((1, 1), |s| (s[0], s[1])),
            pad: (padding[0].pad_before, padding[1].pad_before),
            out: (padding[0].convoluted, padding[1].convoluted),
        })
    }

    /// An unpadded 1x1 conv of `c` channels from an `input` map to an `out` one.
    pub fn pointwise(
        c: usize,
        input: (usize, usize),
        stride: (usize, usize),
        out: (usize, usize),
    ) -> Geometry {
        Geometry {
            chw: (c, input.0, input.1),
            kernel: (1, 1),
            stride,
            pad: (0, 0),
            out,
        }
    }

    /// Multiply-accumulates of `m` output channels over a batch of `elements` input values.
    pub fn macs(&self, elements: usize, m: usize) -> u64 {
        let images = elements / self.input_len().max(1);
        (images * self.positions() * self.depth() * m) as u64
    }

    /// Depth of the im2col matrix: `C * kh * kw`.
    pub fn depth(&self) -> usize {
        self.chw.0 * self.kernel.0 * self.kernel.1
    }

    pub fn positions(&self) -> usize {
        self.out.0 * self.out.1
    }

    pub fn input_len(&self) -> usize {
        self.chw.0 * self.chw.1 * self.chw.2
    }

    /// Where the microkernel's rows come from (see [`Rows`]).
    pub fn rows(&self) -> Rows {
        if self.kernel == (1, 1) && self.stride == (1, 1) && self.pad == (0, 0) {
            Rows::Pointwise
        } else {
            let ((kh, kw), (sy, sx)) = (self.kernel, self.stride);
            let (oh, ow) = self.out;
            let narrow = ow + (kw - 1) / sx;
            // Planes a whole number of blocks wide when that costs the kernels fewer block
            // calls (half-width ones counting half): each block then stays in one output row,
            // so it is stored whole and a row's last 1-8 outputs take a half-width call. A
            // 56-wide map: 3.5 calls a row against 3.6 (58 wide). Not on maps narrower than a
            // block: there every row would be a block of its own, and each block streams all
            // the weights past (2.4 MB for an int8 ResNet 7x7 conv: no faster measured).
            let aligned =
                ow >= NR && oh * half_calls(ow) < half_calls((oh.max(1) - 1) * narrow + ow);
            let wq = match aligned {
                true => narrow.next_multiple_of(NR),
                false => narrow,
            };
            Rows::Phased {
                phases: (sy.min(kh), sx.min(kw)),
                hq: oh + (kh - 1) / sy,
                wq,
            }
        }
    }

    /// Where each im2col row `k` (OIHW order: `C * kh * kw` of them) starts in one image's
    /// prepared input ([`prepare`]): the row is the slice from there over the virtual
    /// positions. Computed once per run of an op and shared by its tasks, rather than with 4-8
    /// divisions per row each time a chunk is packed.
    pub fn row_starts(&self) -> Vec<usize> {
        let (c, h, w) = self.chw;
        let (taps, channel_stride): (Vec<usize>, usize) = match self.rows() {
            Rows::Pointwise => (vec![0], h * w),
            Rows::Phased { phases, hq, wq } => {
                let ((kh, kw), (sy, sx)) = (self.kernel, self.stride);
                let taps = (0..kh)
                    .flat_map(|ky| (0..kw).map(move |kx| (ky, kx)))
                    .map(|(ky, kx)| {
                        let plane = (ky % sy) * phases.1 + kx % sx;
                        plane * hq * wq + (ky / sy) * wq + kx / sx
                    })
                    .collect();
                (taps, phases.0 * phases.1 * hq * wq)
            }
        };
        (0..c)
            .flat_map(|ci| taps.iter().map(move |t| ci * channel_stride + t))
            .collect()
    }

    /// Positions the microkernel runs over: the outputs, or for [`Rows::Phased`] every column
    /// of the phase planes' width up to the last output (the extra ones are computed and
    /// dropped).
    pub fn virtual_positions(&self) -> usize {
        match self.rows() {
            Rows::Phased { wq, .. } => (self.out.0 - 1) * wq + self.out.1,
            Rows::Pointwise => self.positions(),
        }
    }

    /// Elements per image of the input as the tasks read it ([`prepare`]).
    pub fn prepared_len(&self) -> usize {
        match self.rows() {
            Rows::Phased { phases, hq, wq } => self.chw.0 * phases.0 * phases.1 * hq * wq,
            Rows::Pointwise => self.input_len(),
        }
    }
}

/// Microkernel calls over `n` consecutive positions, counted in half-width calls: two per
/// [`NR`], one for a last 1-8.
fn half_calls(n: usize) -> usize {
    2 * (n / NR)
        + match n % NR {
            0 => 0,
            r if r <= NR / 2 => 1,
            _ => 2,
        }
}

/// How the im2col rows of a convolution are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// 1x1, stride 1, unpadded: the input planes are the rows.
    Pointwise,
    /// Anything else: the padded input split once into `phases` (stride phases in y and x,
    /// as many as the kernel uses) of `hq x wq`, the zero (point) where the padding is. Phase
    /// `(ky % sy, kx % sx)` read from offset `(ky / sy) * wq + kx / sx` over positions
    /// `oy * wq + ox` is tap `(ky, kx)`'s im2col row: a slice, not a copy.
    Phased {
        phases: (usize, usize),
        hq: usize,
        wq: usize,
    },
}

/// The input as the tasks read it: the phase planes of every image for [`Rows::Phased`]
/// geometries (built once per run, shared by the tasks, the planes split over the plan's
/// threads), else `x` itself.
pub fn prepare<'a, T: Copy + Send + Sync>(
    geo: &Geometry,
    x: &'a [T],
    zero: T,
) -> std::borrow::Cow<'a, [T]> {
    let Rows::Phased { phases, hq, wq } = geo.rows() else {
        return std::borrow::Cow::Borrowed(x);
    };
    let (_, h, w) = geo.chw;
    let ((sy, sx), (pt, pl)) = (geo.stride, geo.pad);
    let plane = hq * wq;
    let per_input_plane = phases.0 * phases.1;
    let mut out = vec![zero; x.len() / (h * w).max(1) * per_input_plane * plane];
    let planes: Vec<(usize, &mut [T])> = out.chunks_exact_mut(plane).enumerate().collect();
    on_tract_threads(planes, |(index, dst): (usize, &mut [T])| {
        let (input_plane, phase) = (index / per_input_plane, index % per_input_plane);
        let (py, px) = (phase / phases.1, phase % phases.1);
        let Some(src) = x.get(input_plane * h * w..(input_plane + 1) * h * w) else {
            return;
        };
        // Column j reads input column j * sx + px - pl, where that is inside the row.
        let first = pl.saturating_sub(px).div_ceil(sx);
        let end = (w + pl).saturating_sub(px).div_ceil(sx).min(wq);
        if first >= end {
            return;
        }
        let start = first * sx + px - pl;
        for (i, row) in dst.chunks_exact_mut(wq).enumerate() {
            let iy = (i * sy + py) as isize - pt as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let src = &src[iy as usize * w..][..w];
            let cols = &mut row[first..end];
            let src = &src[start..];
            match sx {
                1 => cols.copy_from_slice(&src[..cols.len()]),
                // Every other element: whole pairs as a constant-stride loop the compiler
                // vectorises (`step_by` stayed an element at a time: 3% of int8 ResNet-50), then
                // the last column where its pair runs past the row.
                2 => {
                    let pairs = cols.len().min(src.len() / 2);
                    for (d, pair) in cols[..pairs].iter_mut().zip(src.chunks_exact(2)) {
                        *d = pair[0];
                    }
                    for (j, d) in cols.iter_mut().enumerate().skip(pairs) {
                        *d = src[j * 2];
                    }
                }
                _ => {
                    for (d, s) in cols.iter_mut().zip(src.iter().step_by(sx)) {
                        *d = *s;
                    }
                }
            }
        }
    });
    std::borrow::Cow::Owned(out)
}

/// The outputs of positions `p0..p0 + n` (virtual ones for [`Rows::Phased`]) as runs
/// `(offset in the block, output position, length)`; returns how many. `rows` is
/// `geo.rows()`, which callers compute once per task rather than once per block.
pub fn output_runs(
    geo: &Geometry,
    rows: Rows,
    p0: usize,
    n: usize,
    runs: &mut [(usize, usize, usize); NR],
) -> usize {
    let ow = geo.out.1;
    // Planes as wide as the output (a strided 1x1, or a narrow unaligned map whose kernel is 1
    // wide) drop no columns: the positions are the outputs, one run, so the kernels' whole-
    // block paths take the block rather than a run per output row.
    let wp = match rows {
        Rows::Phased { wq, .. } if wq != ow => wq,
        _ => {
            runs[0] = (0, p0, n);
            return 1;
        }
    };
    let (mut j, mut count) = (0, 0);
    while j < n {
        let (oy, ox) = ((p0 + j) / wp, (p0 + j) % wp);
        if ox >= ow {
            j += wp - ox;
            continue;
        }
        let run = (ow - ox).min(n - j);
        runs[count] = (j, oy * ow + ox, run);
        count += 1;
        j += run;
    }
    count
}

/// One piece of work: a chunk of positions of one image, for a range of channel groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub image: usize,
    pub positions: Range<usize>,
    pub groups: Range<usize>,
}

/// The tasks of a convolution of `p` (virtual) positions per image and `groups` channel
/// groups over `images` images for `threads` threads: chunks of at most `chunk` positions (a
/// multiple of [`NR`]: what the kernel's cache budget takes), and when there are fewer than
/// `spread` per thread, channel ranges too (channel-major, so contiguous runs of tasks split
/// the channels).
pub fn tasks(
    p: usize,
    groups: usize,
    chunk: usize,
    images: usize,
    threads: usize,
    spread: usize,
) -> Vec<Task> {
    let threads = threads.max(1);
    let mut chunk = chunk.max(NR);
    let count = images * p.div_ceil(chunk);
    let splits = if count >= spread * threads {
        // As many chunks as fit the cache budget, rounded up to a multiple of the threads so
        // each gets the same share.
        let per_image = count.next_multiple_of(threads).div_ceil(images);
        chunk = p.div_ceil(per_image.max(1)).next_multiple_of(NR).min(chunk);
        1
    } else {
        threads.clamp(1, groups.max(1))
    };
    let chunks: Vec<Range<usize>> = (0..p)
        .step_by(chunk.max(1))
        .map(|s| s..(s + chunk).min(p))
        .collect();
    let per = groups.div_ceil(splits).max(1);
    let mut tasks = Vec::new();
    for start in (0..groups).step_by(per) {
        for image in 0..images {
            for positions in &chunks {
                tasks.push(Task {
                    image,
                    positions: positions.clone(),
                    groups: start..(start + per).min(groups),
                });
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ResNet's phased convs and the plane width each gets, worked out by hand from the calls
    /// a row takes: 56 wide, 3.5 calls a row aligned (64) against 3.6 narrow (58); 28, 2
    /// against 1.9 (30); 14, 1 either way (16); the stem's 112, 7 against 7.2 (115); maps
    /// narrower than a block stay narrow (7x7: 9; a 3x3/2 to 7x7: 8).
    #[test]
    fn planes_are_block_aligned_where_that_takes_fewer_calls() {
        let conv = |hw: usize, k: usize, s: usize| Geometry {
            chw: (8, hw, hw),
            kernel: (k, k),
            stride: (s, s),
            pad: (k / 2, k / 2),
            out: (
                (hw + 2 * (k / 2) - k) / s + 1,
                (hw + 2 * (k / 2) - k) / s + 1,
            ),
        };
        let width = |g: &Geometry| match g.rows() {
            Rows::Phased { wq, .. } => wq,
            Rows::Pointwise => 0,
        };
        // 3x3 stride 1 on 56, 28, 14 and 7; the 7x7/2 stem; a 3x3/2 to 7x7.
        let cases = [
            (conv(56, 3, 1), 64),
            (conv(28, 3, 1), 30),
            (conv(14, 3, 1), 16),
            (conv(7, 3, 1), 9),
            (conv(224, 7, 2), 128),
            (conv(14, 3, 2), 8),
        ];
        for (geo, wq) in cases {
            assert_eq!(width(&geo), wq, "{geo:?}");
        }
    }
}
