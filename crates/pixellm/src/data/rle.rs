//! COCO run-length encoding (pycocotools' `maskApi.c`): binary masks to and from
//! uncompressed RLE (`{"size": [h, w], "counts": [..]}`), compressed RLE strings and
//! polygons. Runs are column-major (Fortran order) and start with a run of zeros.

use serde_json::{json, Value};

/// A binary mask, row-major, one byte per pixel (0 or 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height × width` values, row-major, each 0 or 1.
    pub data: Vec<u8>,
}

impl Mask {
    /// An empty mask.
    pub fn empty(height: usize, width: usize) -> Self {
        Self {
            height,
            width,
            data: vec![0; height * width],
        }
    }

    /// Foreground pixels.
    pub fn area(&self) -> u64 {
        self.data.iter().map(|&v| v as u64).sum()
    }

    /// Pixels in both masks (same size).
    pub fn intersection(&self, other: &Mask) -> u64 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(&a, &b)| (a & b) as u64)
            .sum()
    }

    /// `[x, y, w, h]` of the foreground (COCO's bbox), or `None` when empty.
    pub fn bbox(&self) -> Option<[usize; 4]> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            let row = &self.data[y * self.width..(y + 1) * self.width];
            if let Some(first) = row.iter().position(|&v| v != 0) {
                let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
                x0 = x0.min(first);
                x1 = x1.max(last + 1);
                y0 = y0.min(y);
                y1 = y + 1;
            }
        }
        (x0 != usize::MAX).then(|| [x0, y0, x1 - x0, y1 - y0])
    }

    /// Column-major run lengths, starting with zeros.
    pub fn to_counts(&self) -> Vec<u32> {
        let mut counts = Vec::new();
        let (mut current, mut run) = (0u8, 0u32);
        for x in 0..self.width {
            for y in 0..self.height {
                let v = self.data[y * self.width + x];
                if v != current {
                    counts.push(run);
                    current = v;
                    run = 0;
                }
                run += 1;
            }
        }
        counts.push(run);
        counts
    }

    /// Decodes column-major run lengths.
    pub fn from_counts(height: usize, width: usize, counts: &[u32]) -> Result<Self, String> {
        let n = height * width;
        let total: u64 = counts.iter().map(|&c| c as u64).sum();
        if total != n as u64 {
            return Err(format!(
                "RLE counts sum to {total} pixels but size {height}×{width} has {n}"
            ));
        }
        let mut data = vec![0u8; n];
        let (mut i, mut value) = (0usize, 0u8);
        for &c in counts {
            for k in i..i + c as usize {
                // Column-major index k -> (y, x).
                let (x, y) = (k / height, k % height);
                data[y * width + x] = value;
            }
            i += c as usize;
            value ^= 1;
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// Uncompressed COCO RLE JSON.
    pub fn to_rle_json(&self) -> Value {
        json!({"size": [self.height, self.width], "counts": self.to_counts()})
    }

    /// Compressed COCO RLE JSON (`counts` as pycocotools' string).
    pub fn to_compressed_json(&self) -> Value {
        json!({"size": [self.height, self.width], "counts": counts_to_string(&self.to_counts())})
    }

    /// Union with `other` (same size).
    pub fn union_with(&mut self, other: &Mask) {
        for (a, &b) in self.data.iter_mut().zip(&other.data) {
            *a |= b;
        }
    }
}

/// pycocotools `rleToString`: LEB128-like 5-bit groups offset by 48, each count after the
/// second stored as the difference to the count two before.
pub fn counts_to_string(counts: &[u32]) -> String {
    let mut s = String::new();
    for (i, &c) in counts.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut ch = (x & 0x1f) as u8;
            x >>= 5;
            let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                ch |= 0x20;
            }
            s.push((ch + 48) as char);
            if !more {
                break;
            }
        }
    }
    s
}

/// pycocotools `rleFrString`.
pub fn counts_from_string(s: &str) -> Result<Vec<u32>, String> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let (mut x, mut k) = (0i64, 0u32);
        loop {
            let Some(&b) = bytes.get(p) else {
                return Err("compressed RLE string ends inside a count".into());
            };
            if !(48..48 + 64).contains(&b) {
                return Err(format!("byte {b:#04x} is not a compressed RLE character"));
            }
            if k > 12 {
                return Err("compressed RLE count is too long".into());
            }
            let c = (b - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        if counts.len() > 2 {
            x += counts[counts.len() - 2] as i64;
        }
        let c =
            u32::try_from(x).map_err(|_| format!("compressed RLE count {x} is out of range"))?;
        counts.push(c);
    }
    Ok(counts)
}

