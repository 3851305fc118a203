//! The few dense kernels a request needs: float32 matrix-vector products and the float64
//! implicit-ALS fold-in (`driftrec/models/factors.py` `fold_in`).
//!
//! NumPy's float32 products go through OpenBLAS (`sgemv`), which sums in float32 in an order
//! of its own. Here each product of two float32 values is exact in float64, the sum is taken
//! in float64 and rounded once to float32: the correctly rounded result, which differs from
//! OpenBLAS's by OpenBLAS's own rounding error (a few float32 ulps), not by the sum of two
//! implementations' errors.

/// `round_f32(Σ a_i b_i)`, the sum in float64.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    // Four partial sums let the compiler vectorise; float64 makes the order immaterial at
    // float32 precision.
    let mut acc = [0f64; 4];
    let chunks = a.len() / 4;
    for c in 0..chunks {
        let i = 4 * c;
        acc[0] += a[i] as f64 * b[i] as f64;
        acc[1] += a[i + 1] as f64 * b[i + 1] as f64;
        acc[2] += a[i + 2] as f64 * b[i + 2] as f64;
        acc[3] += a[i + 3] as f64 * b[i + 3] as f64;
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in 4 * chunks..a.len() {
        s += a[i] as f64 * b[i] as f64;
    }
    s as f32
}

/// `M[rows] @ v` for a C-order matrix of `cols` columns; every row when `rows` is None.
pub fn matvec(m: &[f32], cols: usize, rows: Option<&[usize]>, v: &[f32]) -> Vec<f32> {
    match rows {
        Some(rows) => rows.iter().map(|&r| dot(&m[r * cols..(r + 1) * cols], v)).collect(),
        None => m.chunks_exact(cols).map(|row| dot(row, v)).collect(),
    }
}

/// `x @ M[rows]` (`x` one weight per row, `M` C-order with `cols` columns), float32 out, as
/// NumPy's `x @ W0[rows]` of the TF model's sparse first layer.
pub fn vecmat(x: &[f32], m: &[f32], cols: usize, rows: &[usize]) -> Vec<f32> {
    let mut acc = vec![0f64; cols];
    for (&w, &r) in x.iter().zip(rows) {
        let w = w as f64;
        for (a, &y) in acc.iter_mut().zip(&m[r * cols..(r + 1) * cols]) {
            *a += w * y as f64;
        }
    }
    acc.into_iter().map(|a| a as f32).collect()
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
    let mut a = yty.to_vec();
    for d in 0..k {
        a[d * k + d] += reg;
    }
    // S = (Y_u ∘ (c − 1))ᵀ Y_u, summed over the user's rows, then added to A as NumPy does.
    let mut s = vec![0f64; k * k];
    let mut b = vec![0f64; k];
    let mut scaled = vec![0f64; k];
    for &(row, c) in &merged {
        let yu = &y[row * k..(row + 1) * k];
        let cm1 = c.abs() - 1.0;
        let p = if c > 0.0 { c } else { 0.0 };
        for (sc, &v) in scaled.iter_mut().zip(yu) {
            *sc = v as f64 * cm1;
        }
        for i in 0..k {
            let si = scaled[i];
            let out = &mut s[i * k..(i + 1) * k];
            for (o, &v) in out.iter_mut().zip(yu) {
                *o += si * v as f64;
            }
            b[i] += yu[i] as f64 * p;
        }
    }
    for (x, v) in a.iter_mut().zip(&s) {
        *x += v;
    }
    solve(&mut a, &mut b, k);
    b.into_iter().map(|x| x as f32).collect()
}

/// Solve `A x = b` in place (`b` becomes `x`) by LU with partial pivoting, the algorithm of
/// LAPACK's `dgesv` that `np.linalg.solve` calls. A singular pivot leaves infinities / NaN,
/// as LAPACK's would (NumPy raises there; `A` is positive definite whenever `reg > 0`).
pub fn solve(a: &mut [f64], b: &mut [f64], k: usize) {
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
                for j in col + 1..k {
                    row[j] -= f * prow[j];
                }
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
}

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
