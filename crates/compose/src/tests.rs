//! One test per mapping rule and per refused key: each imports a small Compose file and
//! checks the stack file written, the findings, and that tug accepts the result.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use tug_stackfile::{Diagnostic, Options, SecretSource, Severity};

use crate::{Imported, import};

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tug-compose-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _: &str) -> Option<tug_secrets::Secret> {
        Some(tug_secrets::Secret::new("s3cret-value-from-the-store".into()))
    }
}

/// Imports `compose` (with `files` beside it) and checks the result with tug's compiler.
fn import_with(compose: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> (Imported, Dir) {
    let dir = Dir::new();
    let path = dir.write("compose.yaml", compose);
    for (name, text) in files {
        dir.write(name, text);
    }
    let imported = import(&crate::Options {
        files: vec![path],
        env_files: Vec::new(),
        process_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        project_name: None,
        output_dir: dir.0.clone(),
    })
    .unwrap_or_else(|e| panic!("import failed: {e}"));
    (imported, dir)
}

fn import_ok(compose: &str) -> (String, Vec<Diagnostic>) {
    import_files(compose, &[])
}

/// The stack file and findings, once tug has accepted the stack file.
fn import_files(compose: &str, files: &[(&str, &str)]) -> (String, Vec<Diagnostic>) {
    let (imported, dir) = import_with(compose, files, &[]);
    assert!(!imported.has_errors(), "{:#?}", imported.findings);
    accept(&imported.text, &dir.0);
    (imported.text, imported.findings)
}

fn accept(text: &str, dir: &Path) {
    accept_with(text, dir, &[]);
}

/// Checks the stack file as `tug check` would, with `env` as the process environment.
fn accept_with(text: &str, dir: &Path, env: &[(&str, &str)]) {
    let stack = dir.join("tug.yaml");
    std::fs::write(&stack, text).unwrap();
    let options = Options {
        files: vec![stack.clone()],
        cwd: dir.to_path_buf(),
        environment: None,
        env_files: Vec::new(),
        profiles: Vec::new(),
        process_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        check_commands: false,
    };
    let compiled = tug_stackfile::compile(&options, &NoSecrets);
    let errors: Vec<String> = compiled
        .diagnostics
        .items
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{}: {}", d.path, d.message))
        .collect();
    assert!(errors.is_empty(), "tug refuses the import:\n{text}\n{errors:#?}");
}

fn has(findings: &[Diagnostic], severity: Severity, path: &str, words: &str) -> bool {
    findings.iter().any(|f| f.severity == severity && f.path.starts_with(path) && f.message.contains(words))
}

#[track_caller]
fn contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
}

#[test]
fn image_command_and_entrypoint() {
    let (text, _) = import_ok(
        "services:\n  a:\n    image: busybox:1.36\n    command: sleep 10\n    entrypoint: [/bin/sh, -c]\n  \
         b:\n    image: busybox\n    command: [echo, \"hello world\"]\n",
    );
    contains(&text, "  a:\n    image: busybox:1.36\n    command: sleep 10\n    entrypoint: [/bin/sh, -c]\n");
    contains(&text, "command: [echo, hello world]");
}

#[test]
fn environment_lists_maps_and_bare_names() {
    let (imported, dir) = import_with(
        "services:\n  a:\n    image: x\n    environment:\n      - A=1\n      - B=two words\n      - FROM_SHELL\n      - NOT_SET\n",
        &[],
        &[("FROM_SHELL", "yes")],
    );
    accept_with(&imported.text, &dir.0, &[("FROM_SHELL", "yes")]);
    contains(&imported.text, "      A: \"1\"\n      B: two words\n      FROM_SHELL: ${FROM_SHELL}\n");
    assert!(!imported.text.contains("NOT_SET"));
    assert!(has(&imported.findings, Severity::Note, "services.a.environment.NOT_SET", "leave it out"));
}

