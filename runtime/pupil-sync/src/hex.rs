//! Lower-case hexadecimal for keys, hashes and signatures in JSON and headers.

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    pupil_wire::Hex(bytes).to_string()
}

/// Decodes exactly `N` bytes of hex, or `None`.
pub fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_rejections() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::encode(&b), "0001abff");
        assert_eq!(super::decode::<4>("0001abff"), Some(b));
        assert_eq!(super::decode::<4>("0001abf"), None);
        assert_eq!(super::decode::<2>("zz00"), None);
        assert_eq!(super::decode::<1>("+f"), None);
    }
}
