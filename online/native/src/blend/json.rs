//! JSON as the Python reader writes it with orjson (`online/http.py`): the same text for the
//! same values, so a client cannot tell which reader answered.
//!
//! serde_json writes the same strings and the same shortest round-trip digits for floats, but
//! lays some out differently: orjson writes `1e+16` and `1.5e+300` where serde_json writes
//! `1e16` and `1.5e300`. `OrjsonFormatter` writes floats orjson's way (checked against orjson
//! on powers of ten, boundaries and random bit patterns by `tests/blend_parity.py`).

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, Serializer};

/// serde_json's compact output with orjson's float layout.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrjsonFormatter;

impl Formatter for OrjsonFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        // serde_json passes only finite values here: NaN and infinities are written as null,
        // as orjson writes them.
        let mut buf = String::with_capacity(32);
        write_f64(&mut buf, value);
        writer.write_all(buf.as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        CompactFormatter.write_f32(writer, value)
    }
}

/// `value` as JSON text, floats as orjson writes them.
pub fn to_vec<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut ser = Serializer::with_formatter(&mut out, OrjsonFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// A finite f64 as orjson writes it: the shortest digits that read back to the same value,
/// plain when the decimal point falls within 16 digits left of them or 5 right
/// (`1000000000000000.0`, `0.00001`), else one digit before the point and a signed exponent
/// (`1e+16`, `1e-6`, `1.2345678901234568e+17`).
pub fn write_f64(out: &mut String, value: f64) {
    use std::fmt::Write;
    // Ryu's shortest digits: on a tie between two shortest candidates it rounds half to even,
    // as orjson and Python's repr do (Rust's own `{:e}` rounds those halves up:
    // 1950375977227433.2 came out as ...433.3). Only the layout is redone here.
    let mut buf = ryu::Buffer::new();
    let (digits, kk) = decimal_digits(buf.format_finite(value));
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    let length = digits.len() as i32;
    let k = kk - length; // |value| = digits * 10^k, 10^(kk-1) <= |value| < 10^kk
    out.push_str(sign);
    if 0 <= k && kk <= 16 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', k as usize));
        out.push_str(".0");
    } else if 0 < kk && kk <= 16 {
        out.push_str(&digits[..kk as usize]);
        out.push('.');
        out.push_str(&digits[kk as usize..]);
    } else if -5 < kk && kk <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-kk) as usize));
        out.push_str(digits);
    } else {
        out.push_str(&digits[..1]);
        if length > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = kk - 1;
        let _ = write!(out, "e{}{}", if e < 0 { "-" } else { "+" }, e.abs());
    }
}

/// The significant digits of a decimal text (sign kept, no leading or trailing zeros; "0" for
/// zero) and `kk`, the power of ten just above its magnitude: `"1.25e-7"` -> `("125", -6)`,
/// `"0.001"` -> `("1", -2)`, `"120.0"` -> `("12", 3)`.
fn decimal_digits(text: &str) -> (String, i32) {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", text),
    };
    let (mantissa, exp) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().expect("a decimal exponent")),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int.chars().chain(frac.chars()).collect();
    let lead = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_start_matches('0').trim_end_matches('0');
    if digits.is_empty() {
        return (format!("{sign}0"), 1);
    }
    (
        format!("{sign}{digits}"),
        int.len() as i32 - lead as i32 + exp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(x: f64) -> String {
        let mut s = String::new();
        write_f64(&mut s, x);
        s
    }

    #[test]
    fn layouts_orjson_uses() {
        // Each pair is what orjson 3.13.0 wrote for the float (orjson.dumps(x), this machine).
        for (x, want) in [
            (1950375977227433.2, "1950375977227433.2"),
            (1e-9, "1e-9"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "0.00001"),
            (1e-7, "1e-7"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (5e-324, "5e-324"),
            (-0.0, "-0.0"),
            (100.0, "100.0"),
            (12345678.9, "12345678.9"),
            (2.5e-10, "2.5e-10"),
        ] {
            assert_eq!(text(x), want, "{x:e}");
        }
    }

    #[test]
    fn decimal_digits_of_each_layout() {
        assert_eq!(decimal_digits("1.25e-7"), ("125".to_owned(), -6));
        assert_eq!(decimal_digits("0.001"), ("1".to_owned(), -2));
        assert_eq!(decimal_digits("120.0"), ("12".to_owned(), 3));
        assert_eq!(decimal_digits("-0.0"), ("-0".to_owned(), 1));
        assert_eq!(decimal_digits("1e16"), ("1".to_owned(), 17));
    }

    #[test]
    fn non_finite_scores_are_null() {
        let got = to_vec(&[f64::NAN, f64::INFINITY, 0.5]).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), "[null,null,0.5]");
    }
}
