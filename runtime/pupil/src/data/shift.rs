//! Device-specific styles for images: rotation, stroke thickening and translation, the kind
//! of shift a device's own camera, pen or user brings. Used to simulate devices whose local
//! data differs from what the shipped model was trained on. Works on examples of shape
//! `[C, H, W]`, each channel restyled alike.

use super::split::Split;
use super::DataError;

/// How one device's images differ from the shipped model's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Style {
    /// Rotation in degrees, counter-clockwise, about the image centre.
    pub rotate_deg: f32,
    /// Stroke thickening: this many passes of a 3 x 3 cross-shaped dilation.
    pub thicken: u32,
    /// Translation in pixels (right, down).
    pub shift: (i32, i32),
}

/// One channel of an image: its pixels, row-major, and its size.
#[derive(Clone, Copy)]
struct Plane<'a> {
    pixels: &'a [u8],
    width: usize,
    height: usize,
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

    /// Apply to one channel of `width` x `height` pixels (`src` and `dst` hold that many).
    pub fn apply(&self, src: &[u8], dst: &mut [u8], width: usize, height: usize) {
        let (sin, cos) = self.rotate_deg.to_radians().sin_cos();
        let (cx, cy) = ((width as f32 - 1.0) / 2.0, (height as f32 - 1.0) / 2.0);
        let plane = Plane {
            pixels: src,
            width,
            height,
        };
        // Inverse mapping with bilinear interpolation: each output pixel samples the source.
        for y in 0..height {
            for x in 0..width {
                let (ox, oy) = (
                    x as f32 - cx - self.shift.0 as f32,
                    y as f32 - cy - self.shift.1 as f32,
                );
                let sx = cos * ox - sin * oy + cx;
                let sy = sin * ox + cos * oy + cy;
                dst[y * width + x] = bilinear(plane, sx, sy);
            }
        }
        let mut tmp = vec![0u8; width * height];
        for _ in 0..self.thicken {
            tmp.copy_from_slice(&dst[..width * height]);
            dilate(
                Plane {
                    pixels: &tmp,
                    width,
                    height,
                },
                dst,
            );
        }
    }

    /// A copy of `split` with every image restyled (labels unchanged); refuses examples
    /// that are not images (`[C, H, W]` or `[H, W]`).
    pub fn apply_split(&self, split: &Split) -> Result<Split, DataError> {
        let (width, height) = match split.shape.as_slice() {
            [_, h, w] | [h, w] => (*w, *h),
            _ => {
                return Err(DataError::Shape {
                    shape: split.shape.clone(),
                    bytes: split.images.len(),
                    n: split.n,
                })
            }
        };
        let plane = width * height;
        let mut images = vec![0u8; split.images.len()];
        for (src, dst) in split
            .images
            .chunks_exact(plane)
            .zip(images.chunks_exact_mut(plane))
        {
            self.apply(src, dst, width, height);
        }
        Split::new(&split.shape, images, split.labels.clone())
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

fn pixel(src: Plane<'_>, x: i32, y: i32) -> f32 {
    if (0..src.width as i32).contains(&x) && (0..src.height as i32).contains(&y) {
        f32::from(src.pixels[y as usize * src.width + x as usize])
    } else {
        0.0
    }
}

fn bilinear(src: Plane<'_>, x: f32, y: f32) -> u8 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i32, y0 as i32);
    let top = pixel(src, x0, y0) * (1.0 - fx) + pixel(src, x0 + 1, y0) * fx;
    let bottom = pixel(src, x0, y0 + 1) * (1.0 - fx) + pixel(src, x0 + 1, y0 + 1) * fx;
    (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8
}

/// Grey-level dilation with a 3 x 3 cross: each pixel becomes the brightest of itself and its
/// four neighbours.
fn dilate(src: Plane<'_>, dst: &mut [u8]) {
    for y in 0..src.height as i32 {
        for x in 0..src.width as i32 {
            let v = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
                .iter()
                .map(|&(dx, dy)| pixel(src, x + dx, y + dy))
                .fold(0.0f32, f32::max);
            dst[y as usize * src.width + x as usize] = v as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDE: usize = 28;
    const PIXELS: usize = SIDE * SIDE;

    fn dot() -> [u8; PIXELS] {
        let mut img = [0u8; PIXELS];
        img[10 * SIDE + 20] = 255; // row 10, column 20
        img
    }

    #[test]
    fn identity_keeps_the_image() {
        let src: [u8; PIXELS] = std::array::from_fn(|i| (i * 7 % 256) as u8);
        let mut dst = [0u8; PIXELS];
        Style::IDENTITY.apply(&src, &mut dst, SIDE, SIDE);
        assert_eq!(src, dst);
    }

    #[test]
    fn quarter_turn_moves_a_pixel_where_expected() {
        let mut dst = [0u8; PIXELS];
        Style::parse("rot=90")
            .unwrap()
            .apply(&dot(), &mut dst, SIDE, SIDE);
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
            .apply(&dot(), &mut dst, SIDE, SIDE);
        let lit: Vec<usize> = (0..PIXELS).filter(|&i| dst[i] == 255).collect();
        let centre = 9 * SIDE + 22;
        assert_eq!(
            lit,
            vec![centre - SIDE, centre - 1, centre, centre + 1, centre + SIDE]
        );
    }

    #[test]
    fn other_sizes_and_channels() {
        // A 3-channel 8 x 6 image shifted one pixel right: every channel moves alike.
        let src: Vec<u8> = (0..3 * 48)
            .map(|i| if i % 48 == 9 { 200 } else { 0 })
            .collect();
        let split = Split::new(&[3, 6, 8], src, vec![2]).unwrap();
        let out = Style::parse("dx=1").unwrap().apply_split(&split).unwrap();
        let lit: Vec<usize> = (0..3 * 48).filter(|&i| out.images[i] == 200).collect();
        assert_eq!(lit, vec![10, 58, 106]);
        assert_eq!(out.labels, vec![2]);
        let vectors = Split::new(&[32], vec![0; 32], vec![0]).unwrap();
        assert!(Style::IDENTITY.apply_split(&vectors).is_err());
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
