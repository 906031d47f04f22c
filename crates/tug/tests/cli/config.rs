//! `tug config`: overlays, per-environment rules, env files, profiles, interpolation.

use serde_json::Value;

use crate::{TempDir, data_dir, expect_file, tug};

fn config(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["config", "--json"];
    all.extend(args);
    let run = tug(dir, &all, env, None);
    assert_eq!(run.code, 0, "tug config failed:\n{}", run.all());
    serde_json::from_str(&run.stdout).expect("JSON")
}

#[test]
fn development_takes_its_own_rules_and_the_env_file() {
    let dir = data_dir().join("check/overlay");
    let c = config(&dir, &[], &[]);
    assert_eq!(c["environment"], "development");
    assert_eq!(c["settings"]["LOG_LEVEL"]["value"], "DEBUG", "per-environment default");
    assert_eq!(c["settings"]["REDIS_URL"]["value"], "rediss://cache.internal:6380/0");
    assert!(c["settings"]["REDIS_URL"]["source"]["env_file"].as_str().unwrap().ends_with(".env"));
    assert_eq!(
        c["settings"]["GREETING"]["value"], "hello from $HOME",
        "`:-` takes the .env value; `$$` is a literal `$`"
    );
    assert_eq!(c["services"]["api"]["replicas"], 2);
    assert_eq!(c["services"]["api"]["environment"]["DEBUG_TOOLBAR"], "1");
    assert!(c["services"]["extra"].is_object());
}

#[test]
fn the_production_overlay_merges_and_resets() {
    let dir = data_dir().join("check/overlay");
    let c = config(&dir, &["--env", "production"], &[]);
    assert_eq!(c["settings"]["LOG_LEVEL"]["value"], "WARNING");
    let api = &c["services"]["api"];
    assert_eq!(api["replicas"], 6, "scalars replace");
    assert_eq!(api["port"], 18001, "maps merge key by key");
    assert_eq!(api["environment"]["MODE"], "production");
    assert!(api["environment"].get("DEBUG_TOOLBAR").is_none(), "!reset removes a key");
    assert!(c["services"].get("extra").is_none(), "!reset removes a whole service");
    // TUG_ENV selects the environment as --env does.
    let by_env = config(&dir, &[], &[("TUG_ENV", "production")]);
    assert_eq!(by_env["environment"], "production");
}

#[test]
fn per_environment_rules_are_enforced() {
    let dir = data_dir().join("check/overlay");
    // The process environment wins over .env, and production accepts only rediss://.
    let run = tug(&dir, &["check", "--env", "production"], &[("REDIS_URL", "redis://127.0.0.1:6379/0")], None);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("the URL's scheme `redis` is not allowed here"), "{}", run.stdout);
    assert!(run.stdout.contains("from the environment variable `REDIS_URL`"));
    let dev = tug(&dir, &["check"], &[("REDIS_URL", "redis://127.0.0.1:6379/0")], None);
    assert_eq!(dev.code, 0, "{}", dev.stdout);
}

#[test]
fn later_files_merge_over_earlier_ones_and_override_replaces() {
    let dir = data_dir().join("check/overlay");
    let c = config(&dir, &["-f", "tug.yaml", "-f", "more.yaml"], &[]);
    let probe = &c["services"]["api"]["healthcheck"];
    assert_eq!(probe["tcp"], true);
    assert_eq!(probe["interval"], "5s");
}

#[test]
fn the_resolved_stack_as_yaml() {
    let dir = data_dir().join("check/overlay");
    let run = tug(&dir, &["config", "--env", "production"], &[], None);
    assert_eq!(run.code, 0, "{}", run.all());
    let shown = run.stdout.replace(dir.to_str().unwrap(), "$DATA");
    expect_file(&data_dir().join("config_production.expected"), &shown);
}

