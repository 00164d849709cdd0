//! A seeded generator of multi-target scenes in MUSE's format: flat coloured shapes on a
//! plain, gradient or noisy background, and questions about them whose answers name each
//! target before its `[SEG0] … [SEG5]` group.
//!
//! Every sample is a pure function of `(seed, split, index)` (a counter-based RNG), so a
//! data set is byte-for-byte reproducible and a trainer could draw samples on the fly.
//!
//! Vocabulary (the trained default model understands exactly these words): colours
//! [`COLOURS`], shapes [`SHAPES`], sizes `small` / `large`. Splits: `train`, `val` (the same
//! distribution, disjoint streams), `test_comp` (every question has a target whose
//! colour–shape pair, [`HELD_OUT`], never occurs in train or val) and `test_many` (4–6
//! targets per question).

use image::RgbImage;

use super::rle::Mask;

/// Colour names and their base RGB values.
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [215, 35, 35]),
    ("green", [35, 165, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [235, 205, 30]),
    ("purple", [135, 55, 185]),
    ("orange", [245, 135, 25]),
];

/// Shape names.
pub const SHAPES: [&str; 6] = ["circle", "square", "triangle", "star", "hexagon", "ring"];

/// Plurals of [`SHAPES`].
const SHAPES_PLURAL: [&str; 6] = [
    "circles",
    "squares",
    "triangles",
    "stars",
    "hexagons",
    "rings",
];

/// `(colour, shape)` pairs that never occur in `train` or `val`; `test_comp` asks about them.
pub const HELD_OUT: [(usize, usize); 4] = [(4, 2), (5, 3), (1, 4), (2, 5)];

/// The `{seg}` placeholder of MUSE text answers.
pub const SEG_PLACEHOLDER: &str = "{seg}";

/// A data split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training scenes.
    Train,
    /// Held-out scenes of the training distribution.
    Val,
    /// Compositional test: held-out colour–shape pairs.
    TestComp,
    /// Many-targets test: 4–6 targets per question.
    TestMany,
}

impl Split {
    /// Every split.
    pub const ALL: [Split; 4] = [Split::Train, Split::Val, Split::TestComp, Split::TestMany];

    /// The split's name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::TestComp => "test_comp",
            Split::TestMany => "test_many",
        }
    }

    fn id(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::Val => 2,
            Split::TestComp => 3,
            Split::TestMany => 4,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!("unknown split `{s}`: expected train, val, test_comp or test_many")
            })
    }
}

/// SplitMix64: a counter-based generator, the stream fixed by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream for `(seed, split, index)`.
    pub fn for_sample(seed: u64, split: Split, index: u64) -> Self {
        let mut r = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        let a = r.next_u64();
        let mut r = Rng(a ^ split.id().wrapping_mul(0xbf58_476d_1ce4_e5b9));
        let b = r.next_u64();
        Rng(b ^ index.wrapping_mul(0x94d0_49bb_1331_11eb))
    }

    /// A stream from a raw seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn range_f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// An index drawn with the given weights.
    pub fn weighted(&mut self, weights: &[f32]) -> usize {
        let total: f32 = weights.iter().sum();
        let mut x = self.f32() * total;
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// A uniformly chosen element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() - 1)]
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i);
            items.swap(i, j);
        }
    }
}

/// One painted object.
#[derive(Debug, Clone)]
pub struct Object {
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// `large` (else `small`).
    pub large: bool,
    /// Centre x (pixels).
    pub cx: f32,
    /// Centre y (pixels).
    pub cy: f32,
    /// Circumradius (pixels).
    pub r: f32,
    /// Rotation (radians).
    pub rot: f32,
    /// Visible pixels (later objects paint over earlier ones).
    pub mask: Mask,
    /// How the object is referred to when its colour and shape alone are ambiguous.
    pub needs_size: bool,
}

impl Object {
    /// `"red circle"`, or `"small red circle"` when the scene needs the size to tell it apart.
    pub fn name(&self) -> String {
        let base = format!("{} {}", COLOURS[self.colour].0, SHAPES[self.shape]);
        if self.needs_size {
            format!("{} {base}", self.size_word())
        } else {
            base
        }
    }