#[test]
fn env_files_in_both_forms() {
    let (text, findings) = import_files(
        "services:\n  a:\n    image: x\n    env_file: a.env\n  b:\n    image: x\n    env_file:\n      - a.env\n      \
         - path: ./missing.env\n        required: false\n",
        &[("a.env", "K=v\n")],
    );
    contains(&text, "    env_file: [./a.env]\n");
    assert_eq!(text.matches("env_file: [./a.env]").count(), 2, "{text}");
    assert!(has(&findings, Severity::Note, "services.b.env_file[1]", "optional"));
    let (imported, _dir) = import_with("services:\n  a:\n    image: x\n    env_file: nope.env\n", &[], &[]);
    assert!(has(&imported.findings, Severity::Error, "services.a.env_file", "does not exist"));
}

#[test]
fn ports_become_the_service_address_and_the_container_port() {
    let (text, findings) = import_ok(
        "services:\n  web:\n    image: x\n    ports: [\"8080:80\", \"8443:443\", \"53:53/udp\"]\n    depends_on: [db]\n  \
         db:\n    image: postgres:16\n    ports: [\"127.0.0.1:5433:5432\"]\n  other:\n    image: x\n    expose: [\"8080\"]\n",
    );
    // Nothing depends on `web`: it keeps the host port people use.
    contains(&text, "port: 8080\n    container_port: 80\n");
    // `db` is reached by name at its container port, as on Compose's network.
    contains(&text, "port: 5432\n    container_port: 5432\n    # tcp: what `postgres` speaks\n    protocol: tcp\n");
    assert!(has(&findings, Severity::Note, "services.db.ports[0]", "host port 5433"));
    assert!(has(&findings, Severity::Warning, "services.web.ports[1]", "one address"));
    assert!(has(&findings, Severity::Warning, "services.web.ports[2]", "UDP"));
    assert!(has(&findings, Severity::Note, "services.web.ports[0]", "every interface"));
    // `other` exposes 80 too: a service gets the next free port.
    contains(&text, "port: 8081\n    container_port: 8080\n");
    assert!(has(&findings, Severity::Note, "services.other.expose[0]", "taken"));
}

#[test]
fn long_port_syntax_and_known_images() {
    let (text, _) = import_ok(
        "services:\n  api:\n    image: x\n    ports:\n      - target: 5000\n        published: \"5001\"\n        host_ip: 127.0.0.1\n    \
         depends_on: [cache]\n  cache:\n    image: docker.io/library/redis:7-alpine\n",
    );
    contains(&text, "port: 5001\n    container_port: 5000\n    # http: guessed from the port 5000");
    // Nothing published, yet a dependent reaches it by name: the image's usual port.
    contains(&text, "    # the usual port of the image `redis`, which dependents reach by name\n    port: 6379\n");
}

#[test]
fn volumes_named_bind_anonymous_long_and_tmpfs() {
    let (text, findings) = import_files(
        "services:\n  db:\n    image: x\n    volumes:\n      - data:/var/lib/data\n      - ./conf:/etc/conf:ro\n      \
         - /var/cache\n      - type: tmpfs\n        target: /run\n        tmpfs: { size: 64m }\n      - type: bind\n        \
         source: ./conf\n        target: /etc/other\n        read_only: true\n      - type: npipe\n        source: x\n        target: /y\n\
         volumes:\n  data:\n    external: true\n  unused:\n    driver: nfs\n",
        &[("conf/a", "1")],
    );
    contains(&text, "volumes:\n  data:\n    external: true\n  unused: {}\n  db-var-cache: {}\n");
    contains(
        &text,
        "volumes: [data:/var/lib/data, ./conf:/etc/conf:ro, db-var-cache:/var/cache, ./conf:/etc/other:ro]",
    );
    contains(&text, "tmpfs: [/run:size=64m]");
    assert!(has(&findings, Severity::Note, "services.db.volumes[2]", "anonymous"));
    assert!(has(&findings, Severity::Warning, "services.db.volumes[5]", "npipe"));
    assert!(has(&findings, Severity::Warning, "volumes.unused.driver", "local volumes"));
}

