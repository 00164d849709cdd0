//! gIoU and cIoU of multi-target segmentation, defined exactly (docs/eval.md):
//!
//! Per question, predicted masks P and ground-truth masks G are matched one-to-one to
//! maximise the total IoU (Hungarian). `s_q = Σ_matched IoU / max(|P|, |G|)`, and 1 when
//! both are empty. **gIoU** is the mean of `s_q` over questions. **cIoU** is
//! `Σ_q Σ_matched |P∩G|` / `Σ_q (Σ_matched |P∪G| + Σ_unmatched |P| + Σ_unmatched |G|)`.
//!
//! Also the official-compatible figures of PixelLM's `ar_validate` (its bugs reproduced on
//! binary masks, see [`OfficialCompat`]).

use crate::data::rle::Mask;

/// Minimum-cost assignment of the rows of `cost` (`n × m`, row-major) to distinct columns,
/// `n ≤ m` — the Hungarian algorithm with potentials, O(n²m). Returns each row's column.
///
/// Hand-written rather than a crate: the well-kept one (`pathfinding::kuhn_munkres`) needs
/// integer (`Ord`) weights, and rounding IoUs would change which of two near-equal
/// matchings wins.
pub fn assign_min(cost: &[f64], n: usize, m: usize) -> Vec<usize> {
    assert!(n <= m && cost.len() == n * m, "assign_min: {n}×{m}");
    if n == 0 {
        return Vec::new();
    }
    // e-maxx's formulation, 1-based with a virtual column 0.
    let inf = f64::INFINITY;
    let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; m + 1]);
    let (mut p, mut way) = (vec![0usize; m + 1], vec![0usize; m + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; m + 1];
        let mut used = vec![false; m + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0;
            for j in 1..=m {
                if used[j] {
                    continue;
                }
                let cur = cost[(i0 - 1) * m + (j - 1)] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut row_to_col = vec![0; n];
    for j in 1..=m {
        if p[j] != 0 {
            row_to_col[p[j] - 1] = j - 1;
        }
    }
    row_to_col
}

/// IoU of two masks; 1 when both are empty (as the official `+1 where U == 0`).
pub fn iou(a: &Mask, b: &Mask) -> f64 {
    let i = a.intersection(b);
    let u = a.area() + b.area() - i;
    if u == 0 {
        1.0
    } else {
        i as f64 / u as f64
    }
}

/// One question's matching and score.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionScore {
    /// `s_q`.
    pub s: f64,
    /// Predicted masks.
    pub n_pred: usize,
    /// Ground-truth masks.
    pub n_gt: usize,
    /// `(pred, gt, iou, intersection, union)` of each matched pair.
    pub pairs: Vec<(usize, usize, f64, u64, u64)>,
    /// `Σ_matched |P∩G|`.
    pub inter: u64,
    /// `Σ_matched |P∪G| + Σ_unmatched |P| + Σ_unmatched |G|`.
    pub union: u64,
    /// `Σ_unmatched |G|`.
    pub unmatched_gt_area: u64,
}

/// Matches `pred` to `gt` (Hungarian on IoU) and scores the question.
pub fn score_question(pred: &[Mask], gt: &[Mask]) -> QuestionScore {
    let (np, ng) = (pred.len(), gt.len());
    let areas_p: Vec<u64> = pred.iter().map(Mask::area).collect();
    let areas_g: Vec<u64> = gt.iter().map(Mask::area).collect();
    let inter: Vec<u64> = pred
        .iter()
        .flat_map(|p| gt.iter().map(move |g| p.intersection(g)))
        .collect();
    let iou_of = |i: usize, j: usize| {
        let it = inter[i * ng + j];
        let u = areas_p[i] + areas_g[j] - it;
        if u == 0 {
            1.0
        } else {
            it as f64 / u as f64
        }
    };
    // Rows = the smaller side, cost = −IoU.
    let pairs: Vec<(usize, usize)> = if np <= ng {
        let cost: Vec<f64> = (0..np)
            .flat_map(|i| (0..ng).map(move |j| (i, j)))
            .map(|(i, j)| -iou_of(i, j))
            .collect();
        assign_min(&cost, np, ng).into_iter().enumerate().collect()
    } else {
        let cost: Vec<f64> = (0..ng)
            .flat_map(|j| (0..np).map(move |i| (i, j)))
            .map(|(i, j)| -iou_of(i, j))
            .collect();
        assign_min(&cost, ng, np)
            .into_iter()
            .enumerate()
            .map(|(j, i)| (i, j))
            .collect()
    };
    let mut out = QuestionScore {
        s: 0.0,
        n_pred: np,
        n_gt: ng,
        pairs: Vec::new(),
        inter: 0,
        union: 0,
        unmatched_gt_area: 0,
    };
    let (mut used_p, mut used_g) = (vec![false; np], vec![false; ng]);
    let mut sum = 0.0;
    for (i, j) in pairs {
        let it = inter[i * ng + j];
        let u = areas_p[i] + areas_g[j] - it;
        let v = iou_of(i, j);
        sum += v;
        out.inter += it;
        out.union += u;
        used_p[i] = true;
        used_g[j] = true;
        out.pairs.push((i, j, v, it, u));
    }
    out.union += (0..np)
        .filter(|&i| !used_p[i])
        .map(|i| areas_p[i])
        .sum::<u64>();
    out.unmatched_gt_area = (0..ng).filter(|&j| !used_g[j]).map(|j| areas_g[j]).sum();
    out.union += out.unmatched_gt_area;
    out.s = if np == 0 && ng == 0 {
        1.0
    } else {
        sum / np.max(ng) as f64
    };
    out
}

/// gIoU and cIoU over a set of questions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    /// Questions.
    pub questions: usize,
    /// Σ s_q.
    pub s_sum: f64,
    /// Σ intersections.
    pub inter: u64,
    /// Σ unions (unmatched areas included).
    pub union: u64,
}