    /// `small` or `large`.
    pub fn size_word(&self) -> &'static str {
        if self.large {
            "large"
        } else {
            "small"
        }
    }

    /// Whether the point (pixel coordinates) is inside the full (unoccluded) shape.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (s, c) = (-self.rot).sin_cos();
        let (u, v) = (dx * c - dy * s, dx * s + dy * c);
        let r = self.r;
        let d2 = u * u + v * v;
        if d2 > r * r {
            return false;
        }
        match SHAPES[self.shape] {
            "circle" => true,
            "ring" => d2 >= (0.55 * r) * (0.55 * r),
            "square" => u.abs() <= 0.72 * r && v.abs() <= 0.72 * r,
            "triangle" => in_regular_polygon(u, v, r, 3),
            "hexagon" => in_regular_polygon(u, v, r, 6),
            "star" => in_star(u, v, r),
            _ => false,
        }
    }

    /// Bounding box `[x0, y0, x1, y1]` of the full shape, clamped to the image.
    fn full_box(&self, w: usize, h: usize) -> [usize; 4] {
        let r = self.r + 1.0;
        [
            (self.cx - r).floor().max(0.0) as usize,
            (self.cy - r).floor().max(0.0) as usize,
            ((self.cx + r).ceil().max(0.0) as usize).min(w),
            ((self.cy + r).ceil().max(0.0) as usize).min(h),
        ]
    }
}

/// Inside a regular `n`-gon of circumradius `r` with a vertex pointing up.
fn in_regular_polygon(u: f32, v: f32, r: f32, n: usize) -> bool {
    let apothem = r * (std::f32::consts::PI / n as f32).cos();
    (0..n).all(|k| {
        // Edge normals between the vertices at angles −90° + 360°·k/n.
        let a =
            -std::f32::consts::FRAC_PI_2 + (2.0 * k as f32 + 1.0) * std::f32::consts::PI / n as f32;
        u * a.cos() + v * a.sin() <= apothem
    })
}

