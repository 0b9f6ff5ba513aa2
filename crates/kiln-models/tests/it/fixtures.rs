use crate::common::fixtures;

#[test]
fn every_file_listed_in_the_manifest_exists() {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("MANIFEST.json")).unwrap())
            .unwrap();
    let files = m["files"].as_array().unwrap();
    assert!(files.len() >= 29, "manifest lists {} files", files.len());
    for f in files {
        let p = fixtures().join(f.as_str().unwrap());
        assert!(p.is_file(), "missing fixture {}", p.display());
    }
}