impl Totals {
    /// Adds one question.
    pub fn add(&mut self, q: &QuestionScore) {
        self.questions += 1;
        self.s_sum += q.s;
        self.inter += q.inter;
        self.union += q.union;
    }

    /// Mean `s_q` (0 for no questions).
    pub fn giou(&self) -> f64 {
        if self.questions == 0 {
            0.0
        } else {
            self.s_sum / self.questions as f64
        }
    }

    /// `ΣI / ΣU`; 1 when every mask of every question was empty.
    pub fn ciou(&self) -> f64 {
        if self.union == 0 {
            if self.questions == 0 {
                0.0
            } else {
                1.0
            }
        } else {
            self.inter as f64 / self.union as f64
        }
    }
}

/// The figures PixelLM's `ar_validate` would print for the same masks, its bugs
/// reproduced (docs/eval.md):
/// - an unmatched prediction is scored against an empty GT on its raw logits, which
///   `histc(min=0, max=1)` mostly drops: it counts as IoU 1 and adds nothing to I or U;
/// - an unmatched GT pairs with an empty prediction: IoU 0, its area added to U;
/// - gIoU = Σ entries' IoU / Σ_images max(predicted masks, GT masks) of the image.
///
/// The matching itself is this module's IoU Hungarian (the official one samples 12 544
/// unseeded random points of BCE+Dice costs), and predictions given as binary masks have
/// no logits, so these figures approximate the official code, not reproduce it bit for
/// bit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OfficialCompat {
    iou_sum: f64,
    max_sum: usize,
    inter: u64,
    union: u64,
}

impl OfficialCompat {
    /// Adds one image's questions.
    pub fn add_image(&mut self, questions: &[QuestionScore]) {
        let preds: usize = questions.iter().map(|q| q.n_pred).sum();
        let gts: usize = questions.iter().map(|q| q.n_gt).sum();
        self.max_sum += preds.max(gts);
        for q in questions {
            for &(_, _, iou, i, u) in &q.pairs {
                self.iou_sum += iou;
                self.inter += i;
                self.union += u;
            }
            // Unmatched predictions: IoU 1, nothing added to I or U (bug A).
            self.iou_sum += (q.n_pred - q.pairs.len()) as f64;
            // Unmatched GTs: IoU 0 against an empty prediction, their area in U.
            self.union += q.unmatched_gt_area;
        }
    }

    /// The official-style gIoU.
    pub fn giou(&self) -> f64 {
        if self.max_sum == 0 {
            0.0
        } else {
            self.iou_sum / self.max_sum as f64
        }
    }