/// Inside a five-pointed star (outer radius `r`, inner `0.45 r`), by the crossing rule.
fn in_star(u: f32, v: f32, r: f32) -> bool {
    let mut pts = [(0f32, 0f32); 10];
    for (k, p) in pts.iter_mut().enumerate() {
        let a = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
        let rad = if k % 2 == 0 { r } else { 0.45 * r };
        *p = (rad * a.cos(), rad * a.sin());
    }
    let mut inside = false;
    let mut j = pts.len() - 1;
    for i in 0..pts.len() {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// A question about a scene.
#[derive(Debug, Clone)]
pub struct SceneQuestion {
    /// The question.
    pub text: String,
    /// Indices into [`Scene::objects`], in answer order.
    pub targets: Vec<usize>,
    /// The answer with one [`SEG_PLACEHOLDER`] after each target's name.
    pub text_answer: String,
}

/// One generated sample.
#[derive(Debug, Clone)]
pub struct Scene {
    /// The rendered image.
    pub image: RgbImage,
    /// Objects in painting order (later ones on top).
    pub objects: Vec<Object>,
    /// Questions about the scene.
    pub questions: Vec<SceneQuestion>,
}

/// Generates sample `index` of `split` for `seed`.
pub fn scene(seed: u64, split: Split, index: u64) -> Scene {
    let mut rng = Rng::for_sample(seed, split, index);
    // A rare unlucky layout (no question possible) retries on the same stream.
    for _ in 0..64 {
        if let Some(s) = try_scene(&mut rng, split) {
            return s;
        }
    }
    unreachable!("64 failed scene layouts in a row")
}

fn try_scene(rng: &mut Rng, split: Split) -> Option<Scene> {
    let w = rng.range(160, 640);
    let h = rng.range(160.max(w / 2), 640.min(2 * w));
    let m = w.min(h) as f32;
    let n_objects = match split {
        Split::TestMany => rng.range(4, 6),
        _ => rng.range(2, 6),
    };
    // The kinds of objects first, so the question plans can shape the scene.
    let mut kinds: Vec<(usize, usize, bool)> = Vec::new();
    let held_out = |c: usize, s: usize| HELD_OUT.contains(&(c, s));
    // Many-targets scenes sometimes share one colour or one shape across most objects, so
    // "all the red shapes" / "every star" have 4+ targets.
    let theme = match split {
        Split::TestMany => rng.weighted(&[1.0, 1.0, 1.0]),
        Split::Train | Split::Val => rng.weighted(&[6.0, 1.0, 1.0]),
        Split::TestComp => 0,
    };
    let (theme_colour, theme_shape) = (rng.range(0, 5), rng.range(0, 5));
    while kinds.len() < n_objects {
        let (c, s) = match theme {
            1 if kinds.len() < n_objects.saturating_sub(1).max(2) => {
                (theme_colour, rng.range(0, 5))
            }
            2 if kinds.len() < n_objects.saturating_sub(1).max(2) => (rng.range(0, 5), theme_shape),
            _ => (rng.range(0, 5), rng.range(0, 5)),
        };
        let forbidden = match split {
            Split::TestComp => false,
            _ => held_out(c, s),
        };
        if forbidden {
            continue;
        }
        let large = rng.f32() < 0.5;
        // At most one object per (colour, shape, size); a second (colour, shape) needs the
        // other size.
        if kinds
            .iter()
            .any(|&(c2, s2, l2)| c2 == c && s2 == s && l2 == large)
        {
            continue;
        }
        if kinds.iter().any(|&(c2, s2, _)| c2 == c && s2 == s) && rng.f32() < 0.7 {
            continue;
        }
        kinds.push((c, s, large));
    }
    if split == Split::TestComp && !kinds.iter().any(|&(c, s, _)| held_out(c, s)) {
        // Force one held-out pair into the scene.
        let (c, s) = *rng.pick(&HELD_OUT);
        if kinds.iter().any(|&(c2, s2, _)| c2 == c && s2 == s) {
            return None;
        }
        let i = rng.range(0, kinds.len() - 1);
        kinds[i] = (c, s, rng.f32() < 0.5);
    }

    // Place them: each stays at least 60 % visible after everything above it is painted.
    let mut objects: Vec<Object> = Vec::new();
    for &(colour, shape, large) in &kinds {
        let r = if large {
            rng.range_f32(0.15, 0.21) * m
        } else {
            rng.range_f32(0.075, 0.105) * m
        };
        let mut placed = false;
        for _ in 0..60 {
            let cx = rng.range_f32(r * 0.9, w as f32 - r * 0.9);
            let cy = rng.range_f32(r * 0.9, h as f32 - r * 0.9);
            let rot = match SHAPES[shape] {
                "circle" | "ring" => 0.0,
                _ => rng.range_f32(-0.5, 0.5),
            };
            let cand = Object {
                colour,
                shape,
                large,
                cx,
                cy,
                r,
                rot,
                mask: Mask::empty(0, 0),
                needs_size: false,
            };
            let mut trial = objects.clone();
            trial.push(cand);
            if visible_masks(&mut trial, w, h, 0.6) {
                objects = trial;
                placed = true;
                break;
            }
        }
        if !placed {
            return None;
        }
    }
    for i in 0..objects.len() {
        let (c, s) = (objects[i].colour, objects[i].shape);
        objects[i].needs_size = objects
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && o.colour == c && o.shape == s);
    }
    let image = render(rng, &objects, w, h);
    let questions = ask(rng, &objects, split);
    if questions.is_empty() {
        return None;
    }
    Some(Scene {
        image,
        objects,
        questions,
    })
}

/// Fills every object's visible mask (pixel-centre test); false when one shows less than
/// `min_visible` of its full area.
fn visible_masks(objects: &mut [Object], w: usize, h: usize, min_visible: f32) -> bool {
    let n = objects.len();
    let mut owner = vec![u8::MAX; w * h];
    let mut full = vec![0usize; n];
    for (k, o) in objects.iter().enumerate() {
        let [x0, y0, x1, y1] = o.full_box(w, h);
        for y in y0..y1 {
            for x in x0..x1 {
                if o.contains(x as f32 + 0.5, y as f32 + 0.5) {
                    owner[y * w + x] = k as u8;
                    full[k] += 1;
                }
            }
        }
    }
    let mut visible = vec![0usize; n];
    for &o in &owner {
        if (o as usize) < n {
            visible[o as usize] += 1;
        }
    }
    if (0..n).any(|k| full[k] == 0 || (visible[k] as f32) < min_visible * full[k] as f32) {
        return false;
    }
    for (k, o) in objects.iter_mut().enumerate() {
        o.mask = Mask {
            height: h,
            width: w,
            data: owner.iter().map(|&v| (v as usize == k) as u8).collect(),
        };
    }
    true
}

/// Paints the background and the objects (2×2 supersampled edges).
fn render(rng: &mut Rng, objects: &[Object], w: usize, h: usize) -> RgbImage {
    // Low-saturation backgrounds so that no background reads as a named colour.
    let grey = |rng: &mut Rng| -> [f32; 3] {
        let l = rng.range_f32(40.0, 225.0);
        [
            l + rng.range_f32(-18.0, 18.0),
            l + rng.range_f32(-18.0, 18.0),
            l + rng.range_f32(-18.0, 18.0),
        ]
    };
    let kind = rng.weighted(&[1.0, 1.0, 1.0]);
    let (a, b) = (grey(rng), grey(rng));
    let angle = rng.range_f32(0.0, std::f32::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let noise_amp = rng.range_f32(8.0, 22.0);
    let mut noise = Rng::new(rng.next_u64());
    let mut px = vec![0f32; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let c = match kind {
                0 => a,
                1 => {
                    let t = ((x as f32 / w as f32 - 0.5) * dx + (y as f32 / h as f32 - 0.5) * dy)
                        .clamp(-0.5, 0.5)
                        + 0.5;
                    [0, 1, 2].map(|i| a[i] * (1.0 - t) + b[i] * t)
                }
                _ => {
                    let n = (noise.f32() - 0.5) * 2.0 * noise_amp;
                    [0, 1, 2].map(|i| a[i] + n)
                }
            };
            px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    }
    for o in objects {
        let base = COLOURS[o.colour].1;
        let jitter = rng.range_f32(-22.0, 22.0);
        let col: [f32; 3] = [0, 1, 2]
            .map(|i| (base[i] as f32 + jitter + rng.range_f32(-12.0, 12.0)).clamp(0.0, 255.0));
        let [x0, y0, x1, y1] = o.full_box(w, h);
        for y in y0..y1 {
            for x in x0..x1 {
                let mut cover = 0;
                for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                    if o.contains(x as f32 + sx, y as f32 + sy) {
                        cover += 1;
                    }
                }
                if cover > 0 {
                    let t = cover as f32 / 4.0;
                    let p = &mut px[(y * w + x) * 3..(y * w + x) * 3 + 3];
                    for i in 0..3 {
                        p[i] = p[i] * (1.0 - t) + col[i] * t;
                    }
                }
            }
        }
    }
    let bytes: Vec<u8> = px
        .iter()
        .map(|&v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes).expect("w·h·3 bytes")
}

/// `"the A {seg}"`, `"the A {seg} and the B {seg}"`, `"the A {seg}, the B {seg} and the C {seg}"`.
fn answer_list(names: &[String]) -> String {
    let items: Vec<String> = names
        .iter()
        .map(|n| format!("the {n} {SEG_PLACEHOLDER}"))
        .collect();
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// `"the A"`, `"the A and the B"`, `"the A, the B and the C"`.
fn name_list(names: &[String]) -> String {
    let items: Vec<String> = names.iter().map(|n| format!("the {n}")).collect();
    match items.len() {
        1 => items[0].clone(),
        n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
    }
}

/// Object indices sorted left to right (then top to bottom) by centre.
fn left_to_right(objects: &[Object], mut idx: Vec<usize>) -> Vec<usize> {
    idx.sort_by(|&a, &b| {
        let (oa, ob) = (&objects[a], &objects[b]);
        oa.cx.total_cmp(&ob.cx).then(oa.cy.total_cmp(&ob.cy))
    });
    idx
}

fn question(text: String, objects: &[Object], targets: Vec<usize>) -> SceneQuestion {
    let names: Vec<String> = targets.iter().map(|&t| objects[t].name()).collect();
    SceneQuestion {
        text,
        text_answer: format!("Sure, {}.", answer_list(&names)),
        targets,
    }
}

/// Question kinds, in the order of [`ask`]'s weights.
const KINDS: usize = 9;

/// Draws 2–3 questions of different kinds that the scene answers unambiguously.
fn ask(rng: &mut Rng, objects: &[Object], split: Split) -> Vec<SceneQuestion> {
    let weights: [f32; KINDS] = match split {
        // single, pair, all-colour, every-shape, size, spatial, extreme, list, all shapes
        Split::Train | Split::Val => [3.0, 2.5, 1.5, 1.5, 1.0, 1.0, 1.0, 1.0, 0.4],
        Split::TestComp => [3.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.0, 1.0, 0.0],
        Split::TestMany => [0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 2.0, 1.0],
    };
    let want = rng.range(2, 3);
    let mut out: Vec<SceneQuestion> = Vec::new();
    let mut used = [false; KINDS];
    for _ in 0..40 {
        if out.len() == want {
            break;
        }
        let mut w = weights;
        for (k, u) in used.iter().enumerate() {
            if *u {
                w[k] = 0.0;
            }
        }
        if w.iter().all(|&x| x == 0.0) {
            break;
        }
        let kind = rng.weighted(&w);
        if let Some(q) = ask_kind(rng, objects, kind) {
            let ok = match split {
                Split::TestComp => q
                    .targets
                    .iter()
                    .any(|&t| HELD_OUT.contains(&(objects[t].colour, objects[t].shape))),
                Split::TestMany => (4..=6).contains(&q.targets.len()),
                _ => true,
            };
            if ok && !out.iter().any(|o| o.text == q.text) {
                used[kind] = true;
                out.push(q);
            }
        }
    }
    out
}

fn ask_kind(rng: &mut Rng, objects: &[Object], kind: usize) -> Option<SceneQuestion> {
    let n = objects.len();
    let all: Vec<usize> = (0..n).collect();
    match kind {
        // A single named target.
        0 => {
            let t = rng.range(0, n - 1);
            let name = objects[t].name();
            let text = match rng.range(0, 5) {
                0 => format!("Please segment the {name}."),
                1 => format!("Segment the {name}."),
                2 => format!("Can you segment the {name}?"),
                3 => format!("Where is the {name}?"),
                4 => format!("Show me the {name}."),
                _ => format!("Find the {name}."),
            };
            Some(question(text, objects, vec![t]))
        }
        // Two named targets, in the question's order.
        1 => {
            if n < 2 {
                return None;
            }
            let mut idx = all.clone();
            rng.shuffle(&mut idx);
            let (a, b) = (idx[0], idx[1]);
            let (na, nb) = (objects[a].name(), objects[b].name());
            let text = match rng.range(0, 3) {
                0 => format!("Please segment the {na} and the {nb}."),
                1 => format!("Segment the {na} and the {nb}."),
                2 => format!("Where are the {na} and the {nb}?"),
                _ => format!("Can you segment the {na} and the {nb}?"),
            };
            Some(question(text, objects, vec![a, b]))
        }
        // Every object of a colour, left to right.
        2 => {
            let c = objects[rng.range(0, n - 1)].colour;
            let colour = COLOURS[c].0;
            let t = left_to_right(
                objects,
                all.into_iter()
                    .filter(|&i| objects[i].colour == c)
                    .collect(),
            );
            let text = match rng.range(0, 2) {
                0 => format!("Segment all the {colour} shapes."),
                1 => format!("Please segment every {colour} shape."),
                _ => format!("Find all the {colour} objects."),
            };
            Some(question(text, objects, t))
        }
        // Every object of a shape, left to right.
        3 => {
            let s = objects[rng.range(0, n - 1)].shape;
            let t = left_to_right(
                objects,
                all.into_iter().filter(|&i| objects[i].shape == s).collect(),
            );
            let text = match rng.range(0, 2) {
                0 => format!("Segment every {}.", SHAPES[s]),
                1 => format!("Please segment all the {}.", SHAPES_PLURAL[s]),
                _ => format!("Find every {}.", SHAPES[s]),
            };
            Some(question(text, objects, t))
        }
        // Size: "the small red circle" when the pair repeats, else "all the large shapes".
        4 => {
            if let Some(t) = (0..n).find(|&i| objects[i].needs_size) {
                let name = objects[t].name();
                return Some(question(
                    format!("Please segment the {name}."),
                    objects,
                    vec![t],
                ));
            }
            let large = rng.f32() < 0.5;
            let word = if large { "large" } else { "small" };
            let t = left_to_right(
                objects,
                all.into_iter()
                    .filter(|&i| objects[i].large == large)
                    .collect(),
            );
            if t.is_empty() {
                return None;
            }
            let text = match rng.range(0, 1) {
                0 => format!("Segment all the {word} shapes."),
                _ => format!("Please segment every {word} shape."),
            };
            Some(question(text, objects, t))
        }
        // Spatial: the one object entirely left / right / above / below a named one.
        5 => {
            let x = rng.range(0, n - 1);
            let dir = rng.range(0, 3);
            let bx = objects[x].mask.bbox()?;
            let others: Vec<usize> = (0..n)
                .filter(|&i| i != x)
                .filter(|&i| {
                    let Some(b) = objects[i].mask.bbox() else {
                        return false;
                    };
                    match dir {
                        0 => b[0] + b[2] <= bx[0],
                        1 => b[0] >= bx[0] + bx[2],
                        2 => b[1] + b[3] <= bx[1],
                        _ => b[1] >= bx[1] + bx[3],
                    }
                })
                .collect();
            if others.len() != 1 {
                return None;
            }
            let rel = ["left of", "right of", "above", "below"][dir];
            let text = format!("Segment the shape {rel} the {}.", objects[x].name());
            Some(question(text, objects, others))
        }
        // The largest / smallest object by visible area, with a clear margin.
        6 => {
            let mut by_area: Vec<usize> = all;
            by_area.sort_by_key(|&i| std::cmp::Reverse(objects[i].mask.area()));
            let largest = rng.f32() < 0.5;
            let (t, margin_ok) = if largest {
                let (a, b) = (
                    objects[by_area[0]].mask.area(),
                    objects[by_area[1]].mask.area(),
                );
                (by_area[0], a as f32 >= 1.4 * b as f32)
            } else {
                let (a, b) = (
                    objects[by_area[n - 1]].mask.area(),
                    objects[by_area[n - 2]].mask.area(),
                );
                (by_area[n - 1], b as f32 >= 1.4 * a as f32)
            };
            if !margin_ok {
                return None;
            }
            let word = if largest { "largest" } else { "smallest" };
            Some(question(
                format!("Segment the {word} shape."),
                objects,
                vec![t],
            ))
        }
        // A list of 3–6 named targets.
        7 => {
            if n < 3 {
                return None;
            }
            let k = rng.range(3, n.min(6));
            let mut idx = all;
            rng.shuffle(&mut idx);
            idx.truncate(k);
            let names: Vec<String> = idx.iter().map(|&i| objects[i].name()).collect();
            let text = format!("Please segment {}.", name_list(&names));
            Some(question(text, objects, idx))
        }
        // Every object.
        _ => {
            let t = left_to_right(objects, all);
            let text = if rng.f32() < 0.5 {
                "Segment all the shapes.".to_string()
            } else {
                "Please segment every shape.".to_string()
            };
            Some(question(text, objects, t))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_scene_and_splits_differ() {
        for split in Split::ALL {
            for i in 0..4 {
                let a = scene(7, split, i);
                let b = scene(7, split, i);
                assert_eq!(a.image, b.image);
                assert_eq!(a.questions.len(), b.questions.len());
                for (qa, qb) in a.questions.iter().zip(&b.questions) {
                    assert_eq!((&qa.text, &qa.targets), (&qb.text, &qb.targets));
                }
            }
        }
        assert_ne!(
            scene(7, Split::Train, 0).image,
            scene(7, Split::Val, 0).image
        );
        assert_ne!(
            scene(7, Split::Train, 0).image,
            scene(8, Split::Train, 0).image
        );
    }

    #[test]
    fn scenes_follow_the_split_rules() {
        for i in 0..40 {
            for split in Split::ALL {
                let s = scene(3, split, i);
                let (w, h) = (s.image.width() as usize, s.image.height() as usize);
                assert!((160..=640).contains(&w) && (160..=640).contains(&h));
                let n = s.objects.len();
                assert!((2..=6).contains(&n), "{n} objects");
                assert!(!s.questions.is_empty());
                for o in &s.objects {
                    assert!(o.mask.area() > 0);
                    let held = HELD_OUT.contains(&(o.colour, o.shape));
                    if matches!(split, Split::Train | Split::Val) {
                        assert!(!held, "held-out pair in {split:?}");
                    }
                }
                // Visible masks never overlap.
                for y in 0..h * w {
                    let owners = s.objects.iter().filter(|o| o.mask.data[y] != 0).count();
                    assert!(owners <= 1);
                }
                for q in &s.questions {
                    assert_eq!(
                        q.text_answer.matches(SEG_PLACEHOLDER).count(),
                        q.targets.len()
                    );
                    for &t in &q.targets {
                        assert!(q.text_answer.contains(&s.objects[t].name()));
                    }
                    match split {
                        Split::TestMany => assert!((4..=6).contains(&q.targets.len())),
                        Split::TestComp => {
                            assert!(q
                                .targets
                                .iter()
                                .any(|&t| HELD_OUT
                                    .contains(&(s.objects[t].colour, s.objects[t].shape))))
                        }
                        _ => assert!(!q.targets.is_empty()),
                    }
                }
            }
        }
    }

    #[test]
    fn names_are_unique_within_a_scene() {
        for i in 0..60 {
            let s = scene(11, Split::Train, i);
            let names: Vec<String> = s.objects.iter().map(Object::name).collect();
            for (a, na) in names.iter().enumerate() {
                assert_eq!(
                    names.iter().filter(|n| *n == na).count(),
                    1,
                    "{a}: {names:?}"
                );
            }
        }
    }
}
