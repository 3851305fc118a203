//! The few dense kernels a request needs: float32 matrix-vector products and the float64
//! implicit-ALS fold-in (`driftrec/models/factors.py` `fold_in`).
//!
//! NumPy's float32 products go through OpenBLAS (`sgemv`), which sums in float32 in an order
//! of its own. Here each product of two float32 values is exact in float64, the sum is taken
//! in float64 and rounded once to float32: the correctly rounded result, which differs from
//! OpenBLAS's by OpenBLAS's own rounding error (a few float32 ulps), not by the sum of two
//! implementations' errors.

/// Whether this CPU has AVX2 and FMA (checked once): the kernels below are compiled twice,
/// once for the x86-64 baseline the crate targets (SSE2) and once with AVX2 enabled, which
/// the float32-to-float64 conversions and float64 sums need to keep up with NumPy's OpenBLAS
/// (the baseline build made an exact 3,000-item scan 2.2x slower than NumPy here).
#[inline]
fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static WIDE: OnceLock<bool> = OnceLock::new();
        *WIDE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Call `$body` (an expression of inline(always) kernels) compiled with AVX2 when the CPU has it.
macro_rules! dispatch {
    ($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty $body:block) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide_impl($($arg: $ty),*) -> $ret $body
                if wide() {
                    // SAFETY: the CPU was checked for AVX2 and FMA.
                    return unsafe { wide_impl($($arg),*) };
                }
            }
            $body
        }
    };
}

/// `round_f32(Σ a_i b_i)`, the sum in float64.
///
/// Sixteen partial sums (element `i` into sum `i % 16`), combined in one fixed order: the AVX2
/// kernel and the portable one give the same bits. Each product of two float32 values is exact
/// in float64, so a fused multiply-add rounds exactly as a multiply then an add.
#[inline(always)]
fn dot_kernel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if wide() {
            // SAFETY: the CPU was checked for AVX2 and FMA; lengths are equal.
            return unsafe { dot_avx2(a, b) };
        }
    }
    let mut acc = [0f64; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] as f64 * y[l] as f64;
        }
    }
    let t: [f64; 4] = std::array::from_fn(|l| (acc[l] + acc[4 + l]) + (acc[8 + l] + acc[12 + l]));
    let mut s = (t[0] + t[2]) + (t[1] + t[3]);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += *x as f64 * *y as f64;
    }
    s as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len() / 16 * 16;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_pd(); 4];
    let mut i = 0;
    while i < n {
        for (j, v) in acc.iter_mut().enumerate() {
            let x = _mm256_cvtps_pd(_mm_loadu_ps(pa.add(i + 4 * j)));
            let y = _mm256_cvtps_pd(_mm_loadu_ps(pb.add(i + 4 * j)));
            *v = _mm256_fmadd_pd(x, y, *v);
        }
        i += 16;
    }
    let t = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    // (t0 + t2) + (t1 + t3)
    let pair = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    let mut s = _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
    for k in n..a.len() {
        s += *a.get_unchecked(k) as f64 * *b.get_unchecked(k) as f64;
    }
    s as f32
}

dispatch!(dot(a: &[f32], b: &[f32]) -> f32 { dot_kernel(a, b) });