/// pycocotools `rleFrPoly`: the pixels inside a polygon `[x0, y0, x1, y1, …]`, with COCO's
/// exact boundary rule (points upsampled 5×, boundary crossings per column).
pub fn polygon_mask(xy: &[f64], height: usize, width: usize) -> Result<Mask, String> {
    if xy.len() < 6 || !xy.len().is_multiple_of(2) {
        return Err(format!(
            "a polygon needs an even number of at least 6 coordinates, got {}",
            xy.len()
        ));
    }
    if let Some(bad) = xy.iter().find(|v| !v.is_finite() || v.abs() > 1e7) {
        return Err(format!(
            "polygon coordinate {bad} is not a finite pixel position"
        ));
    }
    let (h, w) = (height as i64, width as i64);
    let k = xy.len() / 2;
    let scale = 5.0;
    let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
    let mut y: Vec<i64> = (0..k)
        .map(|j| (scale * xy[2 * j + 1] + 0.5) as i64)
        .collect();
    x.push(x[0]);
    y.push(y[0]);
    let (mut u, mut v) = (Vec::new(), Vec::new());
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        if dx >= dy {
            let s = if dx == 0 {
                0.0
            } else {
                (ye - ys) as f64 / dx as f64
            };
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                v.push((ys as f64 + s * t as f64 + 0.5) as i64);
            }
        } else {
            let s = (xe - xs) as f64 / dy as f64;
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push((xs as f64 + s * t as f64 + 0.5) as i64);
            }
        }
    }
    let mut a: Vec<u64> = Vec::new();
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
        let xd = (xd + 0.5) / scale - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > (w - 1) as f64 {
            continue;
        }
        let yd = if v[j] < v[j - 1] { v[j] } else { v[j - 1] } as f64;
        let yd = ((yd + 0.5) / scale - 0.5).clamp(0.0, h as f64).ceil();
        a.push((xd as i64 * h + yd as i64) as u64);
    }
    a.push((h * w) as u64);
    a.sort_unstable();
    let mut prev = 0u64;
    for e in a.iter_mut() {
        let t = *e;
        *e -= prev;
        prev = t;
    }
    let mut b: Vec<u32> = Vec::new();
    let mut j = 0;
    b.push(a[j] as u32);
    j += 1;
    while j < a.len() {
        if a[j] > 0 {
            b.push(a[j] as u32);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                *b.last_mut().expect("b starts non-empty") += a[j] as u32;
                j += 1;
            }
        }
    }
    Mask::from_counts(height, width, &b)
}

