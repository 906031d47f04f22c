//! `tug secrets`: the encrypted store through the real binary, and that no verb
//! ever shows a secret.

use std::path::Path;

use tug_secrets::Store;

use crate::{Run, TempDir, tug};

const STACK: &str = "\
name: vault
settings:
  SESSION_KEY: { type: secret, generate: { length: 48, charset: base64url } }
  API_TOKEN: { type: secret, min_length: 16, forbid: [CHANGE_ME_PLEASE_1234] }
  DATABASE_URL: { type: url, value: 'postgresql://app:${API_TOKEN}@db/app' }
  LOG_LEVEL: { type: string, default: INFO }
services:
  api:
    command: [sleep, '100']
    secrets: [SESSION_KEY, API_TOKEN]
    environment: { AUTH: 'Bearer ${API_TOKEN}' }
    healthcheck: { http: '/ready?token=${API_TOKEN}' }
";

fn stack() -> TempDir {
    let dir = TempDir::new("secrets");
    dir.write("tug.yaml", STACK);
    dir
}

fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    tug(dir, args, &[], stdin)
}

fn open(dir: &Path) -> Store {
    Store::open(&dir.join(".tug"), None).expect("open store").expect("a store exists")
}

#[test]
fn lifecycle_generate_set_list_rotate_remove() {
    let dir = stack();
    let d = dir.path();
    let before = run(d, &["secrets", "list"], None);
    assert_eq!(before.code, 0, "{}", before.all());
    assert!(before.stdout.contains("SESSION_KEY  to be generated"), "{}", before.stdout);
    assert!(before.stdout.contains("API_TOKEN    missing"), "{}", before.stdout);

    let generated = run(d, &["secrets", "generate"], None);
    // The stack is invalid until API_TOKEN has a value: generate refuses an invalid stack.
    assert_eq!(generated.code, 1, "{}", generated.all());
    assert!(generated.stderr.contains("setting `API_TOKEN` has no value"));

    let short = run(d, &["secrets", "set", "API_TOKEN"], Some("too-short-xyz\n"));
    assert_eq!(short.code, 1);
    assert!(
        short.stderr.contains("shorter than min_length 16") && !short.all().contains("too-short-xyz"),
        "{}",
        short.all()
    );
    let placeholder = run(d, &["secrets", "set", "API_TOKEN"], Some("CHANGE_ME_PLEASE_1234"));
    assert_eq!(placeholder.code, 1);
    assert!(placeholder.stderr.contains("known placeholder") && !placeholder.all().contains("CHANGE_ME_PLEASE_1234"));

    let set = run(d, &["secrets", "set", "API_TOKEN"], Some("tok-0123456789abcdef\n"));
    assert_eq!((set.code, set.stdout.as_str()), (0, "set API_TOKEN (version 1)\n"), "{}", set.stderr);
    assert_eq!(
        open(d).get("API_TOKEN").map(|s| s.expose().to_string()).as_deref(),
        Some("tok-0123456789abcdef"),
        "one trailing newline dropped"
    );

    let generated = run(d, &["secrets", "generate"], None);
    assert_eq!((generated.code, generated.stdout.as_str()), (0, "generated SESSION_KEY (48 base64url characters)\n"));
    let first = open(d).get("SESSION_KEY").expect("generated").clone();
    assert_eq!(first.expose().len(), 48);
    assert!(first.expose().chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert_eq!(run(d, &["secrets", "generate"], None).stdout, "nothing to generate: every secret has a value\n");
    assert_eq!(run(d, &["check"], None).code, 0);

    let list = run(d, &["secrets", "list", "--json"], None);
    let rows: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON");
    assert_eq!(rows[0]["name"], "SESSION_KEY");
    assert_eq!((rows[0]["source"].as_str(), rows[0]["origin"].as_str()), (Some("store"), Some("generated")));
    assert_eq!((rows[1]["source"].as_str(), rows[1]["origin"].as_str()), (Some("store"), Some("set")));
    assert!(rows[1]["created_at"].as_str().unwrap().ends_with('Z'));

    let rotated = run(d, &["secrets", "rotate", "SESSION_KEY"], None);
    assert!(rotated.stdout.starts_with("rotated SESSION_KEY (version 2)"), "{}", rotated.all());
    assert_ne!(open(d).get("SESSION_KEY"), Some(&first), "rotation changes the value");
    let no_rule = run(d, &["secrets", "rotate", "API_TOKEN"], None);
    assert!(no_rule.code == 1 && no_rule.stderr.contains("has no `generate` rule"));
    let unknown = run(d, &["secrets", "set", "SESSION_KY"], Some("x"));
    assert!(unknown.code == 1 && unknown.stderr.contains("did you mean `SESSION_KEY`?"), "{}", unknown.stderr);
    let not_secret = run(d, &["secrets", "set", "LOG_LEVEL"], Some("x"));
    assert!(not_secret.code == 1 && not_secret.stderr.contains("is a setting but not a secret"));

    assert_eq!(run(d, &["secrets", "rm", "SESSION_KEY"], None).stdout, "removed SESSION_KEY\n");
    assert!(open(d).get("SESSION_KEY").is_none());
    assert_eq!(run(d, &["secrets", "rm", "SESSION_KEY"], None).code, 1);
}

#[test]
fn store_and_key_are_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = stack();
    let d = dir.path();
    run(d, &["secrets", "set", "API_TOKEN"], Some("tok-0123456789abcdef"));
    for file in [Store::FILE, Store::KEY_FILE] {
        let mode = std::fs::metadata(d.join(".tug").join(file)).expect(file).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
}

/// Known values, delivered every way a secret can arrive, must appear in no output
/// of any verb and in no file of the state folder.
#[test]
fn no_verb_ever_shows_a_secret() {
    let dir = stack();
    let d = dir.path();
    let stored = "stored-Zq8fK2mWx7Lp4Rv9";
    let from_env = "env-Yt3nB6cHs1Qa8Dk5";
    let from_env_file = "file-Pw2jG7eUr5Mz9Xb4";
    assert_eq!(run(d, &["secrets", "set", "API_TOKEN"], Some(stored)).code, 0);
    assert_eq!(run(d, &["secrets", "generate"], None).code, 0);
    let generated = open(d).get("SESSION_KEY").expect("generated").expose().to_string();
    let secrets = [stored, from_env, from_env_file, generated.as_str()];

    let verbs: &[&[&str]] = &[
        &["check"],
        &["check", "--format", "json"],
        &["config"],
        &["config", "--json"],
        &["secrets", "list"],
        &["secrets", "list", "--json"],
        &["secrets", "generate"],
        &["schema"],
    ];
    let mut outputs = Vec::new();
    for verb in verbs {
        outputs.push(run(d, verb, None).all());
    }
    // A secret from the process environment and one from an env file.
    outputs.push(tug(d, &["config", "--json"], &[("API_TOKEN", from_env)], None).all());
    outputs.push(tug(d, &["check"], &[("API_TOKEN", from_env)], None).all());
    dir.write("prod.env", &format!("API_TOKEN={from_env_file}\n"));
    outputs.push(run(d, &["config", "--env-file", "prod.env"], None).all());
    outputs.push(run(d, &["check", "--format", "json", "--env-file", "prod.env"], None).all());
    // Errors about secrets must not show them either.
    dir.write("short.env", "API_TOKEN=short-Hq7\n");
    outputs.push(run(d, &["check", "--env-file", "short.env"], None).all());
    outputs.push(run(d, &["secrets", "set", "API_TOKEN"], Some("bad-Jk4")).all());

    for output in &outputs {
        for secret in secrets.iter().chain(&["short-Hq7", "bad-Jk4"]) {
            assert!(!output.contains(secret), "a secret was printed:\n{output}");
        }
    }
    // The config output masks secrets and the values derived from them.
    let config = run(d, &["config", "--json"], None).stdout;
    let c: serde_json::Value = serde_json::from_str(&config).expect("JSON");
    assert_eq!(c["settings"]["DATABASE_URL"]["value"], "********");
    assert_eq!(c["services"]["api"]["environment"]["AUTH"], "********");
    assert_eq!(c["services"]["api"]["healthcheck"]["http"], "********");
    assert_eq!(c["services"]["api"]["environment"]["LOG_LEVEL"], "INFO");

    for entry in std::fs::read_dir(d.join(".tug")).expect("state folder") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        for secret in &secrets {
            assert!(!text.contains(secret), "a secret is in plain text in the state folder");
        }
    }
}