/// `y += f * x` (`SUB`: `y -= f * x`) in float64, a multiply then an add as the portable loop
/// rounds (no fused multiply-add), so both builds give the same bits.
#[inline(always)]
fn axpy<const SUB: bool>(y: &mut [f64], f: f64, x: &[f64]) {
    assert_eq!(y.len(), x.len());
    #[cfg(target_arch = "x86_64")]
    {
        if wide() {
            // SAFETY: the CPU was checked for AVX2; lengths are equal.
            unsafe { axpy_avx2::<SUB>(y, f, x) };
            return;
        }
    }
    for (v, &u) in y.iter_mut().zip(x) {
        if SUB { *v -= f * u } else { *v += f * u }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn axpy_avx2<const SUB: bool>(y: &mut [f64], f: f64, x: &[f64]) {
    use std::arch::x86_64::*;
    let n = y.len() / 4 * 4;
    let fv = _mm256_set1_pd(f);
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    while i < n {
        let p = _mm256_mul_pd(fv, _mm256_loadu_pd(px.add(i)));
        let v = _mm256_loadu_pd(py.add(i));
        _mm256_storeu_pd(py.add(i), if SUB { _mm256_sub_pd(v, p) } else { _mm256_add_pd(v, p) });
        i += 4;
    }
    for j in n..y.len() {
        let p = f * *px.add(j);
        if SUB { *py.add(j) -= p } else { *py.add(j) += p }
    }
}

dispatch!(matvec(m: &[f32], cols: usize, rows: Option<&[usize]>, v: &[f32]) -> Vec<f32> {
    // `M[rows] @ v` for a C-order matrix of `cols` columns; every row when `rows` is None.
    match rows {
        Some(rows) => rows.iter().map(|&r| dot_kernel(&m[r * cols..(r + 1) * cols], v)).collect(),
        None => m.chunks_exact(cols).map(|row| dot_kernel(row, v)).collect(),
    }
});

dispatch!(vecmat(x: &[f32], m: &[f32], cols: usize, rows: &[usize]) -> Vec<f32> {
    // `x @ M[rows]` (one weight of `x` per row, `M` C-order with `cols` columns), float32 out,
    // as NumPy's `x @ W0[rows]` of the TF model's sparse first layer.
    let mut acc = vec![0f64; cols];
    for (&w, &r) in x.iter().zip(rows) {
        let w = w as f64;
        for (a, &y) in acc.iter_mut().zip(&m[r * cols..(r + 1) * cols]) {
            *a += w * y as f64;
        }
    }
    acc.into_iter().map(|a| a as f32).collect()
});

/// `Σ a_i b_i` in float64: sixteen partial sums in one fixed order (as `dot_kernel`), a
/// multiply then an add, so both builds give the same bits.
#[inline(always)]
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if wide() {
            // SAFETY: the CPU was checked for AVX2; lengths are equal.
            return unsafe { dot64_avx2(a, b) };
        }
    }
    let mut acc = [0f64; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let t: [f64; 4] = std::array::from_fn(|l| (acc[l] + acc[4 + l]) + (acc[8 + l] + acc[12 + l]));
    let mut s = (t[0] + t[2]) + (t[1] + t[3]);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot64_avx2(a: &[f64], b: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len() / 16 * 16;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_pd(); 4];
    let mut i = 0;
    while i < n {
        for (j, v) in acc.iter_mut().enumerate() {
            let p = _mm256_mul_pd(_mm256_loadu_pd(pa.add(i + 4 * j)), _mm256_loadu_pd(pb.add(i + 4 * j)));
            *v = _mm256_add_pd(*v, p);
        }
        i += 16;
    }
    let t = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    let pair = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
    let mut s = _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
    for k in n..a.len() {
        s += *pa.add(k) * *pb.add(k);
    }
    s
}

/// The implicit-ALS user vector for fixed item factors, float64 throughout, rounded to float32
/// at the end (`fold_in(Y, YtY, idx, conf, reg).astype(np.float32)`).
///
/// Solves `(YᵀY + Y_uᵀ (C_u − I) Y_u + reg·I) x = Y_uᵀ C_u p(u)`; repeated rows are merged
/// first, their confidences summed in the order given (`np.unique` + `np.bincount`).
/// `y` is the `(n_items, k)` float32 item matrix, `yty` the `(k, k)` float64 `YᵀY`.
pub fn fold_in(y: &[f32], k: usize, yty: &[f64], idx: &[usize], conf: &[f64], reg: f64) -> Vec<f32> {
    let mut merged: Vec<(usize, f64)> = Vec::with_capacity(idx.len());
    {
        let mut order: Vec<usize> = (0..idx.len()).collect();
        order.sort_by_key(|&i| (idx[i], i)); // ascending rows, first occurrence first
        for i in order {
            match merged.last_mut() {
                Some((row, c)) if *row == idx[i] => *c += conf[i],
                _ => merged.push((idx[i], 0.0 + conf[i])),
            }
        }
    }
    thread_local! {
        // A and S, k × k float64 each (128 KiB at k = 128): allocated per request they crossed
        // malloc's mmap threshold, and the page faults cost as much as the solve.
        static SCRATCH: std::cell::RefCell<(Vec<f64>, Vec<f64>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (a, s) = &mut *guard;
        a.resize(k * k, 0.0);
        s.clear();
        s.resize(k * k, 0.0);
        let mut b = vec![0f64; k];
        normal_equations(y, k, &merged, s, &mut b);
        // A = (YᵀY + reg·I) + S as NumPy forms it, on and below the diagonal.
        for i in 0..k {
            for j in 0..=i {
                let base = yty[i * k + j] + if i == j { reg } else { 0.0 };
                a[i * k + j] = base + s[i * k + j];
            }
        }
        // A is symmetric positive definite whenever reg > 0 (YᵀY + reg·I plus non-negative
        // multiples of the user's rows' outer products, c ≥ 0), so a Cholesky factorisation
        // solves it in half LU's operations; it differs from LAPACK's LU (np.linalg.solve) by
        // float64 rounding only. A non-positive pivot (reg = 0 and a degenerate history) takes
        // the LU, on A made whole from its lower triangle.
        let b0 = b.clone();
        if !cholesky_solve(a, &mut b, k) {
            b = b0;
            for i in 0..k {
                for j in 0..=i {
                    let v = yty[i * k + j] + if i == j { reg } else { 0.0 } + s[i * k + j];
                    a[i * k + j] = v;
                    a[j * k + i] = v;
                }
            }
            solve(a, &mut b, k);
        }
        b.into_iter().map(|x| x as f32).collect()
    })
}

dispatch!(normal_equations(y: &[f32], k: usize, merged: &[(usize, f64)], s: &mut [f64], b: &mut [f64]) -> () {
    // S += (Y_u ∘ (c − 1))ᵀ Y_u summed over the user's rows, on and below the diagonal only
    // (the solve reads no more); `b` += Y_uᵀ p with p = c where c > 0, else 0.
    let mut scaled = vec![0f64; k];
    let mut yu64 = vec![0f64; k];
    for &(row, c) in merged {
        let yu = &y[row * k..(row + 1) * k];
        let cm1 = c.abs() - 1.0;
        let p = if c > 0.0 { c } else { 0.0 };
        for ((sc, y6), &v) in scaled.iter_mut().zip(yu64.iter_mut()).zip(yu) {
            *y6 = v as f64;
            *sc = v as f64 * cm1;
        }
        for i in 0..k {
            let si = scaled[i];
            axpy::<false>(&mut s[i * k..i * k + i + 1], si, &yu64[..=i]);
            b[i] += yu64[i] * p;
        }
    }
});

dispatch!(cholesky_solve(a: &mut [f64], b: &mut [f64], k: usize) -> bool {
    // Factor A = L Lᵀ in place (L from A's lower triangle, row-major, so every sum below is a
    // dot product of two contiguous row prefixes), then solve L z = b and Lᵀ x = z into `b`.
    // False, with `a` and `b` spoilt, on a non-positive pivot.
    for i in 0..k {
        let (done, rest) = a.split_at_mut(i * k);
        let row_i = &mut rest[..k];
        for j in 0..i {
            let row_j = &done[j * k..j * k + k];
            row_i[j] = (row_i[j] - dot64(&row_i[..j], &row_j[..j])) / row_j[j];
        }
        let d = row_i[i] - dot64(&row_i[..i], &row_i[..i]);
        if d.is_nan() || d <= 0.0 {
            return false;
        }
        row_i[i] = d.sqrt();
    }
    for i in 0..k {
        let row = &a[i * k..i * k + k];
        b[i] = (b[i] - dot64(&row[..i], &b[..i])) / row[i];
    }
    for i in (0..k).rev() {
        let row = &a[i * k..i * k + k];
        let x = b[i] / row[i];
        b[i] = x;
        axpy::<true>(&mut b[..i], x, &row[..i]);
    }
    true
});

/// Solve `A x = b` in place (`b` becomes `x`) by LU with partial pivoting, the algorithm of
/// LAPACK's `dgesv` that `np.linalg.solve` calls. A singular pivot leaves infinities / NaN,
/// as LAPACK's would (NumPy raises there; `A` is positive definite whenever `reg > 0`).
pub fn solve(a: &mut [f64], b: &mut [f64], k: usize) {
    solve_dispatch(a, b, k)
}

dispatch!(solve_dispatch(a: &mut [f64], b: &mut [f64], k: usize) -> () {
    for col in 0..k {
        let mut p = col;
        let mut best = a[col * k + col].abs();
        for r in col + 1..k {
            let v = a[r * k + col].abs();
            if v > best {
                best = v;
                p = r;
            }
        }
        if p != col {
            for j in 0..k {
                a.swap(col * k + j, p * k + j);
            }
            b.swap(col, p);
        }
        let pivot = a[col * k + col];
        let (upper, lower) = a.split_at_mut((col + 1) * k);
        let prow = &upper[col * k..];
        for r in 0..k - col - 1 {
            let row = &mut lower[r * k..(r + 1) * k];
            let f = row[col] / pivot;
            if f != 0.0 {
                axpy::<true>(&mut row[col + 1..], f, &prow[col + 1..k]);
                b[col + 1 + r] -= f * b[col];
            }
            row[col] = f;
        }
    }
    for col in (0..k).rev() {
        let mut x = b[col];
        for j in col + 1..k {
            x -= a[col * k + j] * b[j];
        }
        b[col] = x / a[col * k + col];
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_recovers_a_known_vector() {
        let k = 3;
        let a0 = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let x = [1.0, -2.0, 0.5];
        let mut b: Vec<f64> = (0..k).map(|i| (0..k).map(|j| a0[i * k + j] * x[j]).sum()).collect();
        let mut a = a0.to_vec();
        solve(&mut a, &mut b, k);
        for i in 0..k {
            assert!((b[i] - x[i]).abs() < 1e-12, "{b:?}");
        }
    }

    #[test]
    fn cholesky_agrees_with_lu() {
        let k = 20;
        // A = MᵀM + I, positive definite.
        let m: Vec<f64> = (0..k * k).map(|i| ((i * 7919 % 101) as f64 / 50.0) - 1.0).collect();
        let mut a = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                a[i * k + j] = (0..k).map(|r| m[r * k + i] * m[r * k + j]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        let b0: Vec<f64> = (0..k).map(|i| i as f64 - 7.5).collect();
        let (mut a1, mut b1) = (a.clone(), b0.clone());
        assert!(cholesky_solve(&mut a1, &mut b1, k));
        let (mut a2, mut b2) = (a.clone(), b0.clone());
        solve(&mut a2, &mut b2, k);
        for i in 0..k {
            assert!((b1[i] - b2[i]).abs() <= 1e-9 * b2[i].abs().max(1.0), "{i}: {} vs {}", b1[i], b2[i]);
        }
        let mut not_pd = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_solve(&mut not_pd, &mut [1.0, 1.0], 2));
    }

    #[test]
    fn fold_in_merges_repeated_rows() {
        // Two items, k = 2; the same item twice with confidences 1 and 2 equals it once with 3.
        let y = [1.0f32, 0.0, 0.5, 1.0];
        let yty = [1.25, 0.5, 0.5, 1.0];
        let twice = fold_in(&y, 2, &yty, &[1, 0, 1], &[1.0, 2.0, 2.0], 0.1);
        let once = fold_in(&y, 2, &yty, &[0, 1], &[2.0, 3.0], 0.1);
        assert_eq!(twice, once);
    }

    #[test]
    fn dot_is_rounded_once() {
        let a = [1.0f32, 1e-8, -1.0, 3.0];
        let b = [1.0f32, 1.0, 1.0, 1.0];
        assert_eq!(dot(&a, &b), (3.0f64 + 1e-8f32 as f64) as f32);
    }
}
