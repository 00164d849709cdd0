//! The `pixellm` binary end to end on a conformance-kit case.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::*;

fn pixellm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixellm"))
}

#[test]
fn segment_writes_result_masks_overlay_and_logits() {
    segment_matches_the_goldens(None);
}

/// The same run with the CPU's matrix products in a CBLAS library: `PIXELLM_TEST_BLAS`, else
/// the system OpenBLAS. Without one the test says so and passes, unless
/// `PIXELLM_REQUIRE_BLAS=1` (CI) makes that a failure.
#[test]
fn segment_with_a_cpu_blas_matches_the_goldens() {
    let library = std::env::var("PIXELLM_TEST_BLAS").unwrap_or("libopenblas.so.0".into());
    let probe = pixellm()
        .args(["--blas", &library, "devices"])
        .output()
        .unwrap();
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr);
        if std::env::var("PIXELLM_REQUIRE_BLAS").is_ok_and(|v| v == "1") {
            panic!("PIXELLM_REQUIRE_BLAS=1 but {why}");
        }
        eprintln!("skipping: {why}");
        return;
    }
    segment_matches_the_goldens(Some(&library));
}

#[test]
fn a_blas_that_cannot_be_loaded_is_a_one_line_error() {
    for library in ["/nonexistent/libmkl_rt.so", "libc.so.6"] {
        let run = pixellm()
            .args(["--blas", library, "devices"])
            .output()
            .unwrap();
        assert!(!run.status.success(), "{library}: exit status");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.starts_with("error: ")
                && stderr.contains(library)
                && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
}

fn segment_matches_the_goldens(blas: Option<&str>) {
    let case = Case::load(CASES[1]);
    let tag = if blas.is_some() { "blas" } else { "test" };
    let out = std::env::temp_dir().join(format!("pixellm-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let answer = case.json["teacher_forced"]["answer"].as_str().unwrap();
    let mut cmd = pixellm();
    match blas {
        Some(library) => cmd.args(["--blas", library]),
        None => cmd.env_remove("PIXELLM_BLAS"),
    };
    let run = cmd
        .args(["segment", "--model"])
        .arg(kit().join("checkpoint-bin"))
        .arg("--image")
        .arg(case.dir.join("image.png"))
        .args([
            "--prompt",
            case.json["question"].as_str().unwrap(),
            "--answer",
            answer,
            "--save-logits",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "pixellm failed: {stderr}");
    if let Some(library) = blas {
        assert!(
            stderr.contains("CPU matmul: ") && stderr.contains(library),
            "the loaded BLAS is named: {stderr}"
        );
    }
    assert!(
        String::from_utf8_lossy(&run.stdout).contains(answer),
        "answer streamed to stdout"
    );

    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["text"], answer);
    assert_eq!(result["backend"], "cpu");
    assert_eq!(result["dtype"], "f32");
    let targets = result["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    let golden = case.g("tf.pred_masks");
    let (h, w) = (golden.shape[1], golden.shape[2]);
    for (i, t) in targets.iter().enumerate() {
        let png = image_luma(&out.join(t["mask"].as_str().unwrap()));
        assert_eq!((png.1, png.0), (h, w), "mask size");
        let plane = &golden.values[i * h * w..(i + 1) * h * w];
        let ours: Vec<f32> = png
            .2
            .iter()
            .map(|&v| if v == 255 { 1.0 } else { -1.0 })
            .collect();
        let iou = iou(&ours, plane);
        assert!(iou >= 0.9999, "target {i}: mask IoU {iou}");
        let area = plane.iter().filter(|&&v| v > 0.0).count() as u64;
        assert!(
            (t["area"].as_u64().unwrap() as i64 - area as i64).abs() <= 2,
            "area"
        );
    }
    assert!(out.join("overlay.png").is_file());
    let logits = goldens(&out.join("logits.safetensors"));
    assert_close(
        "cli masks logits",
        &logits["masks"].values,
        &logits["masks"].shape,
        golden,
        1e-4,
    );
    assert_close(
        "cli low_res",
        &logits["low_res_masks"].values,
        &[2, 128, 128],
        &reshape(case.g("tf.low_res_masks_fused"), vec![2, 128, 128]),
        1e-4,
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn failure_exits_non_zero_with_one_line_and_writes_nothing() {
    let case = Case::load(CASES[0]);
    let out = std::env::temp_dir().join(format!("pixellm-cli-fail-{}", std::process::id()));
    let run = pixellm()
        .args(["segment", "--model"])
        .arg(kit().join("checkpoint"))
        .arg("--image")
        .arg(case.dir.join("does-not-exist.png"))
        .args(["--prompt", "x", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("does-not-exist.png"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "no output directory on failure");
}

fn reshape(g: &Golden, shape: Vec<usize>) -> Golden {
    Golden {
        shape,
        values: g.values.clone(),
    }
}

/// (width, height, pixels) of an 8-bit grayscale PNG.
fn image_luma(path: &std::path::Path) -> (usize, usize, Vec<u8>) {
    let img = pixellm::image::decode_image(&std::fs::read(path).unwrap(), "mask").unwrap();
    let (w, h) = (img.width() as usize, img.height() as usize);
    (w, h, img.pixels().map(|p| p.0[0]).collect())
}

/// The same case through the CLI on every backend of this machine: identical targets and
/// binary masks (IoU 1.0) at f32.
#[test]
fn backends_agree_through_the_cli() {
    let others: Vec<_> = backends()
        .iter()
        .map(|(b, _)| *b)
        .filter(|b| b.name() != "cpu")
        .collect();
    if others.is_empty() {
        eprintln!("only the cpu backend here: nothing to compare");
        return;
    }
    let case = Case::load(CASES[0]);
    let answer = case.json["teacher_forced"]["answer"].as_str().unwrap();
    let run = |backend: &str| {
        let out =
            std::env::temp_dir().join(format!("pixellm-cli-{backend}-{}", std::process::id()));
        let status = pixellm()
            .args(["segment", "--backend", backend, "--model"])
            .arg(kit().join("checkpoint"))
            .arg("--image")
            .arg(case.dir.join("image.png"))
            .args([
                "--prompt",
                case.json["question"].as_str().unwrap(),
                "--answer",
                answer,
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("result.json")).unwrap()).unwrap();
        let masks: Vec<Vec<u8>> = result["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| image_luma(&out.join(t["mask"].as_str().unwrap())).2)
            .collect();
        std::fs::remove_dir_all(&out).unwrap();
        (result, masks)
    };
    let (cpu, cpu_masks) = run("cpu");
    for b in others {
        let (other, masks) = run(b.name());
        assert_eq!(other["backend"], b.name());
        let (ta, tb) = (
            cpu["targets"].as_array().unwrap(),
            other["targets"].as_array().unwrap(),
        );
        assert_eq!(ta.len(), tb.len(), "{b}: number of targets");
        for (i, (x, y)) in ta.iter().zip(tb).enumerate() {
            assert_eq!(x["area"], y["area"], "{b} target {i}: area");
            assert_eq!(x["bbox"], y["bbox"], "{b} target {i}: bbox");
            let ds = (x["score"].as_f64().unwrap() - y["score"].as_f64().unwrap()).abs();
            assert!(ds < 1e-4, "{b} target {i}: score differs by {ds}");
            assert_eq!(
                cpu_masks[i], masks[i],
                "{b} target {i}: mask pixels (IoU 1.0)"
            );
        }
    }
}
