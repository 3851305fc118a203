//! Read-only memory maps of the `.npy` files `online/shared_model.py` writes (`np.save`):
//! a small header parser for the little-endian, C-order float32 / float64 / int64 arrays it
//! saves, no general NumPy format support.

use std::fs::File;
use std::marker::PhantomData;
use std::path::Path;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

/// A scalar type an array may hold, with the `descr` NumPy writes for it.
pub trait Scalar: Copy + 'static {
    const DESCR: &'static str;
}
impl Scalar for f32 {
    const DESCR: &'static str = "<f4";
}
impl Scalar for f64 {
    const DESCR: &'static str = "<f8";
}
impl Scalar for i64 {
    const DESCR: &'static str = "<i8";
}

/// One `.npy` file mapped read-only: every reader process shares the page cache's copy, as
/// `np.load(mmap_mode="r")` does on the Python side.
pub struct Array<T: Scalar> {
    map: Mmap,
    offset: usize,
    shape: Vec<usize>,
    _t: PhantomData<T>,
}

impl<T: Scalar> Array<T> {
    /// Map `path`; fails unless it holds a C-order array of `T` with `ndim` dimensions.
    pub fn open(path: &Path, ndim: usize) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the folder's files are written once (under a temporary name, then renamed)
        // and never modified in place; a folder deleted meanwhile keeps its mapped pages.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let (offset, shape) = parse_header(&map, T::DESCR).with_context(|| format!("reading {}", path.display()))?;
        if shape.len() != ndim {
            bail!("{}: {} dimensions, expected {}", path.display(), shape.len(), ndim);
        }
        let count: usize = shape.iter().product();
        let size = std::mem::size_of::<T>();
        if map.len() < offset + count * size {
            bail!("{}: {} bytes of data, shape {:?} needs {}", path.display(), map.len() - offset, shape, count * size);
        }
        // The map is page-aligned and NumPy pads the header to a multiple of 64 (16 before
        // format 3.0), so the data are aligned for any of the scalar types.
        if !(map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>()) {
            bail!("{}: data not aligned", path.display());
        }
        Ok(Self { map, offset, shape, _t: PhantomData })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Rows of a 2-D array (the length of a 1-D one).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Columns of a 2-D array (1 for a 1-D one).
    pub fn cols(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }

    pub fn data(&self) -> &[T] {
        let count: usize = self.shape.iter().product();
        // SAFETY: length and alignment checked in `open`; the map lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.offset) as *const T, count) }
    }

    /// Row `i` of a 2-D array.
    pub fn row(&self, i: usize) -> &[T] {
        let c = self.cols();
        &self.data()[i * c..(i + 1) * c]
    }
}

/// The data offset and shape of a `.npy` file, checking that it holds `descr` in C order.
fn parse_header(bytes: &[u8], descr: &str) -> Result<(usize, Vec<usize>)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("truncated header");
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => bail!("unknown .npy format version {v}"),
    };
    let end = start + len;
    if bytes.len() < end {
        bail!("truncated header");
    }
    let header = std::str::from_utf8(&bytes[start..end]).context("header not text")?;
    let got = dict_value(header, "descr")?;
    let got = got.trim_matches(|c| c == '\'' || c == '"');
    // A one-byte type has no byte order ('|'); every type read here has one.
    if got != descr && !(got.starts_with('=') && cfg!(target_endian = "little") && got[1..] == descr[1..]) {
        bail!("dtype {got}, expected {descr}");
    }
    if dict_value(header, "fortran_order")? != "False" {
        bail!("Fortran-order array");
    }
    let shape_text = dict_value(header, "shape")?;
    let inner = shape_text.trim().trim_start_matches('(').trim_end_matches(')');
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("shape {shape_text}")))
        .collect::<Result<Vec<_>>>()?;
    Ok((end, shape))
}

/// The text of `key`'s value in the header's Python dict literal (a tuple for `shape`).
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let pat = format!("'{key}':");
    let at = header.find(&pat).with_context(|| format!("no {key} in header"))? + pat.len();
    let rest = header[at..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .with_context(|| format!("unterminated {key}"))?;
    Ok(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numpy_headers() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (10000, 128), }";
        assert_eq!(dict_value(h, "descr").unwrap(), "'<f4'");
        assert_eq!(dict_value(h, "shape").unwrap(), "(10000, 128)");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let mut text = h.to_string();
        while (10 + text.len() + 1) % 64 != 0 {
            text.push(' ');
        }
        text.push('\n');
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        let (offset, shape) = parse_header(&bytes, "<f4").unwrap();
        assert_eq!((offset % 64, offset, shape), (0, 10 + text.len(), vec![10000, 128]));
        assert!(parse_header(&bytes, "<f8").is_err());
        let one = "{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }";
        assert_eq!(dict_value(one, "shape").unwrap(), "(7,)");
    }
}
