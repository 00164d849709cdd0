//! Writing results to the user's disk without ever losing the user's data.
//!
//! Rules (the README's `--out` paragraph says the same):
//! - The program writes only its own files, each through a temporary file in the same
//!   directory and a rename, and removes only files it wrote itself.
//! - An output directory that does not exist is filled as a temporary sibling
//!   (`.NAME.tmp-PID`) and renamed into place once complete: a failed run leaves nothing.
//! - An existing directory is written into only when it is empty or holds a previous result
//!   of this program, recognised by its manifest (`result.json`, `eval.json`, …) carrying
//!   [`WRITTEN_BY`]`.program == "pixellm"` and a `files` list. The new files go next to
//!   whatever else is there; files the previous result listed and the new one does not
//!   (stale `mask_NN.png`) are removed; nothing else is touched. A name the new result would
//!   write that exists but the previous result did not list is a refusal, not an overwrite.
//! - Anything else — a directory with other contents (`.`, `/`, a home directory), a file,
//!   a symbolic link — is refused with a one-line error before any work, and again before
//!   writing. No path the user gave is ever removed recursively.
//!
//! Single files (`bench --json FILE`) follow the same idea through [`write_file`]: created
//! through a temporary file and a rename; an existing file is replaced only when it is a
//! JSON document this program wrote.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::{Error, Result};

/// The manifest key that marks a file or directory as written by this program.
pub const WRITTEN_BY: &str = "written_by";

/// The `written_by` object of a manifest: program, command and version.
pub fn written_by(command: &str) -> Value {
    json!({"program": "pixellm", "command": command, "version": env!("CARGO_PKG_VERSION")})
}

/// Whether a parsed JSON document says this program wrote it.
fn ours(doc: &Value) -> bool {
    doc.get(WRITTEN_BY)
        .and_then(|w| w.get("program"))
        .and_then(Value::as_str)
        == Some("pixellm")
}

fn refuse(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::AlreadyExists, why.to_string()),
    )
}

/// Unique temporary names within one process (several writers may share a directory).
fn tmp_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.tmp-{}-{n}", std::process::id())
}

/// A path an output may use inside its directory: relative, made of plain components
/// (`mask_00.png`, `images/val/000017.png`), none hidden, `..` or empty. Applied to names
/// read back from a previous manifest too, which may have been edited.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\\', '\0'])
        && name
            .split('/')
            .all(|c| !c.is_empty() && !c.starts_with('.') && Path::new(c).components().count() == 1)
}

/// What an output directory is, decided from what is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// Nothing there yet: fill a temporary sibling and rename it into place.
    Absent,
    /// An existing directory that is empty or holds a previous result listing these files.
    Update(Vec<String>),
}

/// Reads a previous result's manifest; `Ok(None)` when there is no manifest at all.
fn previous_files(dir: &Path, manifest: &str) -> Result<Option<Vec<String>>> {
    let path = dir.join(manifest);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let foreign = || {
        refuse(
            dir,
            format!(
                "output directory holds a {manifest} this program did not write; \
                 refusing to write into it (choose a new directory)"
            ),
        )
    };
    if !meta.is_file() {
        return Err(foreign());
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| foreign())?;
    if !ours(&doc) {
        return Err(foreign());
    }
    let files: Vec<String> = doc
        .get("files")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let mut listed = Vec::new();
    for f in files {
        // A listed name that is not a plain file name is never acted on.
        if plain_name(&f) && f != manifest {
            listed.push(f);
        }
    }
    listed.push(manifest.to_string());
    Ok(Some(listed))
}

fn classify(dir: &Path, manifest: &str) -> Result<Found> {
    classify_ignoring(dir, manifest, &[])
}

