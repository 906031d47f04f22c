//! `tug schema`: a JSON Schema that every example validates against, checked by an
//! independent validator (Python's `jsonschema`, as editors' tooling would).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{TempDir, data_dir, repo_dir, tug};

const VALIDATOR: &str = r#"
import json, sys
try:
    import jsonschema, yaml
except ImportError as e:
    sys.exit(f"missing Python module ({e}): install python3-jsonschema and python3-yaml (scripts/test does)")

class Loader(yaml.SafeLoader):
    pass
# Overlay directives keep the value's shape; PyYAML must merely accept the tags.
for tag in ("!reset", "!override"):
    Loader.add_constructor(tag, lambda loader, node: None if isinstance(node, yaml.ScalarNode) and node.value == "" else
        loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else
        loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_scalar(node))
# YAML 1.1 booleans (yes/no/on/off) would turn into bools; tug reads YAML 1.2 core.
for ch in "yYnNoO":
    Loader.yaml_implicit_resolvers.pop(ch, None)

schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
failed = 0
for path in sys.argv[2:]:
    doc = yaml.load(open(path), Loader=Loader) or {}
    errors = list(validator.iter_errors(doc))
    for e in errors:
        print(f"{path}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
    print(f"{path}: {'invalid' if errors else 'valid'}")
"#;

fn validate(files: &[PathBuf]) -> String {
    let dir = TempDir::new("schema");
    let schema = tug(dir.path(), &["schema"], &[], None);
    assert_eq!(schema.code, 0);
    let schema_file = dir.write("schema.json", &schema.stdout);
    let script = dir.write("validate.py", VALIDATOR);
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&schema_file)
        .args(files)
        .output()
        .expect("run /usr/bin/python3 (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "validator failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn stack_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() && !name.starts_with('.') {
            stack_files(&path, out);
        } else if name.starts_with("tug") && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push(path);
        }
    }
}

#[test]
fn every_example_validates_against_the_schema() {
    let mut files = Vec::new();
    stack_files(&repo_dir().join("examples"), &mut files);
    stack_files(&data_dir().join("check/overlay"), &mut files);
    files.push(data_dir().join("check/valid.yaml"));
    files.push(data_dir().join("check/containers_valid.yaml"));
    assert!(files.len() >= 4, "examples found: {files:?}");
    let report = validate(&files);
    assert!(!report.contains(": invalid"), "{report}");
    assert_eq!(report.matches(": valid").count(), files.len());
}

#[test]
fn the_schema_rejects_what_check_rejects() {
    let files: Vec<PathBuf> = ["unknown_fields", "wrong_types", "bad_units", "containers"]
        .iter()
        .map(|case| data_dir().join(format!("check/{case}.yaml")))
        .collect();
    let report = validate(&files);
    assert_eq!(report.matches(": invalid").count(), files.len(), "{report}");
}