#[test]
fn profiles_enable_services() {
    let dir = TempDir::new("profiles");
    dir.write(
        "tug.yaml",
        "name: p\nservices:\n  api: { command: [sleep, '1'] }\n  metrics: { command: [sleep, '1'], profiles: [monitoring] }\n  debug: { command: [sleep, '1'], profiles: [debug], depends_on: [metrics] }\n",
    );
    let plain = config(dir.path(), &[], &[]);
    assert!(plain["services"].get("metrics").is_none());
    assert_eq!(plain["inactive"], serde_json::json!(["metrics", "debug"]));
    let monitoring = config(dir.path(), &["--profile", "monitoring"], &[]);
    assert!(monitoring["services"].get("metrics").is_some());
    let both = config(dir.path(), &[], &[("TUG_PROFILES", "monitoring,debug")]);
    assert!(both["services"].get("debug").is_some());
    // A service of an active profile that needs one of an inactive profile is an error.
    let run = tug(dir.path(), &["check", "--profile", "debug"], &[], None);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("whose profiles (monitoring) are not active"), "{}", run.stdout);
}

#[test]
fn instance_variables_stay_for_each_instance() {
    let dir = TempDir::new("instance-vars");
    dir.write(
        "tug.yaml",
        "name: i\nsettings:\n  ROOT: { type: path, default: /srv }\nservices:\n  api:\n    command: [serve, --port, '${PORT}', --root, '$ROOT', --cost, '$$5']\n    environment: { URL: 'http://$HOST:${PORT}/' }\n",
    );
    let c = config(dir.path(), &[], &[]);
    assert_eq!(
        c["services"]["api"]["command"],
        serde_json::json!(["serve", "--port", "${PORT}", "--root", "/srv", "--cost", "$5"])
    );
    assert_eq!(c["services"]["api"]["environment"]["URL"], "http://${HOST}:${PORT}/");
}

#[test]
fn services_that_run_images_show_what_runs_and_mask_secrets() {
    let dir = TempDir::new("images");
    std::fs::create_dir_all(dir.path().join("api")).expect("mkdir");
    dir.write("api/Dockerfile", "FROM scratch\n");
    dir.write(
        "tug.yaml",
        "name: shop\nvolumes:\n  pgdata: {}\nsettings:\n  NPM_TOKEN: { type: secret }\nservices:\n  db:\n    image: postgres:15\n    command: postgres -c 'max_connections=50' -p ${PORT}\n    port: 5432\n    volumes: [pgdata:/var/lib/postgresql/data, './init:/docker-entrypoint-initdb.d:ro']\n  api:\n    build: { context: ./api, args: { NPM_TOKEN: '${NPM_TOKEN}' } }\n    secrets: [NPM_TOKEN]\n    entrypoint: [tini, --]\n  worker:\n    command: [sleep, '1']\n    source: ./api\n    working_dir: ./api\n",
    );
    let c = config(dir.path(), &[], &[("NPM_TOKEN", "npm-token-Zq81")]);
    let db = &c["services"]["db"];
    assert_eq!(db["command"], serde_json::json!(["postgres", "-c", "max_connections=50", "-p", "${PORT}"]));
    assert_eq!(db["container"]["image"], "postgres:15");
    assert_eq!(db["container"]["pull"], "missing");
    assert_eq!(
        db["container"]["volumes"][0],
        serde_json::json!({ "type": "volume", "name": "pgdata", "target": "/var/lib/postgresql/data", "read_only": false })
    );
    assert_eq!(db["container"]["volumes"][1]["type"], "bind");
    assert!(db["container"]["volumes"][1]["source"].as_str().unwrap().ends_with("/init"));
    let api = &c["services"]["api"]["container"];
    assert_eq!(api["image"], "shop-api", "a built image is named after the project and service");
    assert_eq!(api["build"]["args"]["NPM_TOKEN"], "********");
    assert_eq!(api["entrypoint"], serde_json::json!(["tini", "--"]));
    assert!(c["services"]["worker"]["source"].as_str().unwrap().ends_with("/api"));
    assert_eq!(c["volumes"]["pgdata"]["external"], false);
    assert!(!serde_json::to_string(&c).unwrap().contains("npm-token-Zq81"));
}

#[test]
fn config_of_an_invalid_stack_fails_with_the_diagnostics() {
    let dir = data_dir().join("check");
    let run = tug(&dir, &["config", "-f", "ten_errors.yaml"], &[], None);
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("error[unknown-field]") && run.stderr.contains("the stack is invalid"));
}