#[test]
fn depends_on_short_and_long() {
    let (text, findings) = import_ok(
        "services:\n  a:\n    image: x\n    depends_on:\n      b: { condition: service_healthy, restart: true }\n      \
         c: { condition: service_started, required: false }\n  b:\n    image: x\n    healthcheck: { test: [\"CMD\", \"true\"] }\n  \
         c:\n    image: x\n    depends_on: [b]\n",
    );
    contains(
        &text,
        "    depends_on:\n      b: healthy\n      c:\n        condition: started\n        required: false\n",
    );
    contains(&text, "  c:\n    image: x\n    depends_on:\n      b: started\n");
    assert!(has(&findings, Severity::Warning, "services.a.depends_on.b.restart", "not carried over"));
}

#[test]
fn healthchecks_in_every_form() {
    let (text, findings) = import_ok(
        "services:\n  a:\n    image: x\n    healthcheck:\n      test: curl -f http://localhost/ || exit 1\n      interval: 1m30s\n      \
         retries: 3\n      start_interval: 1s\n  b:\n    image: x\n    healthcheck:\n      test: [\"CMD-SHELL\", \"pg_isready\"]\n  \
         c:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"check\", \"--fast\"]\n      timeout: 2s\n  d:\n    image: x\n    \
         healthcheck:\n      test: [\"NONE\"]\n  e:\n    image: x\n    healthcheck:\n      disable: true\n",
    );
    contains(
        &text,
        "exec: [sh, -c, curl -f http://localhost/ || exit 1]\n      interval: 1m30s\n      start_interval: 1s\n      retries: 3\n",
    );
    contains(&text, "exec: [sh, -c, pg_isready]");
    contains(&text, "exec: [check, --fast]\n      timeout: 2s\n");
    assert!(!text.contains("  d:\n    image: x\n    healthcheck"), "{text}");
    assert!(has(&findings, Severity::Note, "services.e.healthcheck", "off"));
    let (imported, _dir) =
        import_with("services:\n  a:\n    image: x\n    healthcheck: { test: [\"RUN\", \"x\"] }\n", &[], &[]);
    assert!(has(&imported.findings, Severity::Error, "services.a.healthcheck.test", "CMD"));
}

#[test]
fn restart_policies_and_one_shot_jobs() {
    let (text, findings) = import_ok(
        "services:\n  web:\n    image: x\n    restart: unless-stopped\n    depends_on:\n      migrate: { condition: service_completed_successfully }\n  \
         migrate:\n    image: x\n  seed:\n    image: x\n    restart: \"no\"\n  worker:\n    image: x\n    restart: on-failure:3\n  \
         api:\n    image: x\n    restart: \"no\"\n    ports: [\"8000:8000\"]\n",
    );
    contains(
        &text,
        "  migrate:\n    image: x\n    # a one-shot: another service waits for it to complete successfully\n    kind: job\n",
    );
    contains(
        &text,
        "  seed:\n    image: x\n    # a one-shot: Compose never restarts it (`restart: \"no\"`) and it serves no port\n    kind: job\n",
    );
    contains(&text, "  web:\n    image: x\n    restart: always\n");
    contains(&text, "  worker:\n    image: x\n    restart: on-failure\n");
    contains(&text, "  api:\n    image: x\n    restart: \"no\"\n");
    assert!(has(&findings, Severity::Note, "services.web.restart", "unless-stopped"));
    assert!(has(&findings, Severity::Note, "services.worker.restart", "count"));
}

#[test]
fn deploy_replicas_resources_and_what_is_refused() {
    let (text, findings) = import_ok(
        "services:\n  a:\n    image: x\n    deploy:\n      replicas: 3\n      resources:\n        limits: { cpus: \"1.5\", memory: 512M, pids: 10 }\n        \
         reservations: { memory: 128M }\n      restart_policy: { condition: on-failure, max_attempts: 3 }\n      \
         update_config: { parallelism: 1 }\n      placement: { constraints: [a] }\n      mode: global\n  \
         b:\n    image: x\n    mem_limit: 1g\n    cpus: 0.5\n    scale: 2\n",
    );
    contains(&text, "    replicas: 3\n    resources:\n      cpu: 1.5\n      memory: 512Mi\n    restart: on-failure\n");
    contains(&text, "    resources:\n      memory: 1Gi\n      cpu: 0.5\n    replicas: 2\n");
    for path in ["resources.limits.pids", "resources.reservations", "update_config", "placement", "mode"] {
        assert!(has(&findings, Severity::Warning, &format!("services.a.deploy.{path}"), ""), "{path}");
    }
    assert!(has(&findings, Severity::Warning, "services.a.deploy.resources.limits.pids", "pids"));
    assert!(has(&findings, Severity::Note, "services.a.deploy.restart_policy", "back-off"));
}