    /// The official-style cIoU.
    pub fn ciou(&self) -> f64 {
        if self.union == 0 {
            0.0
        } else {
            self.inter as f64 / self.union as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` mask with the rectangle `[x0, x1) × [y0, y1)` set.
    fn rect(w: usize, h: usize, x0: usize, y0: usize, x1: usize, y1: usize) -> Mask {
        let mut m = Mask::empty(h, w);
        for y in y0..y1 {
            for x in x0..x1 {
                m.data[y * w + x] = 1;
            }
        }
        m
    }

    #[test]
    fn hungarian_finds_the_optimum() {
        // Greedy would take (0,0)=−0.9 then (1,1)=0; the optimum is (0,1)+(1,0).
        let cost = [-0.9, -0.8, -0.85, 0.0];
        assert_eq!(assign_min(&cost, 2, 2), vec![1, 0]);
        let cost = [3.0, 1.0, 2.0, 0.0, 5.0, 4.0];
        assert_eq!(assign_min(&cost, 2, 3), vec![1, 0]);
        // Brute force on pseudo-random 4×5 matrices.
        let mut s = 12345u64;
        for _ in 0..50 {
            let cost: Vec<f64> = (0..20)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (s >> 40) as f64 / (1u64 << 24) as f64
                })
                .collect();
            let got: f64 = assign_min(&cost, 4, 5)
                .iter()
                .enumerate()
                .map(|(i, &j)| cost[i * 5 + j])
                .sum();
            let mut best = f64::INFINITY;
            for a in 0..5 {
                for b in 0..5 {
                    for c in 0..5 {
                        for d in 0..5 {
                            let cols = [a, b, c, d];
                            if (0..4).any(|i| (0..i).any(|k| cols[i] == cols[k])) {
                                continue;
                            }
                            let v: f64 = (0..4).map(|i| cost[i * 5 + cols[i]]).sum();
                            best = best.min(v);
                        }
                    }
                }
            }
            assert!((got - best).abs() < 1e-12, "{got} vs {best}");
        }
    }

    #[test]
    fn metrics_on_hand_made_masks() {
        let a = rect(10, 10, 0, 0, 4, 4); // 16 px
        let b = rect(10, 10, 6, 6, 10, 10); // 16 px
        let a_shift = rect(10, 10, 2, 0, 6, 4); // overlaps a in 8: IoU 8/24
                                                // Perfect.
        let q = score_question(&[a.clone(), b.clone()], &[a.clone(), b.clone()]);
        assert_eq!((q.s, q.inter, q.union), (1.0, 32, 32));
        // Order swapped: the matching pairs them anyway.
        let q = score_question(&[b.clone(), a.clone()], &[a.clone(), b.clone()]);
        assert_eq!(q.s, 1.0);
        // Shifted.
        let q = score_question(std::slice::from_ref(&a_shift), std::slice::from_ref(&a));
        assert!((q.s - 8.0 / 24.0).abs() < 1e-12);
        assert_eq!((q.inter, q.union), (8, 24));
        // Missing target: one of two GTs predicted.
        let q = score_question(std::slice::from_ref(&a), &[a.clone(), b.clone()]);
        assert_eq!(q.s, 0.5);
        assert_eq!((q.inter, q.union), (16, 32));
        // Extra mask: a spurious prediction costs as much as a missing one.
        let q = score_question(&[a.clone(), b.clone()], std::slice::from_ref(&a));
        assert_eq!(q.s, 0.5);
        assert_eq!((q.inter, q.union), (16, 32));
        // Nothing predicted.
        let q = score_question(&[], &[a.clone(), b.clone()]);
        assert_eq!((q.s, q.inter, q.union), (0.0, 0, 32));
        // Both empty.
        let q = score_question(&[], &[]);
        assert_eq!(q.s, 1.0);
        let mut t = Totals::default();
        t.add(&q);
        assert_eq!((t.giou(), t.ciou()), (1.0, 1.0));
        // Aggregates: gIoU is the mean of s_q, cIoU pools pixels.
        let mut t = Totals::default();
        t.add(&score_question(
            std::slice::from_ref(&a),
            std::slice::from_ref(&a),
        ));
        t.add(&score_question(&[], std::slice::from_ref(&b)));
        assert_eq!(t.giou(), 0.5);
        assert_eq!(t.ciou(), 16.0 / 32.0);
    }

    #[test]
    fn official_compat_reproduces_the_histc_and_normalisation_bugs() {
        let a = rect(10, 10, 0, 0, 4, 4);
        let b = rect(10, 10, 6, 6, 10, 10);
        // One question, one GT, two predictions: ours 0.5, official 1.0 (the spurious
        // prediction scores IoU 1) with max_num 2: (1 + 1) / 2.
        let q = score_question(&[a.clone(), b.clone()], std::slice::from_ref(&a));
        let mut o = OfficialCompat::default();
        o.add_image(std::slice::from_ref(&q));
        assert_eq!(q.s, 0.5);
        assert_eq!(o.giou(), 1.0);
        assert_eq!(o.ciou(), 1.0);
        // Two questions in one image: q1 = 1 pred vs 2 GTs, q2 = 2 preds vs 1 GT. Per
        // image max(3, 3) = 3 but 4 entries are summed (bug B): (1 + 0 + 1 + 1) / 3.
        let q1 = score_question(std::slice::from_ref(&a), &[a.clone(), b.clone()]);
        let q2 = score_question(&[a.clone(), b.clone()], std::slice::from_ref(&b));
        let mut o = OfficialCompat::default();
        o.add_image(&[q1, q2]);
        assert!((o.giou() - 3.0 / 3.0).abs() < 1e-12, "{}", o.giou());
        // cIoU: I = 16 + 16, U = 16 + 16 (pairs) + 16 (unmatched GT b).
        assert!((o.ciou() - 32.0 / 48.0).abs() < 1e-12);
    }
}