/// [`classify`], with the files this run staged (and the folders holding them) not
/// counted as the directory's contents.
fn classify_ignoring(dir: &Path, manifest: &str, staged: &[(String, PathBuf)]) -> Result<Found> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => return Err(Error::io(dir, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(refuse(
            dir,
            "output path is a symbolic link; refusing to write through it \
             (give the directory it points to, or a new directory)",
        ));
    }
    if !meta.is_dir() {
        return Err(refuse(
            dir,
            "output path already exists and is a file, not a directory \
             (refusing to replace it; choose a new directory)",
        ));
    }
    if let Some(files) = previous_files(dir, manifest)? {
        return Ok(Found::Update(files));
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| !staged.iter().any(|(_, s)| s == p || s.starts_with(p)))
        .collect();
    // Another result of this program (e.g. another split of a generated data set) makes
    // the directory ours to add to; its files stay untouched.
    let holds_ours = entries.iter().any(|p| {
        p.extension().is_some_and(|e| e == "json")
            && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
            && std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|d| ours(&d))
    });
    if !entries.is_empty() && !holds_ours {
        return Err(refuse(
            dir,
            format!(
                "output directory already exists and holds files this program did not \
                 write (no pixellm {manifest}); refusing to write into it \
                 (choose a new directory, e.g. {})",
                suggestion(dir)
            ),
        ));
    }
    Ok(Found::Update(Vec::new()))
}

/// A fresh directory name next to `dir`, for the refusal message.
fn suggestion(dir: &Path) -> String {
    let base = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "pixellm".into());
    format!("{base}-pixellm-out")
}

/// Checks, before any work, that an output directory may be written (see the module
/// docs). Creates nothing.
pub fn check_dir(dir: &Path, manifest: &str) -> Result<()> {
    classify(dir, manifest).map(|_| ())
}

/// An output directory being written. Files go to temporary names first; [`commit`]
/// renames them into place, writes the manifest last and removes stale files of the
/// previous result. Dropped without a commit, it removes exactly the temporary files it
/// created and leaves everything else as it was.
///
/// [`commit`]: OutputDir::commit
pub struct OutputDir {
    dir: PathBuf,
    manifest: String,
    found: Found,
    /// Where files are staged: a temporary sibling directory (absent target) or the
    /// target itself (update).
    stage: PathBuf,
    /// `(final name, staged path)` of every file written so far.
    staged: Vec<(String, PathBuf)>,
    stage_dir_created: bool,
    done: bool,
}

