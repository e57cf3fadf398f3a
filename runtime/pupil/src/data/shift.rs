//! Device-specific styles for 28 x 28 digits: rotation, stroke thickening and translation, the
//! kind of shift a device's own camera, pen or user brings. Used to simulate devices whose local
//! data differs from what the shipped model was trained on.

use super::mnist::{Split, PIXELS, SIDE};

/// How one device's digits differ from MNIST's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Style {
    /// Rotation in degrees, counter-clockwise, about the image centre.
    pub rotate_deg: f32,
    /// Stroke thickening: this many passes of a 3 x 3 cross-shaped dilation.
    pub thicken: u32,
    /// Translation in pixels (right, down).
    pub shift: (i32, i32),
}

impl Style {
    /// No change.
    pub const IDENTITY: Style = Style {
        rotate_deg: 0.0,
        thicken: 0,
        shift: (0, 0),
    };

    /// Parse `rot=25,thick=1,dx=2,dy=-1` (any subset, in any order).
    pub fn parse(text: &str) -> Result<Style, String> {
        let mut s = Style::IDENTITY;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("style part {part:?} is not key=value"))?;
            let bad = || format!("style {key}: {value:?} is not a number");
            match key {
                "rot" => s.rotate_deg = value.parse().map_err(|_| bad())?,
                "thick" => s.thicken = value.parse().map_err(|_| bad())?,
                "dx" => s.shift.0 = value.parse().map_err(|_| bad())?,
                "dy" => s.shift.1 = value.parse().map_err(|_| bad())?,
                _ => return Err(format!("unknown style key {key:?}: use rot, thick, dx, dy")),
            }
        }
        Ok(s)
    }

    /// Apply to one image.
    pub fn apply(&self, src: &[u8; PIXELS], dst: &mut [u8; PIXELS]) {
        let (sin, cos) = self.rotate_deg.to_radians().sin_cos();
        let c = (SIDE as f32 - 1.0) / 2.0;
        // Inverse mapping with bilinear interpolation: each output pixel samples the source.
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (ox, oy) = (
                    x as f32 - c - self.shift.0 as f32,
                    y as f32 - c - self.shift.1 as f32,
                );
                let sx = cos * ox - sin * oy + c;
                let sy = sin * ox + cos * oy + c;
                dst[y * SIDE + x] = bilinear(src, sx, sy);
            }
        }
        let mut tmp;
        for _ in 0..self.thicken {
            tmp = *dst;
            dilate(&tmp, dst);
        }
    }

    /// A copy of `split` with every image restyled (labels unchanged).
    pub fn apply_split(&self, split: &Split) -> Split {
        let mut images = vec![0u8; split.images.len()];
        for (src, dst) in split
            .images
            .chunks_exact(PIXELS)
            .zip(images.chunks_exact_mut(PIXELS))
        {
            // `chunks_exact` yields whole images only, so both conversions succeed.
            if let (Ok(src), Ok(dst)) = (src.try_into(), dst.try_into()) {
                self.apply(src, dst);
            }
        }
        Split {
            images,
            labels: split.labels.clone(),
            n: split.n,
        }
    }
}

impl std::fmt::Display for Style {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rot={},thick={},dx={},dy={}",
            self.rotate_deg, self.thicken, self.shift.0, self.shift.1
        )
    }
}

fn pixel(src: &[u8], x: i32, y: i32) -> f32 {
    if (0..SIDE as i32).contains(&x) && (0..SIDE as i32).contains(&y) {
        f32::from(src[y as usize * SIDE + x as usize])
    } else {
        0.0
    }
}

fn bilinear(src: &[u8], x: f32, y: f32) -> u8 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i32, y0 as i32);
    let top = pixel(src, x0, y0) * (1.0 - fx) + pixel(src, x0 + 1, y0) * fx;
    let bottom = pixel(src, x0, y0 + 1) * (1.0 - fx) + pixel(src, x0 + 1, y0 + 1) * fx;
    (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
}

/// Grey-level dilation with a 3 x 3 cross: each pixel becomes the brightest of itself and its
/// four neighbours.
fn dilate(src: &[u8; PIXELS], dst: &mut [u8; PIXELS]) {
    for y in 0..SIDE as i32 {
        for x in 0..SIDE as i32 {
            let v = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
                .iter()
                .map(|&(dx, dy)| pixel(src, x + dx, y + dy))
                .fold(0.0f32, f32::max);
            dst[y as usize * SIDE + x as usize] = v as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot() -> [u8; PIXELS] {
        let mut img = [0u8; PIXELS];
        img[10 * SIDE + 20] = 255; // row 10, column 20
        img
    }

    #[test]
    fn identity_keeps_the_image() {
        let src: [u8; PIXELS] = std::array::from_fn(|i| (i * 7 % 256) as u8);
        let mut dst = [0u8; PIXELS];
        Style::IDENTITY.apply(&src, &mut dst);
        assert_eq!(src, dst);
    }

    #[test]
    fn quarter_turn_moves_a_pixel_where_expected() {
        let mut dst = [0u8; PIXELS];
        Style::parse("rot=90").unwrap().apply(&dot(), &mut dst);
        // Counter-clockwise by 90 degrees about (13.5, 13.5), y pointing down on screen:
        // source (x=20, y=10) lands at output (x=10, y=7).
        let at = dst.iter().position(|&v| v == 255).unwrap();
        assert_eq!((at % SIDE, at / SIDE), (10, 7));
    }

    #[test]
    fn thickening_and_shift() {
        let mut dst = [0u8; PIXELS];
        Style::parse("thick=1,dx=2,dy=-1")
            .unwrap()
            .apply(&dot(), &mut dst);
        let lit: Vec<usize> = (0..PIXELS).filter(|&i| dst[i] == 255).collect();
        let centre = 9 * SIDE + 22;
        assert_eq!(
            lit,
            vec![centre - SIDE, centre - 1, centre, centre + 1, centre + SIDE]
        );
    }

    #[test]
    fn parse_rejects_nonsense() {
        assert!(Style::parse("rot=x").is_err());
        assert!(Style::parse("zoom=2").is_err());
        assert!(Style::parse("rot").is_err());
        assert_eq!(Style::parse("").unwrap(), Style::IDENTITY);
        let s = Style::parse("rot=-25,thick=1").unwrap();
        assert_eq!(Style::parse(&s.to_string()).unwrap(), s);
    }
}