#[test]
fn secrets_from_files_and_the_environment() {
    let (imported, dir) = import_with(
        "services:\n  db:\n    image: x\n    secrets:\n      - db-password\n      - source: api_key\n        target: /etc/key\n\
         secrets:\n  db-password:\n    file: ./secrets/db.txt\n  api_key:\n    environment: API_KEY_VALUE\n  swarm:\n    external: true\n",
        &[("secrets/db.txt", "hunter2-from-file")],
        &[("API_KEY_VALUE", "k")],
    );
    accept_with(&imported.text, &dir.0, &[("API_KEY_VALUE", "k")]);
    let text = &imported.text;
    contains(text, "settings:\n  db_password:\n    type: secret\n");
    contains(text, "  api_key:\n    type: secret\n    value: ${API_KEY_VALUE}\n");
    contains(text, "    secrets: [db_password, api_key]\n");
    assert!(!text.contains("hunter2"), "a secret's value must never be written: {text}");
    assert_eq!(imported.secret_files, vec![("db_password".to_string(), dir.0.join("./secrets/db.txt"))]);
    assert!(has(&imported.findings, Severity::Note, "secrets.db-password", "/run/secrets/db_password"));
    assert!(has(&imported.findings, Severity::Warning, "services.db.secrets[1].target", "/run/secrets"));
    assert!(has(&imported.findings, Severity::Warning, "secrets.swarm", "file"));
}

#[test]
fn configs_are_read_only_bind_mounts() {
    let (text, findings) = import_files(
        "services:\n  proxy:\n    image: nginx\n    configs:\n      - site\n      - source: site\n        target: /etc/nginx/nginx.conf\n\
         configs:\n  site:\n    file: ./nginx.conf\n  inline:\n    content: x\n",
        &[("nginx.conf", "events {}\n")],
    );
    contains(&text, "volumes: [./nginx.conf:/site:ro, ./nginx.conf:/etc/nginx/nginx.conf:ro]");
    assert!(has(&findings, Severity::Warning, "configs.inline", "file"));
}

#[test]
fn build_short_long_and_refused_options() {
    let (text, findings) = import_files(
        "services:\n  a:\n    build: ./app\n  b:\n    build:\n      context: ./app\n      dockerfile: Dockerfile.dev\n      \
         target: dev\n      args: [VERSION=1, FROM_ENV]\n      cache_from: [x]\n    image: b:dev\n",
        &[("app/Dockerfile", "FROM scratch\n"), ("app/Dockerfile.dev", "FROM scratch\n")],
    );
    contains(&text, "  a:\n    build: ./app\n");
    contains(
        &text,
        "    build:\n      context: ./app\n      dockerfile: Dockerfile.dev\n      target: dev\n      args:\n        VERSION: \"1\"\n",
    );
    assert!(has(&findings, Severity::Warning, "services.b.build.cache_from", "context, dockerfile"));
}

#[test]
fn logging_options_become_log_rotation() {
    let (text, findings) = import_ok(
        "services:\n  a:\n    image: x\n    logging:\n      driver: json-file\n      options: { max-size: 10m, max-file: \"3\", compress: \"true\" }\n  \
         b:\n    image: x\n    logging: { driver: syslog }\n",
    );
    contains(&text, "    logs:\n      max_size: 10m\n      max_files: 3\n");
    assert!(has(&findings, Severity::Warning, "services.a.logging.options.compress", "compress"));
    assert!(has(&findings, Severity::Warning, "services.b.logging", "syslog"));
}

