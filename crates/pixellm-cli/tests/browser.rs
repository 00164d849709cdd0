//! The web page in real headless Chromium (issue 4): a conformance-kit case through the
//! page's UI (image + question + forced answer), once with WebGPU (software adapter) and
//! once with WebGPU disabled (the CPU backend in wasm), compared with the native CLI.
//!
//! Needs Chromium (`/usr/bin/chromium`, or `$PIXELLM_CHROMIUM`), Node and the page's npm
//! packages (`npm ci --prefix web`). Without them the test prints one line and passes,
//! unless `PIXELLM_REQUIRE_BROWSER=1` (CI), where a missing piece is a failure.
//!
//! The page is built by `scripts/build-web.sh` into `web/dist`; when that is missing or
//! older than the sources, this test runs the script itself, into `target/web` (a
//! separate target directory: the native test build may still hold `target/`'s lock).
//! Screenshots and the page's outputs are kept in `target/browser-test/{cpu,webgpu}/`.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required() -> bool {
    std::env::var("PIXELLM_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// Skips (one line) or, when the browser test is required, fails.
fn missing(what: &str) {
    assert!(!required(), "PIXELLM_REQUIRE_BROWSER=1 but {what}");
    eprintln!("browser test skipped: {what}");
}

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PIXELLM_CHROMIUM").map(PathBuf::from),
        Some("/usr/bin/chromium".into()),
        Some("/usr/bin/chromium-browser".into()),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

fn newest_mtime(dirs: &[PathBuf]) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = dirs.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if let Ok(t) = meta.modified() {
            newest = newest.max(t);
        }
    }
    newest
}

/// `web/dist`, rebuilt when older than the library, the bindings or the page.
fn web_dist() -> PathBuf {
    let root = repo();
    let dist = root.join("web/dist");
    let wasm = dist.join("pkg/pixellm_web_bg.wasm");
    let built = std::fs::metadata(&wasm).and_then(|m| m.modified()).ok();
    let sources = newest_mtime(&[
        root.join("crates/pixellm/src"),
        root.join("crates/pixellm-web/src"),
        root.join("web/index.html"),
        root.join("web/app.js"),
        root.join("web/style.css"),
    ]);
    if built.is_none_or(|b| b < sources) {
        eprintln!("web/dist is missing or stale: running scripts/build-web.sh (minutes)");
        let status = Command::new("bash")
            .arg(root.join("scripts/build-web.sh"))
            .env("CARGO_TARGET_DIR", root.join("target/web"))
            .status()
            .expect("running scripts/build-web.sh");
        assert!(status.success(), "scripts/build-web.sh failed");
    }
    dist
}

/// A mask PNG as (width, height, ±1 per pixel: 255 = target), for [`iou`].
fn mask(path: &Path) -> (u32, u32, Vec<f32>) {
    let img = pixellm::image::decode_image(&std::fs::read(path).unwrap(), "mask").unwrap();
    let plane = img.pixels().map(|p| if p.0[0] == 255 { 1.0 } else { -1.0 });
    (img.width(), img.height(), plane.collect())
}

#[test]
fn page_segments_like_the_cli_with_and_without_webgpu() {
    let Some(chromium) = chromium() else {
        return missing("no Chromium (apt-get install chromium, or set PIXELLM_CHROMIUM)");
    };
    let root = repo();
    if Command::new("node").arg("--version").output().is_err() {
        return missing("no `node` on PATH");
    }
    if !root.join("web/node_modules/playwright-core").is_dir() {
        return missing("web/node_modules is not installed (run `npm ci --prefix web`)");
    }
    let dist = web_dist();

    let case = Case::load(CASES[0]);
    let question = case.json["question"].as_str().unwrap();
    let answer = case.json["teacher_forced"]["answer"].as_str().unwrap();
    let image = case.dir.join("image.png");
    let out_root = root.join("target/browser-test");
    let _ = std::fs::remove_dir_all(&out_root);

    // The native reference: the same case through the CLI on the CPU.
    let cli_out = out_root.join("cli");
    let run = Command::new(env!("CARGO_BIN_EXE_pixellm"))
        .args(["segment", "--model"])
        .arg(kit().join("checkpoint"))
        .arg("--vision-tower")
        .arg(kit().join("clip-vit-tiny-patch14-336"))
        .arg("--image")
        .arg(&image)
        .args(["--prompt", question, "--answer", answer, "--out"])
        .arg(&cli_out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "pixellm failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cli: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cli_out.join("result.json")).unwrap()).unwrap();
    let cli_targets = cli["targets"].as_array().unwrap();
    assert!(!cli_targets.is_empty());

    for (mode, webgpu, min_iou) in [("cpu", "off", 1.0), ("webgpu", "on", 0.99)] {
        let out = out_root.join(mode);
        let run = Command::new("node")
            .arg(root.join("web/test/browser-test.mjs"))
            .arg("--dist")
            .arg(&dist)
            .arg("--image")
            .arg(&image)
            .args([
                "--question",
                question,
                "--answer",
                answer,
                "--webgpu",
                webgpu,
            ])
            // SwiftShader compiles every kernel on first use: minutes, not seconds.
            .args(["--timeout-s", "1800"])
            .arg("--out")
            .arg(&out)
            .arg("--chromium")
            .arg(&chromium)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "the page failed ({mode}):\n{stdout}\n{stderr}"
        );
        let page: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("result.json")).unwrap()).unwrap();
        let backend = page["backend"].as_str().unwrap_or_default();
        match mode {
            "cpu" => assert_eq!(backend, "CPU (no WebGPU)", "{mode}"),
            _ => assert!(backend.starts_with("WebGPU"), "{mode}: backend {backend}"),
        }
        assert_eq!(page["text"], answer, "{mode}: answer");
        assert_eq!(page["streamedText"], answer, "{mode}: streamed answer");
        let targets = page["targets"].as_array().unwrap();
        assert_eq!(targets.len(), cli_targets.len(), "{mode}: targets");
        for (i, t) in cli_targets.iter().enumerate() {
            let ours = mask(&out.join(format!("mask_{i:02}.png")));
            let theirs = mask(&cli_out.join(t["mask"].as_str().unwrap()));
            assert_eq!(
                (ours.0, ours.1),
                (theirs.0, theirs.1),
                "{mode}: mask {i} size"
            );
            let iou = iou(&ours.2, &theirs.2);
            eprintln!(
                "{mode}: mask {i} IoU vs CLI {iou:.6} (score page {} / cli {})",
                targets[i]["score"], t["score"]
            );
            assert!(iou >= min_iou, "{mode}: mask {i} IoU {iou} < {min_iou}");
        }
        assert!(out.join("screenshot.png").is_file(), "{mode}: screenshot");
        eprintln!(
            "{mode}: backend {backend}; load {} ms, segment {} ms; screenshot {}",
            page["loadMs"],
            page["segmentMs"],
            out.join("screenshot.png").display()
        );
    }
}