#[test]
fn values_derived_from_secrets_reach_only_the_services_that_list_them() {
    let dir = TempDir::new("derived");
    dir.write(
        "tug.yaml",
        "name: d\nsettings:\n  PASSWORD: { type: secret }\n  DATABASE_URL: { type: url, value: 'postgresql://app:${PASSWORD}@db/app' }\nservices:\n  api: { command: [sleep, '1'], secrets: [DATABASE_URL], env_file: app.env }\n  frontend: { command: [sleep, '1'] }\n",
    );
    dir.write("app.env", "EXTRA=from-env-file-Qm3\n");
    let c = config(dir.path(), &[], &[("PASSWORD", "pw-Lx9")]);
    assert_eq!(c["services"]["api"]["environment"]["DATABASE_URL"], "********");
    assert!(
        c["services"]["api"]["environment"].get("PASSWORD").is_none(),
        "listing a derived value does not deliver its source"
    );
    assert!(c["services"]["frontend"]["environment"].get("DATABASE_URL").is_none());
    // An env file's ordinary value is shown; one that looks secret is not.
    assert_eq!(c["services"]["api"]["environment"]["EXTRA"], "from-env-file-Qm3");
}

#[test]
fn empty_documents_change_nothing_and_a_second_document_is_an_error() {
    let dir = TempDir::new("documents");
    dir.write("tug.yaml", "name: docs\nservices:\n  api: { command: [sleep, '1'] }\n");
    dir.write("tug.development.yaml", "---\n# nothing yet\n");
    dir.write("empty.yaml", "");
    let c = config(dir.path(), &["-f", "tug.yaml", "-f", "empty.yaml"], &[]);
    assert!(c["services"]["api"].is_object(), "an empty overlay or file does not wipe the stack");
    assert_eq!(c["name"], "docs");
    dir.write("two.yaml", "name: docs\n---\nservices: {}\n");
    let run = tug(dir.path(), &["check", "-f", "two.yaml"], &[], None);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("error[yaml-documents]") && run.stdout.contains("two.yaml:2:1"), "{}", run.stdout);
}

#[test]
fn an_overlay_that_cannot_be_read_is_an_error() {
    let dir = TempDir::new("bad-overlay");
    dir.write("tug.yaml", "name: o\nservices:\n  api: { command: [sleep, '1'] }\n");
    std::fs::write(dir.path().join("tug.development.yaml"), b"# caf\xe9\nservices: {}\n").expect("write");
    let run = tug(dir.path(), &["check"], &[], None);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("cannot read the overlay") && run.stdout.contains("tug.development.yaml"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_byte_order_mark_is_not_content() {
    let dir = TempDir::new("bom");
    dir.write("tug.yaml", "\u{feff}name: bom\nservices:\n  api: { command: [sleep, '1'] }\n");
    assert_eq!(config(dir.path(), &[], &[])["name"], "bom");
}

#[test]
fn services_of_exclusive_profiles_may_share_a_port() {
    let dir = TempDir::new("exclusive");
    dir.write(
        "tug.yaml",
        "name: x\nservices:\n  mail-fake: { command: [sleep, '1'], port: 1025, profiles: [dev] }\n  mail-real: { command: [sleep, '1'], port: 1025, profiles: [prod] }\n",
    );
    assert_eq!(tug(dir.path(), &["check", "--profile", "dev"], &[], None).code, 0);
    let both = tug(dir.path(), &["check", "--profile", "dev,prod"], &[], None);
    assert!(both.code == 1 && both.stdout.contains("port 1025 is already used by `mail-fake`"), "{}", both.stdout);
}

#[test]
fn long_chains_are_errors_not_crashes() {
    let dir = TempDir::new("chains");
    // Settings referring to settings, 2,000 deep.
    let mut text = String::from("name: c\nsettings:\n");
    for i in 0..2000 {
        text.push_str(&format!("  S{i}: {{ value: 'x${{S{}}}' }}\n", i + 1));
    }
    text.push_str("  S2000: { default: end }\nservices:\n  api: { command: [sleep, '1'] }\n");
    dir.write("settings.yaml", &text);
    let run = tug(dir.path(), &["check", "-f", "settings.yaml"], &[], None);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.contains("more than 64 deep"), "{}", run.stdout);
    // Defaults nested 10,000 deep.
    let nested = format!("{}x{}", "${NOPE:-".repeat(10_000), "}".repeat(10_000));
    dir.write("nested.yaml", &format!("name: n\nservices:\n  api: {{ command: [echo, '{nested}'] }}\n"));
    let run = tug(dir.path(), &["check", "-f", "nested.yaml"], &[], None);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.contains("nest more than 32 deep"));
}