impl OutputDir {
    /// Opens `dir` for a result whose manifest is `manifest` (checked as in [`check_dir`]).
    pub fn open(dir: &Path, manifest: &str) -> Result<Self> {
        let found = classify(dir, manifest)?;
        let (stage, stage_dir_created) = match &found {
            Found::Absent => {
                let parent = dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "pixellm-out".into());
                let stage = parent.join(tmp_name(&name));
                // create_dir, not create_dir_all: the stage must be new, so it is ours.
                std::fs::create_dir(&stage).map_err(|e| Error::io(&stage, e))?;
                (stage, true)
            }
            Found::Update(_) => (dir.to_path_buf(), false),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest: manifest.to_string(),
            found,
            stage,
            staged: Vec::new(),
            stage_dir_created,
            done: false,
        })
    }

    /// The directory the result ends up in.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Stages one file (a plain name such as `mask_00.png`).
    pub fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        assert!(
            plain_name(name) && name != self.manifest,
            "output file name `{name}`"
        );
        let rel = Path::new(name);
        let file = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .expect("plain names have a file name");
        let sub = self.stage.join(rel.parent().unwrap_or(Path::new("")));
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        let staged = match &self.found {
            Found::Absent => sub.join(&file),
            Found::Update(_) => sub.join(tmp_name(&file)),
        };
        write_new(&staged, bytes)?;
        self.staged.retain(|(n, _)| n != name);
        self.staged.push((name.to_string(), staged));
        Ok(())
    }

    /// Finishes the result: `manifest` gets [`WRITTEN_BY`] and the `files` list added, is
    /// written last, and the result's files appear under their final names.
    pub fn commit(mut self, command: &str, mut manifest: Value) -> Result<()> {
        let names: Vec<String> = self.staged.iter().map(|(n, _)| n.clone()).collect();
        if let Value::Object(m) = &mut manifest {
            m.insert(WRITTEN_BY.into(), written_by(command));
            m.insert("files".into(), json!(names));
        }
        let text = serde_json::to_string_pretty(&manifest).expect("JSON values serialise");
        let manifest_name = self.manifest.clone();
        match self.found.clone() {
            Found::Absent => {
                write_new(&self.stage.join(&manifest_name), text.as_bytes())?;
                self.staged
                    .push((manifest_name.clone(), self.stage.join(&manifest_name)));
                // Someone may have created the target meanwhile: rename never replaces a
                // non-empty directory, and an empty one holds nothing to lose.
                if std::fs::symlink_metadata(&self.dir).is_ok() {
                    return Err(refuse(
                        &self.dir,
                        "output directory appeared while this run was writing; refusing to \
                         replace it (choose a new directory)",
                    ));
                }
                std::fs::rename(&self.stage, &self.dir).map_err(|e| Error::io(&self.dir, e))?;
                self.done = true;
                Ok(())
            }
            Found::Update(previous) => {
                // Re-check the directory right before touching it: still ours (or still
                // empty apart from our staged files), and no final name taken by a file
                // the previous result did not list.
                let previous = match previous_files(&self.dir, &manifest_name)? {
                    Some(p) => p,
                    None => {
                        // Still empty apart from what this run staged (or still holding
                        // another result of this program).
                        if !matches!(
                            classify_ignoring(&self.dir, &manifest_name, &self.staged)?,
                            Found::Update(_)
                        ) {
                            return Err(refuse(
                                &self.dir,
                                "output directory vanished while writing",
                            ));
                        }
                        previous
                    }
                };
                for name in names.iter().chain(std::iter::once(&manifest_name)) {
                    let target = self.dir.join(name);
                    match std::fs::symlink_metadata(&target) {
                        Err(_) => {}
                        Ok(m) if m.is_file() && previous.contains(name) => {}
                        Ok(_) => {
                            return Err(refuse(
                                &target,
                                "exists and is not a file of the previous pixellm result in \
                                 this directory; refusing to replace it (choose a new \
                                 directory)",
                            ))
                        }
                    }
                }
                let manifest_tmp = self.stage.join(tmp_name(&manifest_name));
                write_new(&manifest_tmp, text.as_bytes())?;
                self.staged.push((manifest_name.clone(), manifest_tmp));
                for (name, staged) in &self.staged {
                    let target = self.dir.join(name);
                    std::fs::rename(staged, &target).map_err(|e| Error::io(&target, e))?;
                }
                self.done = true;
                // Stale files of the previous result: only plain files it listed itself.
                for name in previous {
                    if names.contains(&name) || name == manifest_name {
                        continue;
                    }
                    let path = self.dir.join(&name);
                    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Ok(())
            }
        }
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for (_, staged) in &self.staged {
            let _ = std::fs::remove_file(staged);
        }
        if self.stage_dir_created {
            // Our staged files are gone; remove the (now empty) folders we made, deepest
            // first. A folder someone else wrote into is not empty and stays.
            let mut dirs: Vec<PathBuf> = self
                .staged
                .iter()
                .filter_map(|(_, p)| p.parent().map(Path::to_path_buf))
                .filter(|d| d.starts_with(&self.stage))
                .collect();
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            dirs.dedup();
            for d in dirs {
                let mut cur = d.as_path();
                while cur != self.stage && cur.starts_with(&self.stage) {
                    let _ = std::fs::remove_dir(cur);
                    cur = cur.parent().unwrap_or(&self.stage);
                }
            }
            let _ = std::fs::remove_dir(&self.stage);
        }
    }
}