#[test]
fn profiles_extensions_and_container_fields_carry_over() {
    let (text, findings) = import_ok(
        "x-common: &common\n  image: x\nservices:\n  a:\n    <<: *common\n    profiles: [debug]\n    x-note: ignored\n    user: \"1000:1000\"\n    \
         working_dir: /app\n    read_only: true\n    init: true\n    cap_drop: [ALL]\n    cap_add: [NET_BIND_SERVICE]\n    \
         security_opt: [\"no-new-privileges:true\"]\n    stop_signal: SIGINT\n    stop_grace_period: 1m\n    tmpfs: /tmp\n    pull_policy: never\n",
    );
    for line in [
        "    profiles: [debug]\n",
        "    user: \"1000:1000\"\n",
        "    working_dir: /app\n",
        "    read_only: true\n",
        "    init: true\n",
        "    cap_drop: [ALL]\n",
        "    cap_add: [NET_BIND_SERVICE]\n",
        "    security_opt: [no-new-privileges:true]\n",
        "    stop_signal: SIGINT\n",
        "    stop_grace_period: 1m\n",
        "    tmpfs: [/tmp]\n",
        "    pull: never\n",
    ] {
        contains(&text, line);
    }
    assert!(!text.contains("x-"), "{text}");
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn every_refused_field_is_reported_with_its_reason() {
    for (field, why) in crate::convert::REFUSED {
        let (imported, _dir) =
            import_with(&format!("services:\n  a:\n    image: x\n    {field}: whatever\n"), &[], &[]);
        let path = format!("services.a.{field}");
        assert!(
            imported
                .findings
                .iter()
                .any(|f| f.severity == Severity::Warning && f.path == path && f.message.contains(why)),
            "{field}: {:#?}",
            imported.findings
        );
        assert_eq!(imported.findings[0].span.map(|s| s.line), Some(4), "{field}");
    }
    let (imported, _dir) = import_with("services:\n  a:\n    image: x\n    colour: blue\nweird: 1\n", &[], &[]);
    assert!(has(&imported.findings, Severity::Warning, "services.a.colour", "not a Compose service field"));
    assert!(has(&imported.findings, Severity::Warning, "weird", "top-level"));
}

#[test]
fn networks_and_network_modes() {
    let (text, findings) = import_ok(
        "services:\n  a:\n    image: x\n    network_mode: host\n    ports: [\"9100:9100\"]\n  b:\n    image: x\n    networks: [front]\n\
         networks:\n  front: {}\n",
    );
    contains(&text, "  a:\n    image: x\n    port: 9100\n    # tcp");
    assert!(!text.contains("container_port"), "{text}");
    assert!(has(&findings, Severity::Note, "services.a.ports[0]", "network_mode: host"));
    assert!(has(&findings, Severity::Warning, "services.b.networks", "not carried over"));
    assert!(has(&findings, Severity::Warning, "networks", "not carried over"));
}

#[test]
fn interpolation_keeps_references_tug_resolves_alike() {
    let (imported, dir) = import_with(
        "name: ${PROJECT:-shop}\nservices:\n  a:\n    image: app:${TAG}\n    environment:\n      URL: http://${HOST_NAME:-localhost}:${MISSING}/\n      \
         LITERAL: cost $$5\n    ports: [\"${WEB_PORT:-8080}:80\"]\n",
        &[(".env", "TAG=1.2\n")],
        &[],
    );
    accept(&imported.text, &dir.0);
    let text = &imported.text;
    contains(text, "name: shop\n");
    contains(text, "image: app:${TAG}\n");
    // `${MISSING}` is empty to Compose and an error to tug: the value Compose uses is written.
    contains(text, "URL: http://localhost:/\n");
    contains(text, "LITERAL: cost $$5\n");
    contains(text, "port: 8080\n");
    assert!(has(&imported.findings, Severity::Note, "services.a.environment.URL", "`MISSING` is not set"));
    let (imported, _dir) = import_with("services:\n  a:\n    image: app:${TAG:?set TAG first}\n", &[], &[]);
    assert!(has(&imported.findings, Severity::Error, "services.a.image", "set TAG first"));
}

#[test]
fn names_become_dns_labels_and_references_follow() {
    let (text, findings) =
        import_ok("services:\n  web_app:\n    image: x\n    depends_on: [my_db]\n  my_db:\n    image: postgres\n");
    contains(&text, "  web-app:\n    image: x\n    depends_on:\n      my-db: started\n");
    assert!(has(&findings, Severity::Note, "services.my_db", "`my-db`"));
}

#[test]
fn anchored_findings_are_reported_once() {
    let (imported, _dir) = import_with(
        "x-base: &base\n  image: x\n  container_name: fixed\nservices:\n  a: *base\n  b:\n    <<: *base\n",
        &[],
        &[],
    );
    let refused: Vec<&Diagnostic> = imported.findings.iter().filter(|f| f.path.contains("container_name")).collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0].path, "services.a.container_name and 1 more");
}