#[test]
fn a_wrong_key_is_a_clear_error_and_changes_nothing() {
    let dir = stack();
    let d = dir.path();
    run(d, &["secrets", "set", "API_TOKEN"], Some("tok-0123456789abcdef"));
    let store_file = d.join(".tug").join(Store::FILE);
    let before = std::fs::read(&store_file).expect("store");
    let wrong = [("TUG_SECRETS_KEY", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")];
    let check = tug(d, &["check"], &wrong, None);
    assert_eq!(check.code, 1);
    assert!(check.stdout.contains("the secret store cannot be opened"), "{}", check.stdout);
    let set = tug(d, &["secrets", "set", "API_TOKEN"], &wrong, Some("tok-fedcba9876543210"));
    assert_eq!(set.code, 1);
    assert!(set.stderr.to_lowercase().contains("key"), "{}", set.stderr);
    assert_eq!(std::fs::read(&store_file).expect("store"), before, "the store is untouched");
    let bad = tug(d, &["secrets", "list"], &[("TUG_SECRETS_KEY", "not-a-key")], None);
    assert_eq!(bad.code, 1);
    assert!(!bad.stderr.contains("not-a-key"));
}

#[test]
fn a_damaged_store_is_a_clear_error_and_is_not_overwritten() {
    let dir = stack();
    let d = dir.path();
    run(d, &["secrets", "set", "API_TOKEN"], Some("tok-0123456789abcdef"));
    let store_file = d.join(".tug").join(Store::FILE);
    let mut bytes = std::fs::read(&store_file).expect("store");
    let at = bytes.len() - 20;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&store_file, &bytes).expect("damage");
    let set = run(d, &["secrets", "set", "API_TOKEN"], Some("tok-fedcba9876543210"));
    assert_eq!(set.code, 1);
    assert!(set.stderr.contains("damaged"), "{}", set.stderr);
    assert_eq!(std::fs::read(&store_file).expect("store"), bytes);
    assert_eq!(run(d, &["secrets", "generate"], None).code, 1);
    assert_eq!(std::fs::read(&store_file).expect("store"), bytes);
}

#[test]
fn a_missing_key_is_never_replaced_by_a_new_one() {
    let dir = stack();
    let d = dir.path();
    run(d, &["secrets", "set", "API_TOKEN"], Some("tok-0123456789abcdef"));
    std::fs::remove_file(d.join(".tug").join(Store::KEY_FILE)).expect("remove key");
    let set = run(d, &["secrets", "set", "API_TOKEN"], Some("tok-fedcba9876543210"));
    assert_eq!(set.code, 1);
    assert!(set.stderr.contains("missing"), "{}", set.stderr);
    assert!(!d.join(".tug").join(Store::KEY_FILE).exists());
}

#[test]
fn a_key_from_the_environment_works_without_a_key_file() {
    let dir = stack();
    let d = dir.path();
    let key = [("TUG_SECRETS_KEY", "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0")];
    assert_eq!(tug(d, &["secrets", "set", "API_TOKEN"], &key, Some("tok-0123456789abcdef")).code, 0);
    assert!(!d.join(".tug").join(Store::KEY_FILE).exists(), "no key file when the key comes from the environment");
    assert_eq!(tug(d, &["check"], &key, None).code, 0);
    assert_eq!(tug(d, &["check"], &[], None).code, 1, "without the key the store cannot be read");
}

#[test]
fn set_checks_the_rule_whatever_else_provides_the_value() {
    let dir = TempDir::new("set-rule");
    let d = dir.path();
    dir.write(
        "tug.yaml",
        "name: s\nsettings:\n  TOKEN: { type: secret, min_length: 16 }\n  TOKEN_OLD: { type: secret, min_length: 16, required: false }\nservices:\n  api: { command: [sleep, '1'], secrets: [TOKEN] }\n",
    );
    // An empty TUG_ENV is no environment, as for every other command.
    let short = tug(d, &["secrets", "set", "TOKEN"], &[("TUG_ENV", "")], Some("short"));
    assert_eq!(short.code, 1, "{}", short.all());
    // A valid value in .env does not let an invalid one into the store, and is pointed out.
    dir.write(".env", "TOKEN=valid-token-from-dotenv-123\nTOKEN_OLD=short\n");
    assert_eq!(run(d, &["secrets", "set", "TOKEN"], Some("x")).code, 1);
    let ok = run(d, &["secrets", "set", "TOKEN"], Some("another-valid-token-456"));
    assert_eq!(ok.code, 0, "a problem with TOKEN_OLD is not TOKEN's: {}", ok.all());
    assert!(ok.stderr.contains("also set in .env, which takes precedence"), "{}", ok.stderr);
}

#[test]
fn set_honours_every_definition_of_the_name() {
    let dir = TempDir::new("set-all");
    let d = dir.path();
    dir.write(
        "tug.yaml",
        "name: s\nsettings:\n  FIXED: { type: secret, value: 'computed-${OWN_A:-x}', required: false }\nservices:\n  a: { command: [sleep, '1'], settings: { OWN: { type: secret, min_length: 4, required: false } } }\n  b: { command: [sleep, '1'], settings: { OWN: { type: secret, min_length: 40, required: false } } }\n",
    );
    let short = run(d, &["secrets", "set", "OWN"], Some("abcdef"));
    assert_eq!(short.code, 1, "b's rule applies too: {}", short.all());
    assert!(short.stderr.contains("min_length 40"));
    assert_eq!(run(d, &["secrets", "set", "OWN"], Some(&"z".repeat(40))).code, 0);
    assert_eq!(run(d, &["check"], None).code, 0);
    let fixed = run(d, &["secrets", "set", "FIXED"], Some("whatever-value"));
    assert!(fixed.code == 1 && fixed.stderr.contains("always wins"), "{}", fixed.all());
}