/// Replaces `name` inside `dir` (temporary file and rename) when the manifest `manifest`
/// there is this program's and lists `name`: updating one file of a result in place.
pub fn replace_own_file(dir: &Path, manifest: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let listed = previous_files(dir, manifest)?.unwrap_or_default();
    if !plain_name(name) || !listed.iter().any(|n| n == name) {
        return Err(refuse(
            &dir.join(name),
            format!(
                "is not a file of the pixellm result in {}; refusing to replace it",
                dir.display()
            ),
        ));
    }
    let target = dir.join(name);
    let tmp = target.with_file_name(tmp_name(
        &target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    write_new(&tmp, bytes)?;
    std::fs::rename(&tmp, &target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&target, e)
    })
}

/// Creates `path` (which must not exist) with `bytes`, synced to disk.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Checks that [`write_file`] may write `path`: absent, or a JSON file this program wrote.
pub fn check_file(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.file_type().is_symlink() => Err(refuse(
            path,
            "is a symbolic link; refusing to write through it (choose a new file name)",
        )),
        Ok(m) if !m.is_file() => Err(refuse(
            path,
            "exists and is not a file; refusing to replace it (choose a new file name)",
        )),
        Ok(_) => {
            let doc = std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if doc.as_ref().is_some_and(ours) {
                Ok(())
            } else {
                Err(refuse(
                    path,
                    "exists and was not written by pixellm; refusing to replace it \
                     (choose a new file name)",
                ))
            }
        }
    }
}