#[test]
fn values_that_double_at_each_step_are_refused() {
    let dir = TempDir::new("doubling");
    let mut text = format!("name: bomb\nsettings:\n  S0: {{ default: '{}' }}\n", "x".repeat(1000));
    for i in 1..=24 {
        text.push_str(&format!("  S{i}: {{ default: '${{S{p}}}${{S{p}}}' }}\n", p = i - 1));
    }
    dir.write("tug.yaml", &text);
    let run = tug(dir.path(), &["check"], &[], None);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stdout.contains("grows beyond 1 MiB"), "{}", run.stdout);
}

#[test]
fn secrets_cannot_be_reached_around_their_listing() {
    let dir = TempDir::new("around");
    dir.write(
        "tug.yaml",
        "name: a\nsettings:\n  API_KEY: { type: secret }\n  X: { type: string }\nservices:\n  web: { command: [sleep, '1'], settings: { API_KEY: { type: string } } }\n  a: { command: [sleep, '1'], settings: { A_KEY: { type: secret }, X: { type: secret } } }\n  b: { command: 'echo ${A_KEY}' }\n",
    );
    dir.write(".env", "API_KEY=apikey2222\nA_KEY=akey3333\nX=xsecret4444\n");
    let run = tug(dir.path(), &["check"], &[], None);
    assert!(!run.all().contains("apikey2222") && !run.all().contains("akey3333"));
    assert!(run.stdout.contains("error[redefined-secret]: `API_KEY` is a shared secret"), "{}", run.stdout);
    assert!(run.stdout.contains("error[secret-not-listed]: `A_KEY`"), "another service's own secret: {}", run.stdout);
    // A name declared secret anywhere is never shown, even where it is a plain setting.
    dir.write(
        "tug.yaml",
        "name: a\nsettings:\n  X: { type: string }\nservices:\n  a: { command: [sleep, '1'], settings: { X: { type: secret } } }\n",
    );
    let config = tug(dir.path(), &["config"], &[], None);
    assert_eq!(config.code, 0, "{}", config.all());
    assert!(!config.stdout.contains("xsecret4444"), "{}", config.stdout);
}

#[test]
fn whether_a_value_is_secret_does_not_depend_on_the_secret_being_set() {
    let dir = TempDir::new("static-sensitivity");
    dir.write(
        "tug.yaml",
        "name: r\nsettings:\n  REDIS_PASSWORD: { type: secret, required: false }\n  REDIS_URL: { type: url, value: 'redis://:${REDIS_PASSWORD:-}@cache:6379/0' }\nservices:\n  api: { command: [sleep, '1'], secrets: [REDIS_URL] }\n  web: { command: 'echo $REDIS_URL' }\n",
    );
    for env in [&[][..], &[("REDIS_PASSWORD", "pw123")][..]] {
        let run = tug(dir.path(), &["check"], env, None);
        assert_eq!(run.code, 1, "{}", run.stdout);
        assert!(!run.stdout.contains("not-a-secret"), "listing REDIS_URL is right either way: {}", run.stdout);
        assert!(run.stdout.contains("error[secret-not-listed]: `REDIS_URL`"), "{}", run.stdout);
    }
}

#[test]
fn small_input_mistakes_get_precise_messages() {
    let dir = TempDir::new("small");
    dir.write("tug.yaml", "name: s\nsettings:\n  T: { type: secret }\n  E: { type: enum, values: ['${T}'] }\nservices:\n  api: { command: [sleep, '1'] }\n");
    std::fs::write(dir.path().join(".env"), "\u{feff}T=tok\n").expect("write");
    let run = tug(dir.path(), &["check"], &[], None);
    assert!(!run.stdout.contains("needs `values`"), "one error for one mistake: {}", run.stdout);
    assert!(!run.stdout.contains("not a valid variable name"), "a BOM in .env is not part of the name: {}", run.stdout);
    std::fs::write(dir.path().join("latin1.yaml"), b"name: caf\xe9\n").expect("write");
    let bad = tug(dir.path(), &["check", "-f", "latin1.yaml"], &[], None);
    assert!(bad.stdout.contains("the file must be UTF-8 text"), "{}", bad.stdout);
}
