//! `tug check`: every kind of problem, as a user sees it (snapshots under tests/data/check).

use crate::{TempDir, data_dir, expect_file, tug};

/// Runs `tug check` on `tests/data/check/CASE.yaml` (with `CASE.env` as an env file
/// when present) and compares what it prints and its exit code with `CASE.expected`.
fn check(case: &str) -> String {
    let dir = data_dir().join("check");
    let state = TempDir::new("check-state");
    let file = format!("{case}.yaml");
    let env_file = format!("{case}.env");
    let mut args = vec!["check", "-f", file.as_str()];
    if dir.join(&env_file).exists() {
        args.extend(["--env-file", env_file.as_str()]);
    }
    let run = tug(&dir, &args, &[("TUG_STATE_DIR", state.path().to_str().unwrap())], None);
    assert_eq!(run.stderr, "", "check prints its verdict on stdout");
    let actual = format!("{}exit: {}\n", run.stdout, run.code);
    expect_file(&dir.join(format!("{case}.expected")), &actual);
    actual
}

#[test]
fn yaml_syntax() {
    assert!(check("yaml_syntax").contains("exit: 1"));
}

#[test]
fn duplicate_key() {
    check("duplicate_key");
}

#[test]
fn unknown_fields_suggest_the_right_name() {
    let out = check("unknown_fields");
    assert!(out.contains("did you mean `command`?"));
    assert!(out.contains("did you mean `healthcheck`?"));
    assert!(out.contains("did you mean `strategy`?"));
}

#[test]
fn wrong_types() {
    check("wrong_types");
}

#[test]
fn setting_constraints() {
    let out = check("setting_constraints");
    assert_eq!(out.matches("error[constraint]").count(), 12, "one error per broken rule:\n{out}");
}

#[test]
fn constraint_misuse() {
    check("constraint_misuse");
}

#[test]
fn bad_durations_percentages_sizes_signals_and_regexes() {
    check("bad_units");
}

#[test]
fn dependencies_and_conditions() {
    let out = check("dependencies");
    assert!(out.contains("error[unknown-dependency]"));
    assert!(out.contains("error[condition-without-healthcheck]"));
    assert!(out.contains("error[condition-not-a-job]"));
}

#[test]
fn dependency_cycles_name_every_service() {
    let out = check("cycle");
    assert!(out.contains("dependency cycle: a → b → c → a"), "{out}");
    assert!(out.contains("dependency cycle: d → d"), "{out}");
    assert_eq!(out.matches("error[dependency-cycle]").count(), 2);
}

#[test]
fn secrets_and_ports() {
    check("secrets_and_ports");
}

#[test]
fn interpolation() {
    check("interpolation");
}

#[test]
fn forbidden_placeholders() {
    check("forbidden_placeholder");
}

#[test]
fn a_secret_breaking_its_rule_is_reported_without_its_value() {
    let out = check("secret_rule");
    for secret in ["hunter2-is-short!", "tok-3f9a8b7c6d5e", "hunter2"] {
        assert!(!out.contains(secret), "the secret `{secret}` was printed:\n{out}");
    }
    assert!(out.contains("min_length 32"));
}

#[test]
fn missing_secrets_with_generate_are_notes() {
    let out = check("secret_generated");
    assert!(out.contains("note[secret-generated]: secret `SESSION_KEY` has no value yet"));
    assert!(out.contains("error[missing-value]: setting `API_TOKEN` has no value"));
}

#[test]
fn commands_not_found_are_warnings() {
    let out = check("commands");
    assert!(out.contains("exit: 0"), "warnings do not fail the check");
    assert_eq!(out.matches("warning[command-not-found]").count(), 3, "{out}");
}

#[test]
fn service_rules() {
    check("service_rules");
}