/// Writes one file through a temporary file in the same directory and a rename. An
/// existing `path` is replaced only when [`check_file`] allows it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    check_file(path)?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| refuse(path, "not a file name"))?;
    let tmp = parent.join(tmp_name(&name));
    write_new(&tmp, bytes)?;
    if let Err(e) =
        check_file(path).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)))
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// The result JSON of one segmentation, shared by the CLI's `result.json`, the web page and
/// the server: `text`, `token_ids`, `targets` (`index`, `name`, `score`, `area`, `bbox`
/// `[x0, y0, x1, y1]` end-exclusive or null, and `mask` = `mask_name(index)` when given),
/// `width`, `height`, `timings_ms`, `backend`, `dtype`, `warnings`.
pub fn result_json(
    seg: &crate::Segmentation,
    backend: &str,
    dtype: &str,
    mask_name: Option<&dyn Fn(usize) -> String>,
) -> Value {
    let (h, w) = seg.size;
    let names = crate::pipeline::target_names(&seg.text, seg.targets.len());
    let targets: Vec<Value> = seg
        .targets
        .iter()
        .zip(names)
        .map(|(t, name)| {
            let mut o = json!({
                "index": t.index,
                "name": name,
                "score": t.score,
                "area": t.area,
                "bbox": t.bbox,
            });
            if let Some(f) = mask_name {
                o["mask"] = f(t.index).into();
            }
            o
        })
        .collect();
    let timings: serde_json::Map<String, Value> = seg
        .timings_ms
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "text": seg.text,
        "token_ids": seg.token_ids,
        "targets": targets,
        "width": w,
        "height": h,
        "timings_ms": timings,
        "backend": backend,
        "dtype": dtype,
        "warnings": seg.warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pixellm-output-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn result(dir: &Path, masks: usize) -> Result<()> {
        let mut out = OutputDir::open(dir, "result.json")?;
        for i in 0..masks {
            out.put(&format!("mask_{i:02}.png"), b"png")?;
        }
        out.commit("segment", json!({"text": "t"}))
    }

    #[test]
    fn new_directory_then_update_removes_only_listed_stale_files() {
        let s = scratch("update");
        let out = s.join("out");
        result(&out, 3).unwrap();
        assert_eq!(
            names(&out),
            ["mask_00.png", "mask_01.png", "mask_02.png", "result.json"]
        );
        std::fs::write(out.join("notes.txt"), b"mine").unwrap();
        result(&out, 1).unwrap();
        assert_eq!(names(&out), ["mask_00.png", "notes.txt", "result.json"]);
        assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
        assert_eq!(names(&s), ["out"], "no temporary sibling left");
        std::fs::remove_dir_all(&s).unwrap();
    }

    #[test]
    fn foreign_directory_file_and_symlink_are_refused_untouched() {
        let s = scratch("refuse");
        let foreign = s.join("foreign");
        std::fs::create_dir_all(foreign.join("sub")).unwrap();
        std::fs::write(foreign.join("a.txt"), b"a").unwrap();
        let err = result(&foreign, 1).unwrap_err().to_string();
        assert!(err.contains("did not") && err.contains("refusing"), "{err}");
        assert_eq!(names(&foreign), ["a.txt", "sub"]);
        let file = s.join("file");
        std::fs::write(&file, b"f").unwrap();
        assert!(result(&file, 1).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"f");
        #[cfg(unix)]
        {
            let link = s.join("link");
            std::os::unix::fs::symlink(&foreign, &link).unwrap();
            assert!(result(&link, 1)
                .unwrap_err()
                .to_string()
                .contains("symbolic link"));
        }
        // A manifest that is not ours is as foreign as any other file.
        std::fs::write(foreign.join("result.json"), b"{\"text\": 1}").unwrap();
        assert!(result(&foreign, 1).is_err());
        std::fs::remove_dir_all(&s).unwrap();
    }

    #[test]
    fn unlisted_name_collision_and_hostile_manifest_entries() {
        let s = scratch("collide");
        let out = s.join("out");
        result(&out, 1).unwrap();
        std::fs::write(out.join("mask_01.png"), b"user's").unwrap();
        let err = result(&out, 2).unwrap_err().to_string();
        assert!(err.contains("mask_01.png"), "{err}");
        assert_eq!(std::fs::read(out.join("mask_01.png")).unwrap(), b"user's");
        assert_eq!(std::fs::read(out.join("mask_00.png")).unwrap(), b"png");
        // A manifest edited to list paths outside the directory: never acted on.
        let victim = s.join("victim.txt");
        std::fs::write(&victim, b"keep").unwrap();
        let manifest = json!({WRITTEN_BY: written_by("segment"),
            "files": ["../victim.txt", "/etc/passwd", ".hidden", "mask_00.png"]});
        std::fs::write(out.join("result.json"), manifest.to_string()).unwrap();
        std::fs::remove_file(out.join("mask_01.png")).unwrap();
        result(&out, 0).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(names(&out), ["result.json"]);
        std::fs::remove_dir_all(&s).unwrap();
    }

    #[test]
    fn dropped_without_commit_leaves_the_previous_result() {
        let s = scratch("drop");
        let out = s.join("out");
        result(&out, 2).unwrap();
        let before = std::fs::read(out.join("result.json")).unwrap();
        {
            let mut o = OutputDir::open(&out, "result.json").unwrap();
            o.put("mask_00.png", b"new").unwrap();
        }
        assert_eq!(names(&out), ["mask_00.png", "mask_01.png", "result.json"]);
        assert_eq!(std::fs::read(out.join("mask_00.png")).unwrap(), b"png");
        assert_eq!(std::fs::read(out.join("result.json")).unwrap(), before);
        {
            let mut o = OutputDir::open(&s.join("new"), "result.json").unwrap();
            o.put("mask_00.png", b"new").unwrap();
        }
        assert_eq!(names(&s), ["out"]);
        std::fs::remove_dir_all(&s).unwrap();
    }

    #[test]
    fn single_files_replace_only_their_own() {
        let s = scratch("file");
        let f = s.join("bench.json");
        let doc = |v: i32| json!({WRITTEN_BY: written_by("bench"), "v": v}).to_string();
        write_file(&f, doc(1).as_bytes()).unwrap();
        write_file(&f, doc(2).as_bytes()).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), doc(2));
        let user = s.join("user.json");
        std::fs::write(&user, b"{\"mine\": true}").unwrap();
        assert!(write_file(&user, doc(3).as_bytes()).is_err());
        assert_eq!(std::fs::read(&user).unwrap(), b"{\"mine\": true}");
        assert_eq!(names(&s), ["bench.json", "user.json"]);
        std::fs::remove_dir_all(&s).unwrap();
    }
}