/// Decodes a COCO `segmentation` value: uncompressed RLE, compressed RLE or a list of
/// polygons (their union; the official loader sums them, see docs/eval.md). `size` is the
/// image's `(height, width)`, which an RLE's own `size` must equal.
pub fn decode_segmentation(seg: &Value, size: (usize, usize)) -> Result<Mask, String> {
    let (h, w) = size;
    match seg {
        Value::Object(o) => {
            let rle_size = o
                .get("size")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
                .ok_or("RLE needs \"size\": [height, width]")?;
            if rle_size != (h, w) {
                return Err(format!(
                    "RLE size {}×{} differs from the image size {h}×{w}",
                    rle_size.0, rle_size.1
                ));
            }
            let counts = match o.get("counts") {
                Some(Value::String(s)) => counts_from_string(s)?,
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .and_then(|c| u32::try_from(c).ok())
                            .ok_or_else(|| format!("RLE count {v} is not a non-negative integer"))
                    })
                    .collect::<Result<Vec<u32>, String>>()?,
                _ => return Err("RLE needs \"counts\" (a list or a string)".into()),
            };
            Mask::from_counts(h, w, &counts)
        }
        Value::Array(polys) => {
            if polys.is_empty() {
                return Err("an empty polygon list".into());
            }
            let mut mask = Mask::empty(h, w);
            for p in polys {
                let xy = p
                    .as_array()
                    .ok_or("a polygon must be a list of numbers")?
                    .iter()
                    .map(|v| v.as_f64().ok_or("a polygon coordinate is not a number"))
                    .collect::<Result<Vec<f64>, &str>>()?;
                mask.union_with(&polygon_mask(&xy, h, w)?);
            }
            Ok(mask)
        }
        _ => Err("segmentation must be an RLE object or a list of polygons".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random_mask(h: usize, w: usize, seed: u64) -> Mask {
        let mut s = seed | 1;
        let mut m = Mask::empty(h, w);
        for v in m.data.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *v = s.is_multiple_of(3) as u8;
        }
        m
    }

    #[test]
    fn uncompressed_round_trip_is_column_major_and_starts_with_zeros() {
        // 2×3, foreground at (row 0, col 0) and (row 1, col 2).
        let m = Mask {
            height: 2,
            width: 3,
            data: vec![1, 0, 0, 0, 0, 1],
        };
        assert_eq!(m.to_counts(), vec![0, 1, 4, 1]);
        assert_eq!(Mask::from_counts(2, 3, &m.to_counts()).unwrap(), m);
        for seed in 1..20 {
            let m = pseudo_random_mask(7 + seed as usize, 13, seed);
            assert_eq!(
                Mask::from_counts(m.height, m.width, &m.to_counts()).unwrap(),
                m
            );
        }
        assert!(Mask::from_counts(2, 3, &[1, 2]).is_err());
    }

    #[test]
    fn compressed_strings_round_trip_and_match_pycocotools() {
        // pycocotools: a 4×4 mask with rows 1-2, cols 1-2 set encodes as "52203", and
        // [[0,1,1],[1,0,0]] as "121O0".
        assert_eq!(counts_to_string(&[5, 2, 2, 2, 5]), "52203");
        let m = Mask {
            height: 2,
            width: 3,
            data: vec![0, 1, 1, 1, 0, 0],
        };
        assert_eq!(counts_to_string(&m.to_counts()), "121O0");
        assert_eq!(counts_from_string("52203").unwrap(), vec![5, 2, 2, 2, 5]);
        for seed in 1..30 {
            let m = pseudo_random_mask(31, 17 + seed as usize, seed * 7);
            let c = m.to_counts();
            assert_eq!(counts_from_string(&counts_to_string(&c)).unwrap(), c);
            let j = m.to_compressed_json();
            assert_eq!(decode_segmentation(&j, (m.height, m.width)).unwrap(), m);
        }
        // Large counts and negative differences.
        let c = vec![100_000, 3, 70_000, 1, 2, 90_000];
        assert_eq!(counts_from_string(&counts_to_string(&c)).unwrap(), c);
        assert!(counts_from_string("\u{1}").is_err());
        assert!(counts_from_string("o").is_err(), "ends inside a count");
    }

    #[test]
    fn polygons_follow_coco_rasterisation() {
        // Reference values from pycocotools 2.0 (`mask.frPyObjects`, `mask.area`).
        let m = polygon_mask(&[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0], 5, 5).unwrap();
        let expect: Vec<u8> = (0..25)
            .map(|i| {
                let (y, x) = (i / 5, i % 5);
                ((1..=2).contains(&x) && (1..=2).contains(&y)) as u8
            })
            .collect();
        assert_eq!(m.data, expect, "{:?}", m.data);
        let t = polygon_mask(&[10.0, 10.0, 90.0, 10.0, 10.0, 90.0], 100, 100).unwrap();
        assert_eq!(t.area(), 3160);
        let cases: [(&[f64], &str); 3] = [
            (
                &[
                    8.98, 12.3, 10.06, 8.9, 6.47, 10.92, 6.75, 15.84, 17.27, 5.67,
                ],
                "a31?4MO0NEO>00000H",
            ),
            (
                &[
                    13.83, 8.58, 9.36, 16.51, -0.58, -0.26, -1.6, 14.65, 13.56, 15.4,
                ],
                "1>5N2N2N1O2N2N1Oc0OM1^O2E",
            ),
            (
                &[
                    17.57, 13.98, 7.23, 13.61, 0.37, 10.8, 0.87, 16.89, 8.44, 6.29,
                ],
                ";1`04MM2O`02^O1N3N11O1O1O1OF",
            ),
        ];
        for (xy, want) in cases {
            let m = polygon_mask(xy, 17, 13).unwrap();
            assert_eq!(counts_to_string(&m.to_counts()), want, "{xy:?}");
        }
        // Round trip through RLE and the JSON polygon form.
        let j = json!([[10.0, 10.0, 90.0, 10.0, 10.0, 90.0]]);
        assert_eq!(decode_segmentation(&j, (100, 100)).unwrap(), t);
        assert_eq!(
            decode_segmentation(&t.to_rle_json(), (100, 100)).unwrap(),
            t
        );
        assert!(polygon_mask(&[1.0, 2.0, 3.0, 4.0], 5, 5).is_err());
        assert!(
            decode_segmentation(&json!({"size": [4, 4], "counts": [16]}), (5, 5))
                .unwrap_err()
                .contains("differs")
        );
    }

    #[test]
    fn bbox_and_area() {
        let m = Mask {
            height: 3,
            width: 4,
            data: vec![0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0],
        };
        assert_eq!(m.bbox(), Some([1, 1, 2, 2]));
        assert_eq!(m.area(), 3);
        assert_eq!(Mask::empty(2, 2).bbox(), None);
    }
}