#[test]
fn ten_planted_errors_are_all_reported_with_positions() {
    let out = check("ten_errors");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error[")).collect();
    assert!(errors.len() >= 10, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let positioned = lines
        .windows(2)
        .filter(|w| w[0].starts_with("error[") && w[1].trim_start().starts_with("--> ten_errors.yaml:"))
        .count();
    assert_eq!(positioned, errors.len(), "every error has file, line and column:\n{out}");
    assert!(out.contains("exit: 1"));
}

#[test]
fn a_valid_stack_exits_zero() {
    assert!(check("valid").ends_with("exit: 0\n"));
}

#[test]
fn services_that_run_images() {
    let out = check("containers_valid");
    assert!(out.ends_with("exit: 0\n"), "{out}");
    assert!(out.contains("note[image]: `api` runs the image `shop-api`, built from `./containers/api`"), "{out}");
    assert!(out.contains("note[bind-created]: `./containers/config` does not exist yet"), "{out}");
}

#[test]
fn image_mistakes_are_all_reported() {
    let out = check("containers");
    for code in [
        "error[shell-syntax]",
        "error[unknown-volume]",
        "error[anonymous-volume]",
        "error[missing-path]",
        "error[duplicate-mount]",
        "error[container-only]",
        "error[unbalanced-quote]",
        "warning[unused-volume]",
        "warning[source-workdir]",
        "warning[unknown-capability]",
    ] {
        assert!(out.contains(code), "{code} is missing:\n{out}");
    }
    assert!(out.contains("tug talks to the engine over a Unix socket"), "{out}");
    assert!(out.contains("did you mean `pgdata`?"), "{out}");
}

#[test]
fn a_secret_on_a_command_line_is_an_error() {
    let out = check("secret_in_command");
    assert!(!out.contains("hunter2-db-secret-value"), "the secret was printed:\n{out}");
    // The shell command, the argv, the probe and the image's command; not `$$DB_PASSWORD`.
    assert_eq!(out.matches("error[secret-in-command]").count(), 4, "{out}");
    assert!(out.contains("`command` interpolates the secret `DATABASE_URL`"), "{out}");
}

#[test]
fn json_format_has_every_diagnostic_with_its_position() {
    let dir = data_dir().join("check");
    let run = tug(&dir, &["check", "-f", "ten_errors.yaml", "--format", "json"], &[], None);
    assert_eq!(run.code, 1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(report["valid"], false);
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics");
    let errors: Vec<_> = diagnostics.iter().filter(|d| d["severity"] == "error").collect();
    assert_eq!(report["errors"].as_u64(), Some(errors.len() as u64));
    for d in errors {
        assert_eq!(d["file"], "ten_errors.yaml");
        assert!(d["line"].as_u64().is_some() && d["column"].as_u64().is_some(), "{d}");
    }
}

#[test]
fn usage_errors_exit_two() {
    let dir = data_dir().join("check");
    assert_eq!(tug(&dir, &["check", "--format", "xml"], &[], None).code, 2);
    assert_eq!(tug(&dir, &["chekc"], &[], None).code, 2);
}

#[test]
fn a_missing_stack_file_is_a_clear_error() {
    let dir = TempDir::new("no-stack");
    let run = tug(dir.path(), &["check"], &[], None);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no tug.yaml in ") && run.stderr.contains("or any folder above it"), "{}", run.all());
    // Named with -f, a missing file is the compiler's error, with its path.
    let run = tug(dir.path(), &["check", "-f", "nope.yaml"], &[], None);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("cannot read the stack file") && run.stdout.contains("nope.yaml"), "{}", run.stdout);
}

#[test]
fn an_unknown_environment_is_an_error() {
    let dir = data_dir().join("check/overlay");
    let run = tug(&dir, &["check", "--env", "prodution"], &[], None);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("environment `prodution` is not one of")
            && run.stdout.contains("did you mean `production`?")
    );
}

#[test]
fn secrets_stay_with_the_services_that_list_them() {
    let out = check("secret_scope");
    for secret in ["tok-Rz81VqLm4sXc", "4711"] {
        assert!(!out.contains(secret), "the secret `{secret}` was printed:\n{out}");
    }
    // Through interpolation (with or without a default), pass-through, a derived value,
    // and a service's own setting.
    assert_eq!(out.matches("error[secret-not-listed]").count(), 5, "{out}");
    // Typed and configuring fields refuse secrets instead of showing them.
    assert_eq!(out.matches("error[sensitive-value]").count(), 4, "{out}");
}

#[test]
fn strategies_that_cannot_work_say_what_happens_instead() {
    let out = check("deploy_strategies");
    assert!(out.contains("rolled out as `rolling`"), "{out}");
    assert!(out.contains("it will be recreated"), "{out}");
    assert!(out.contains("exit: 0"), "warnings only: {out}");
}

#[test]
fn compose_habits_get_tugs_spelling() {
    let out = check("compose_habits");
    assert!(out.contains("write `port: 8000`") && out.contains("`container_port: 5000`"), "{out}");
    assert!(out.contains("`exec: [curl, -f, http://localhost:5000/health]`"), "{out}");
    assert!(out.contains(r#"`exec: "pg_isready -U app"`"#), "{out}");
    assert!(out.contains("`replicas: 3` is a field of the service itself"), "{out}");
    assert!(out.contains("logs: { max_size: 10m, max_files: 3 }"), "{out}");
}

#[test]
fn check_says_which_strategy_each_service_gets() {
    let out = check("default_strategies");
    assert!(out.contains("`postgres` is deployed with `recreate`") && out.contains("the volume `pgdata`"), "{out}");
    assert!(out.contains("`cache` is deployed with `recreate`") && out.contains("`tcp` service"), "{out}");
    assert!(out.contains("deployed with `rolling`, the default strategy: web"), "{out}");
}