#[test]
fn overlays_and_project_names() {
    let dir = Dir::new();
    let base = dir.write("compose.yaml", "services:\n  a:\n    image: x:1\n    environment: [A=1]\n");
    let over =
        dir.write("compose.prod.yaml", "name: prod\nservices:\n  a:\n    image: x:2\n    environment: { B: \"2\" }\n");
    let options = |files: Vec<PathBuf>, name: Option<&str>| crate::Options {
        files,
        env_files: Vec::new(),
        process_env: Default::default(),
        project_name: name.map(str::to_string),
        output_dir: dir.0.clone(),
    };
    let text = import(&options(vec![base.clone(), over.clone()], None)).unwrap().text;
    contains(&text, "name: prod\n");
    contains(&text, "image: x:2\n    environment:\n      A: \"1\"\n      B: \"2\"\n");
    let text = import(&options(vec![base.clone()], Some("My App"))).unwrap().text;
    contains(&text, "name: my-app\n");
    let text = import(&options(vec![base], None)).unwrap().text;
    contains(&text, &format!("name: {}\n", crate::convert::dns_label(&dir.0.file_name().unwrap().to_string_lossy())));
}

#[test]
fn files_that_are_not_compose_are_refused_clearly() {
    let dir = Dir::new();
    let options = |path: PathBuf| crate::Options {
        files: vec![path],
        env_files: Vec::new(),
        process_env: Default::default(),
        project_name: None,
        output_dir: dir.0.clone(),
    };
    let err = import(&options(dir.write("a.yaml", "- a\n- b\n"))).err().unwrap().to_string();
    assert!(err.contains("not a Compose file"), "{err}");
    let err = import(&options(dir.write("b.yaml", "version: '3'\n"))).err().unwrap().to_string();
    assert!(err.contains("no `services:`"), "{err}");
    let err = import(&options(dir.write("c.yaml", "services: {a: [}\n"))).err().unwrap().to_string();
    assert!(err.contains("c.yaml:1:"), "{err}");
    let err = import(&options(dir.0.join("none.yaml"))).err().unwrap().to_string();
    assert!(err.contains("cannot read") && err.contains("none.yaml"), "{err}");
}

#[test]
fn a_secret_from_an_env_file_tug_will_not_read_is_never_written() {
    let dir = Dir::new();
    let path = dir.write(
        "compose/compose.yaml",
        "services:\n  db:\n    image: x\n    environment:\n      DB_PASSWORD: ${DB_PASSWORD}\n      LEVEL: ${LEVEL}\n",
    );
    dir.write("compose/.env", "DB_PASSWORD=hunter2-from-dotenv\nLEVEL=debug\n");
    // Written elsewhere: the .env beside the Compose file is not beside the stack file.
    let imported = import(&crate::Options {
        files: vec![path],
        env_files: Vec::new(),
        process_env: Default::default(),
        project_name: None,
        output_dir: dir.0.join("elsewhere"),
    })
    .unwrap();
    assert!(!imported.text.contains("hunter2"), "{}", imported.text);
    contains(&imported.text, "DB_PASSWORD: ${DB_PASSWORD}\n");
    contains(&imported.text, "LEVEL: debug\n");
    assert!(has(&imported.findings, Severity::Warning, "services.db.environment.DB_PASSWORD", "never its value"));
}
