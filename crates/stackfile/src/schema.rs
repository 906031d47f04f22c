//! The JSON Schema of the stack file as users write it (before interpolation), for
//! editors and `tug schema`.
//!
//! It follows the decoder: any file the decoder accepts, the schema accepts (overlays
//! included, so nothing is required but a probe's check). Every scalar may interpolate
//! (`${PORT}`), so typed fields also take a string with a reference, checked later.
//! The tests check that each mapping lists exactly the fields the decoder reads.

use serde_json::{Value, json};
use tug_secrets::Charset;

use crate::container::{MOUNT_MODES, MOUNT_TYPES, PULLS, SECURITY_OPTIONS, image_pattern};
use crate::model::SettingType;
use crate::service::{BALANCES, CONDITIONS, KINDS, PROBE_CHECKS, PROTOCOLS, RESTARTS, SMOKE_CHECKS, STRATEGIES};
use crate::units::SIGNALS;

/// A string that refers to a variable or setting (`$VAR`, `${VAR}`, `${VAR:-default}`, ...):
/// its value is only known after interpolation.
const INTERPOLATION: &str = r"\$(?:\{|[A-Za-z_])";
/// What YAML may read a plain scalar as; the decoder reads every one as text.
const SCALAR: [&str; 3] = ["string", "number", "boolean"];
/// An unsigned decimal number, as the unit parsers read it.
const NUMBER: &str = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)";
const DNS_LABEL: &str = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
const ENV_NAME: &str = "[A-Za-z_][A-Za-z0-9_]*";
/// Environment and profile names.
const PROFILE_NAME: &str = "[a-zA-Z0-9][a-zA-Z0-9_.-]*";
const HEADER_NAME: &str = "[A-Za-z0-9!#$%&'*+.^_`|~-]+";
const SIZE_UNITS: &str = "b|B|k|K|KB|kB|Ki|KiB|M|MB|Mi|MiB|G|GB|Gi|GiB|T|TB|Ti|TiB|kb|kib|m|mb|mib|g|gb|gib";
const TRUE_WORDS: [&str; 4] = ["true", "yes", "on", "1"];
const FALSE_WORDS: [&str; 4] = ["false", "no", "off", "0"];

/// The JSON Schema (draft 2020-12) of `tug.yaml` and its overlays.
pub fn schema() -> Value {
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tug.dev/schema/stackfile.json",
        "title": "tug stack file",
        "description": "A tug stack (tug.yaml, or an environment overlay such as tug.production.yaml): its typed settings, \
            its services and jobs, how they depend on each other, how they are checked, routed, scaled and rolled out. \
            Every string value may interpolate $VAR, ${VAR}, ${VAR:-default} or a setting's name; keys starting with x- are ignored.",
        "type": "object",
        "properties": {
            "name": field(
                "The project's name: lowercase letters, digits and `-`, at most 63 characters. Defaults to the folder's name.",
                name_matching(DNS_LABEL),
            ),
            "environments": field_or(
                "The stack's environments; the first is the default. `--env NAME` (or TUG_ENV) picks one, \
                    and merges tug.NAME.yaml over the stack file.",
                json!(["development"]),
                list(name_matching(PROFILE_NAME)),
            ),
            "settings": field(
                "The shared configuration contract: typed settings, delivered to every service as environment variables \
                    of the same name (secrets only to the services that list them under `secrets`).",
                def("settings"),
            ),
            "services": field(
                "The stack's services and jobs, by name (lowercase letters, digits and `-`).",
                map(DNS_LABEL, nullable(def("service"))),
            ),
            "registry": field_or(
                "Where instances are registered: `embedded` (one machine), or a Redis URL `redis://host:6379/0` / `rediss://...`.",
                json!("embedded"),
                matching(r"embedded|rediss?://[^\s/?#]+\S*"),
            ),
        },
        "patternProperties": { "^x-": {} },
        "additionalProperties": false,
        "$defs": {
            "settings": {
                "description": "Settings by name (an environment variable name). A plain value is shorthand for a string setting with that default.",
                "type": "object",
                "propertyNames": { "pattern": anchored(ENV_NAME) },
                "additionalProperties": {
                    "anyOf": [{ "type": "null" }, { "type": SCALAR }, def("setting")],
                },
            },
            "setting": setting(),
            "generate": object(
                "Generate a missing secret once, from the operating system's CSPRNG, and keep it in the encrypted secret store.",
                json!({
                    "length": field_or("How many characters.", json!(32), count(8, 4096)),
                    "charset": field_or("The characters to use.", json!("alnum"), enumerated(&Charset::NAMES)),
                }),
            ),
            "service": service(),
            "command": {
                "description": "A list of arguments (run directly), or a string run by `sh -c` (with an image: split into words, \
                    not run by a shell).",
                "anyOf": [
                    { "type": SCALAR, "pattern": r"\S" },
                    { "type": "array", "minItems": 1, "items": { "type": SCALAR } },
                ],
            },
            "environment": {
                "description": "Variables as a mapping, or as a list of `KEY=VALUE`. A variable with no value is passed through from tug's environment.",
                "anyOf": [
                    map(ENV_NAME, nullable(json!({ "type": SCALAR }))),
                    { "type": "array", "items": { "type": "string", "pattern": format!("^{ENV_NAME}(?:=|$)") } },
                ],
            },
            "depends_on": {
                "description": "A list of services (each `started`), or a mapping of service name to a condition or to `{condition, required}`.",
                "anyOf": [
                    list(matching(DNS_LABEL)),
                    map(DNS_LABEL, json!({ "anyOf": [{ "type": "null" }, def("condition"), def("dependency")] })),
                ],
            },
            "dependency": object(
                "A dependency, the long way.",
                json!({
                    "condition": field_or("What to wait for.", json!("started"), def("condition")),
                    "required": field_or("Whether the dependency must be active (false: skip it when it is not, as in Compose).", json!(true), def("boolean")),
                }),
            ),
            "condition": described(
                "started: the dependency has started; healthy: its healthcheck passes; \
                    completed_successfully: it (a job) has exited with status 0.",
                choice(CONDITIONS),
            ),
            "probe": probe("A readiness probe: one check, and how often to run it.", "2s", "100ms"),
            "liveness_probe": probe("A liveness probe: one check, and how often to run it.", "10s", "1s"),
            "deploy": deploy(),
            "analysis": object(
                "Canary analysis: the limits each step must keep.",
                json!({
                    "max_error_rate": field("The highest share of failed requests, such as 0.1%.", def("percentage")),
                    "max_p99": field("The highest 99th-percentile latency, such as 100ms.", def("duration")),
                    "min_requests": field_or(
                        "How many requests a step needs before it is judged.",
                        json!(20),
                        count(0, u64::MAX),
                    ),
                }),
            ),
            "autoscale": object(
                "Scales the replicas between `min` and `max` to meet the targets (at least one of cpu, memory, requests_per_second). Not for jobs.",
                json!({
                    "min": field_or("The fewest replicas.", json!(1), count(1, 10_000)),
                    "max": field("The most replicas (required).", count(1, 10_000)),
                    "cpu": field("Target CPU use per instance, such as 70%.", def("percentage")),
                    "memory": field("Target memory use per instance, such as 80%.", def("percentage")),
                    "requests_per_second": field("Target requests per second per instance (more than zero).", def("number")),
                    "scale_down_stabilization": field_or(
                        "How long the load must stay low before scaling down.",
                        json!("5m"),
                        def("duration"),
                    ),
                }),
            ),
            "resources": object(
                "Resource limits per instance.",
                json!({
                    "memory": field("Memory limit, such as 512Mi.", def("size")),
                    "cpu": field(
                        "CPU limit in cores (0.5 is half a core), or in millicores (500m).",
                        json!({
                            "anyOf": [{ "type": "number", "exclusiveMinimum": 0 }, matching(&format!("{NUMBER}m?"))],
                        }),
                    ),
                }),
            ),
            "router": object(
                "How the router talks to the instances (tug's extension).",
                json!({
                    "connect_timeout": field_or("Per attempt to connect to an instance.", json!("2s"), def("duration")),
                    "request_timeout": field_or("From sending a request until its response headers arrive; then 504.", json!("60s"), def("duration")),
                    "max_connection_age": field("Close client connections older than this, gracefully, so long-lived clients rebalance.", def("duration")),
                }),
            ),
            "logs": object(
                "Log file rotation per instance.",
                json!({
                    "max_size": field_or("Rotate a log file at this size (at least 4Ki).", json!("10Mi"), def("size")),
                    "max_files": field_or("How many log files to keep.", json!(5), count(1, 1000)),
                }),
            ),
            "duration": {
                "description": "A duration such as 100ms, 2s, 1m30s, 1h (units: ns, us, ms, s, m, h, d); 0 is zero.",
                "anyOf": [{ "const": 0 }, matching(&format!("0|(?:{NUMBER}(?:ns|us|µs|ms|s|m|h|d))+"))],
            },
            "percentage": described(
                "A percentage between 0% and 100%, such as 70% or 0.1%.",
                matching(&format!("{NUMBER} *%")),
            ),
            "size": {
                "description": "A size in bytes, such as 4096, 512Mi, 1Gi, 10M (Compose's 512m and 1g are binary).",
                "anyOf": [{ "type": "number", "minimum": 0 }, matching(&format!("{NUMBER} *(?:{SIZE_UNITS})?"))],
            },
            "signal": {
                "description": "A signal: its name (SIGTERM, TERM, term) or its number.",
                "anyOf": [
                    { "enum": SIGNALS.iter().map(|(name, _)| *name).collect::<Vec<_>>() },
                    { "enum": SIGNALS.iter().map(|(_, number)| *number).collect::<Vec<_>>() },
                    signal_spelling(),
                ],
            },
            "port": described("A TCP port, 1 to 65535.", count(1, 65535)),
            "number": {
                "description": "A number.",
                "anyOf": [{ "type": "number" }, matching(&format!("[-+]?{NUMBER}(?:[eE][-+]?[0-9]+)?"))],
            },
            "boolean": {
                "description": "true or false (yes/no, on/off and 1/0 are read too).",
                "anyOf": [
                    { "type": "boolean" },
                    { "enum": [0, 1] },
                    words(&[TRUE_WORDS, FALSE_WORDS].concat()),
                ],
            },
        },
    });
    // Services that run an image (one `json!` would exceed the macro's recursion limit).
    let properties = &mut schema["properties"];
    properties["engine"] = field(
        "The container engine's Unix socket, for services that run an image: `unix:///path` or an absolute path. \
            By default: $DOCKER_HOST, then the usual Docker and Podman sockets.",
        matching("(?:unix://)?/.*"),
    );
    properties["listen"] = field(
        "The address tug's routers bind: `0.0.0.0` for every interface; by default the host's advertised address \
            (127.0.0.1 unless `up --advertise`). `up --listen` overrides it.",
        json!({ "type": "string" }),
    );
    properties["volumes"] = field(
        "Named volumes that services mount (`pgdata:/var/lib/postgresql/data`): created by `up`, kept by `down`, \
            removed by `down --volumes`.",
        map(PROFILE_NAME, nullable(def("volume"))),
    );
    properties["api"] = field(
        "The daemon's network endpoint: the control API (signed as on the socket), /metrics (bearer token) and \
            the dashboard (/ui/). Off unless set. A non-loopback address needs `tls` (or `up --insecure`).",
        api(),
    );
    properties["notify"] = field(
        "Webhooks: JSON POSTs on deploys, rollbacks, promotions and crash loops, signed with an HMAC-SHA256 header \
            (`tug token webhook` prints the key).",
        list(object(
            "A webhook.",
            json!({
                "url": field("An http:// or https:// URL.", json!({ "type": "string" })),
                "events": field(
                    "The events to send; all by default.",
                    list(words(&["deployed", "rolled_back", "deploy_failed", "promoted", "crash_loop", "backup_failed"])),
                ),
            }),
        )),
    );
    let defs = &mut schema["$defs"];
    defs["volume"] = volume();
    defs["build"] = build();
    defs["mount"] = mount();
    defs["smoke"] = smoke();
    defs["backup"] = backup();
    defs["service"]["properties"]["backup"] = field(
        "How `tug backup` dumps this service's data and `tug restore` loads it back, and a schedule.",
        def("backup"),
    );
    defs["capability"] =
        described("A Linux capability, upper case, with or without CAP_.", matching("(?:CAP_)?[A-Z][A-Z_]*"));
    schema
}

fn setting() -> Value {
    // A per-environment rule is a setting without `environments` of its own.
    let rule = json!({ "$ref": "#/$defs/setting", "properties": { "environments": false } });
    let mut rules = map(PROFILE_NAME, nullable(rule));
    rules["patternProperties"] = json!({ "^x-": {} });
    object(
        "A setting: its type, constraints, and where its value comes from. First to last: `value`; the process environment; \
            env files; the secret store (secrets only); `default`.",
        json!({
            "type": field_or(
                "The setting's type: string, int, float, bool, duration, port, url, path, enum or secret. \
                    Secrets are never shown in clear, and only delivered to services that list them.",
                json!("string"),
                enumerated(&SettingType::NAMES),
            ),
            "description": field("What the setting is for.", json!({ "type": SCALAR })),
            "required": field_or(
                "Whether a missing value is an error.",
                json!(true),
                def("boolean"),
            ),
            "default": field(
                "The value when no other source gives one (interpolated, may refer to other settings).",
                json!({ "type": SCALAR }),
            ),
            "value": field(
                "A computed value, always used (interpolated, may refer to other settings).",
                json!({ "type": SCALAR }),
            ),
            "min": field("The smallest value (int, float, port, duration).", json!({ "anyOf": [def("number"), def("duration")] })),
            "max": field("The largest value (int, float, port, duration).", json!({ "anyOf": [def("number"), def("duration")] })),
            "min_length": field("The fewest characters (string, secret, path, url).", count(0, u32::MAX.into())),
            "max_length": field("The most characters (string, secret, path, url).", count(0, u32::MAX.into())),
            "pattern": field(
                "A regular expression the whole value must match (string, secret, path, url).",
                json!({ "type": SCALAR }),
            ),
            "values": field("The allowed values (enum).", list(json!({ "type": SCALAR }))),
            "schemes": field("The allowed URL schemes (url), such as [redis, rediss].", list(json!({ "type": SCALAR }))),
            "forbid": field("Values that are refused, such as known placeholders.", list(json!({ "type": SCALAR }))),
            "generate": field("Generate a missing secret (secret).", def("generate")),
            "environments": field(
                "Per-environment rules and values, by environment name, merged over this rule (null removes a field).",
                rules,
            ),
        }),
    )
}

fn service() -> Value {
    let mut service = object(
        "A service (long-running) or a job (runs to completion).",
        json!({
            "kind": field_or("service: long-running; job: runs to completion.", json!("service"), choice(KINDS)),
            "description": field("What the service is for.", json!({ "type": SCALAR })),
            "command": field(
                "What to run (required without `image` or `build`): a list of arguments, run directly, or a string run by `sh -c`. \
                    With an image it replaces the image's CMD, and a string is split into words as Compose does, not run by a shell. \
                    Instance variables such as ${PORT} are substituted per instance, in both forms.",
                def("command"),
            ),
            "port": field(
                "The service's stable address on this host. With replicas, the router owns it and balances them; \
                    each instance gets its own private PORT.",
                def("port"),
            ),
            "protocol": field_or(
                "What the router speaks: http (HTTP/1.1 and HTTP/2, so gRPC too), tcp, or auto (the default: \
                    each connection is HTTP when it opens with an HTTP request, TCP otherwise).",
                json!("auto"),
                choice(PROTOCOLS),
            ),
            "balance": field_or(
                "How the router spreads requests over the replicas: round_robin, least_request or tenant_hash (by `tenant_header`).",
                json!("round_robin"),
                choice(BALANCES),
            ),
            "tenant_header": field(
                "The key for `balance: tenant_hash`: an HTTP header name (for gRPC, metadata).",
                matching(HEADER_NAME),
            ),
            "proxy": field("Whether the router fronts `port` (by default, when the service has a port).", def("boolean")),
            "working_dir": field("The folder to run in, relative to the stack file.", json!({ "type": SCALAR })),
            "replicas": field_or("How many instances to run.", json!(1), count(0, 10_000)),
            "secrets": field("The secret settings this service receives (secrets go only where listed).", list(matching(ENV_NAME))),
            "settings": field("This service's own settings: same schema, extending the shared ones.", def("settings")),
            "environment": field("Environment variables: untyped literals, interpolated.", def("environment")),
            "env_file": field("Env files (relative to the stack file) whose variables the service receives.", list(json!({ "type": SCALAR }))),
            "depends_on": field("The services to wait for before starting, and for what.", def("depends_on")),
            "healthcheck": field(
                "Readiness: gates dependents and router membership. One of http: PATH, tcp: true, exec: CMD or log: REGEX.",
                def("probe"),
            ),
            "liveness": field("Liveness: failing it restarts the instance.", def("liveness_probe")),
            "restart": field_or(
                "When to restart an instance that exits: no, on-failure or always (a job defaults to no, and cannot use always).",
                json!("on-failure"),
                json!({ "anyOf": [choice(RESTARTS), { "const": false }] }),
            ),
            "stop_signal": field_or("The signal that asks an instance to stop.", json!("SIGTERM"), def("signal")),
            "stop_grace_period": field_or("How long to wait after stop_signal, before SIGKILL.", json!("10s"), def("duration")),
            "profiles": field(
                "Start the service only when one of these profiles is active (--profile); without profiles, it always starts.",
                list(name_matching(PROFILE_NAME)),
            ),
            "deploy": field("How a new revision is rolled out.", def("deploy")),
            "autoscale": field("Scale the replicas to meet targets.", def("autoscale")),
            "user": field("Run as this user (tug must run as root).", json!({ "type": SCALAR })),
            "resources": field("Resource limits: memory, cpu.", def("resources")),
            "logs": field("Log rotation: max_size, max_files.", def("logs")),
            "router": field("Router timeouts for this service: connect_timeout, request_timeout, max_connection_age.", def("router")),
        }),
    );
    for (name, schema) in image_fields() {
        service["properties"][name] = schema;
    }
    service["properties"]["slo"] = field(
        "Objectives `tug render alerts` writes alerting rules for: `availability` (the share of requests that \
            succeed, default 99.9%) and `latency` (the p99 request duration, default 100ms).",
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "availability": def("percentage"),
                "latency": def("duration"),
            },
        }),
    );
    service
}

/// A service's fields for running an image, and `source` (kept apart from [`service`]: one
/// `json!` would exceed the macro's recursion limit).
fn image_fields() -> Vec<(&'static str, Value)> {
    vec![
        (
            "image",
            field(
                "Run this OCI image through the container engine instead of a local process (interpolated; never a secret).",
                matching(&image_pattern()),
            ),
        ),
        (
            "pull",
            field_or(
                "When to pull the image: always, missing (only when the engine does not have it) or never.",
                json!("missing"),
                choice(PULLS),
            ),
        ),
        (
            "build",
            field(
                "Build the image: a folder (the context, relative to the stack file), or {context, dockerfile, args, target}. \
                    `image` names the result; without it the image is `<project>-<service>`.",
                json!({ "anyOf": [{ "type": SCALAR }, def("build")] }),
            ),
        ),
        (
            "entrypoint",
            field(
                "Replaces the image's ENTRYPOINT: a list of arguments, or a string split into words (not run by a shell). \
                    Empty (`[]` or \"\") clears it.",
                json!({ "anyOf": [{ "type": SCALAR }, { "type": "array", "items": { "type": SCALAR } }] }),
            ),
        ),
        (
            "volumes",
            field(
                "What the container mounts: `NAME:/path` (a named volume of the stack's `volumes`), `./folder:/path` \
                    (a bind mount, relative to the stack file; `:ro` for read-only), or {type, source, target, read_only}.",
                json!({
                    "type": "array",
                    "items": {
                        "anyOf": [
                            matching(&format!("[^:]+:/[^:]*(?::{mode}(?:,{mode})*)?", mode = format!("(?:{})", MOUNT_MODES.join("|")))),
                            def("mount"),
                        ],
                    },
                }),
            ),
        ),
        (
            "tmpfs",
            field(
                "In-memory folders of the container: an absolute path, with options after `:` (`/tmp:size=64m`).",
                list(matching("/[^:]*(?::.*)?")),
            ),
        ),
        ("read_only", field_or("Mount the container's root filesystem read-only.", json!(false), def("boolean"))),
        (
            "cap_add",
            field(
                "Linux capabilities to add, such as NET_BIND_SERVICE (CAP_ prefix optional).",
                list(def("capability")),
            ),
        ),
        ("cap_drop", field("Linux capabilities to drop, such as ALL.", list(def("capability")))),
        (
            "security_opt",
            field(
                &format!(
                    "Security options for the engine, such as no-new-privileges:true. Known: {}.",
                    SECURITY_OPTIONS.join(", ")
                ),
                list(json!({ "type": "string" })),
            ),
        ),
        (
            "init",
            field_or(
                "Run an init process in the container that forwards signals and reaps zombies.",
                json!(false),
                def("boolean"),
            ),
        ),
        (
            "container_port",
            field(
                "The port the image listens on, published on the instance's $PORT (needs `port`). \
                    Without it, the container shares the host's network and listens on $PORT itself.",
                def("port"),
            ),
        ),
        (
            "source",
            field(
                "A process's code: a folder (relative to the stack file) whose content is part of the revision; \
                    every revision runs from its own copy. Not with `image` or `build`.",
                json!({ "type": SCALAR }),
            ),
        ),
    ]
}

/// One of the stack's named volumes.
fn volume() -> Value {
    object(
        "A named volume: `{}` (tug creates it), or `{ external: true }`.",
        json!({
            "external": field_or(
                "An existing engine volume, used as it is: tug never creates or removes it.",
                json!(false),
                def("boolean"),
            ),
        }),
    )
}

/// `api:`: the daemon's network endpoint.
fn api() -> Value {
    object(
        "The daemon's network endpoint.",
        json!({
            "listen": field("Address and port: 127.0.0.1:7070, 0.0.0.0:7070, [::1]:7070.", json!({ "type": "string" })),
            "tls": field(
                "TLS (rustls): the server's certificate chain and key, PEM; with `client_ca`, clients must present a \
                    certificate it signed (mTLS). Paths are relative to the stack file.",
                object(
                    "TLS files.",
                    json!({
                        "cert": field("The certificate chain (PEM).", json!({ "type": "string" })),
                        "key": field("The private key (PEM).", json!({ "type": "string" })),
                        "client_ca": field("CA certificates (PEM) that sign client certificates.", json!({ "type": "string" })),
                    }),
                ),
            ),
        }),
    )
}

/// `build:` the long way.
fn build() -> Value {
    object(
        "How to build the service's image.",
        json!({
            "context": field("The build context (required): a folder, relative to the stack file.", json!({ "type": SCALAR })),
            "dockerfile": field("The Dockerfile, relative to the context (default: Dockerfile).", json!({ "type": SCALAR })),
            "args": field(
                "Build arguments, as a mapping or a list of `KEY=VALUE`. They stay readable in the image's history: no secrets.",
                def("environment"),
            ),
            "target": field("The stage of a multi-stage Dockerfile to build.", json!({ "type": SCALAR })),
        }),
    )
}

/// A service's volume, the long way.
fn mount() -> Value {
    let mut mount = object(
        "A volume: a named volume (`type: volume`, source: its name) or a bind mount (`type: bind`, source: a path). \
            Without `type`, a source starting with `.`, `/` or `~` is a path.",
        json!({
            "type": field("volume or bind.", enumerated(MOUNT_TYPES)),
            "source": field("The volume's name, or the path of this machine to mount.", json!({ "type": SCALAR })),
            "target": field("Where it appears in the container (an absolute path).", matching("/.*")),
            "read_only": field_or("Mount it read-only.", json!(false), def("boolean")),
        }),
    );
    mount["required"] = json!(["target"]);
    mount
}

/// A probe: exactly one check (http, tcp, exec or log), and how often to run it.
fn probe(description: &str, interval: &str, start_interval: &str) -> Value {
    let duration = def("duration");
    let mut probe = object(
        description,
        json!({
            "http": field("Check: an HTTP GET of this path (starting with /) on the instance's own HOST:PORT.", matching("/.*")),
            "tcp": field("Check: a TCP connection to the instance's PORT (write `tcp: true`).", json!({
                "anyOf": [{ "const": true }, { "const": 1 }, words(&TRUE_WORDS)],
            })),
            "exec": field("Check: this command exits with status 0.", def("command")),
            "log": field("Check: the instance logs a line matching this regular expression.", json!({ "type": SCALAR })),
            "interval": field_or("How often to probe.", json!(interval), duration.clone()),
            "timeout": field_or("How long one probe may take.", json!("1s"), duration.clone()),
            "retries": field_or("Consecutive failures before unhealthy.", json!(3), count(1, 1000)),
            "start_period": field_or("Failures during this start-up period do not count.", json!("0s"), duration.clone()),
            "start_interval": field_or("How often to probe until the first success.", json!(start_interval), duration),
        }),
    );
    let checks = PROBE_CHECKS
        .iter()
        .map(|check| json!({ "required": [check], "properties": { *check: { "not": { "type": "null" } } } }));
    probe["oneOf"] = checks.collect();
    probe
}

fn deploy() -> Value {
    let duration = def("duration");
    let amount = json!({ "anyOf": [count(0, 10_000), def("percentage")] });
    object(
        "How a new revision replaces the old one.",
        json!({
            "strategy": field_or(
                "rolling, blue_green, canary or recreate. When not set: recreate for a stateful single instance (a fixed port with `proxy: false`, a `tcp` service, a named volume, data under $TUG_STATE_DIR), rolling otherwise.",
                json!("rolling"),
                choice(STRATEGIES),
            ),
            "max_surge": field_or("Instances (or a percentage of replicas) that may run above `replicas` during a deploy.", json!(1), amount.clone()),
            "max_unavailable": field_or("Instances (or a percentage of replicas) that may be missing during a deploy.", json!(0), amount),
            "min_ready": field_or("How long a new instance must stay healthy to count as ready.", json!("0s"), duration.clone()),
            "steps": field(
                "Canary: the rising traffic percentages (by default [10, 50, 100]).",
                json!({ "type": "array", "minItems": 1, "items": { "anyOf": [count(1, 100), def("percentage")] } }),
            ),
            "step_duration": field_or("Canary: how long each step lasts.", json!("30s"), duration.clone()),
            "analysis": field("Canary: the limits each step must keep.", def("analysis")),
            "preview_port": field("Blue-green: the port where the new revision can be tried before promotion.", def("port")),
            "auto_promote": field_or("Blue-green: promote the new revision once it is ready.", json!(false), def("boolean")),
            "scale_down_delay": field_or("Blue-green: how long the old revision keeps running after promotion.", json!("30s"), duration.clone()),
            "progress_deadline": field_or("A deploy that makes no progress for this long fails.", json!("10m"), duration),
            "before": field(
                "Jobs of this stack run to completion, with the new revision's configuration, before the rollout starts (once per deploy); a failure stops the deploy before anything changed.",
                list(name_matching(DNS_LABEL)),
            ),
            "smoke": field("Checked against the new revision before it takes traffic; a failure rolls back.", def("smoke")),
        }),
    )
}

/// `backup`: the dump and restore commands, run inside a running instance, and a schedule.
fn backup() -> Value {
    let mut backup = object(
        "Backups of a service's data: `command` writes the dump on its standard output, `restore` reads it on its standard input; both run inside a running instance, with its variables ($PORT, $HOST).",
        json!({
            "command": field("The command whose standard output is the dump (`pg_dump …`, `redis-cli --rdb -`).", def("command")),
            "restore": field("The command that reads a dump on its standard input and loads it (`psql …`).", def("command")),
            "schedule": field(
                "When the daemon backs the service up: five cron fields (UTC), or @hourly, @daily, @weekly, @monthly.",
                json!({ "type": "string" }),
            ),
            "keep": field_or("How many scheduled archives of the service to keep.", json!(7), count(1, 10_000)),
        }),
    );
    backup["required"] = json!(["command"]);
    backup
}

/// `deploy.smoke`: exactly one http, tcp or exec check, and its timeout.
fn smoke() -> Value {
    let mut smoke = object(
        "A check of the new revision before it takes traffic: on the preview (blue-green), before the first step (canary), on the first new instance (rolling).",
        json!({
            "http": field("Check: an HTTP GET of this path (starting with /) answers 2xx or 3xx.", matching("/.*")),
            "tcp": field("Check: a TCP connection to the instance's PORT (write `tcp: true`).", json!({
                "anyOf": [{ "const": true }, { "const": 1 }, words(&TRUE_WORDS)],
            })),
            "exec": field("Check: this command, run in the new instance, exits with status 0.", def("command")),
            "timeout": field_or("How long the check may take.", json!("10s"), def("duration")),
        }),
    );
    smoke["oneOf"] = SMOKE_CHECKS
        .iter()
        .map(|check| json!({ "required": [check], "properties": { *check: { "not": { "type": "null" } } } }))
        .collect();
    smoke
}

fn def(name: &str) -> Value {
    json!({ "$ref": format!("#/$defs/{name}") })
}

/// `schema`, or null: the decoder reads null as absent (and `!reset` leaves null).
fn nullable(schema: Value) -> Value {
    json!({ "anyOf": [{ "type": "null" }, schema] })
}

/// `schema`, with the help editors show.
fn described(description: &str, mut schema: Value) -> Value {
    schema["description"] = json!(description);
    schema
}

/// A property: [`nullable`] and [`described`].
fn field(description: &str, schema: Value) -> Value {
    described(description, nullable(schema))
}

/// A [`field`] with the value the decoder uses when it is absent.
fn field_or(description: &str, default: Value, schema: Value) -> Value {
    let mut field = field(description, schema);
    field["default"] = default;
    field
}

/// A mapping of known fields; `x-` fields are extensions, ignored.
fn object(description: &str, properties: Value) -> Value {
    json!({
        "description": description,
        "type": "object",
        "properties": properties,
        "patternProperties": { "^x-": {} },
        "additionalProperties": false,
    })
}

/// A mapping whose keys match `key` and whose values match `value`.
fn map(key: &str, value: Value) -> Value {
    json!({ "type": "object", "propertyNames": { "pattern": anchored(key) }, "additionalProperties": value })
}

/// A list; a single value is a list of one.
fn list(item: Value) -> Value {
    json!({ "anyOf": [item, { "type": "array", "items": item }] })
}

fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

/// A string matching `re` in full, or one that interpolates (checked once interpolated).
fn matching(re: &str) -> Value {
    json!({ "type": "string", "pattern": format!("{}|{INTERPOLATION}", anchored(re)) })
}

/// [`matching`] for names, which YAML may read as a number or boolean (`2048`, `on`).
fn name_matching(re: &str) -> Value {
    let mut schema = matching(re);
    schema["type"] = json!(SCALAR);
    schema
}

/// A whole number from `min` to `max`.
fn count(min: u64, max: u64) -> Value {
    json!({ "anyOf": [{ "type": "integer", "minimum": min, "maximum": max }, matching("[0-9]+")] })
}

/// One of `names` (or an interpolated string).
fn enumerated(names: &[&str]) -> Value {
    json!({ "anyOf": [{ "enum": names }, { "type": "string", "pattern": INTERPOLATION }] })
}

/// One of the names of a decoder's choice table.
fn choice<T>(table: &[(&str, T)]) -> Value {
    enumerated(&table.iter().map(|(name, _)| *name).collect::<Vec<_>>())
}

/// A string that is one of `words` in any case (as the decoder reads booleans).
fn words(list: &[&str]) -> Value {
    let caseless: Vec<String> = list.iter().map(|w| caseless(w)).collect();
    matching(&caseless.join("|"))
}

/// A signal's name in any case, with or without `SIG`, or its number as a string.
fn signal_spelling() -> Value {
    let names: Vec<String> = SIGNALS.iter().map(|(name, _)| caseless(name.trim_start_matches("SIG"))).collect();
    let numbers: Vec<String> = SIGNALS.iter().map(|(_, number)| number.to_string()).collect();
    matching(&format!("(?:{})?(?:{})|{}", caseless("SIG"), names.join("|"), numbers.join("|")))
}

/// A regular expression for `word` in any case: `on` is `[oO][nN]`.
fn caseless(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TOP_FIELDS;
    use crate::container::{BUILD_FIELDS, MOUNT_FIELDS, VOLUME_FIELDS};
    use crate::service::{
        ANALYSIS_FIELDS, AUTOSCALE_FIELDS, BACKUP_FIELDS, DEPENDS_ON_FIELDS, DEPLOY_FIELDS, LOGS_FIELDS, PROBE_FIELDS,
        RESOURCES_FIELDS, ROUTER_FIELDS, SERVICE_FIELDS, SMOKE_FIELDS,
    };
    use crate::settings::SETTING_FIELDS;
    use crate::units::{parse_duration, parse_percent, parse_signal, parse_size};

    fn sorted<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut names: Vec<&str> = names.into_iter().collect();
        names.sort_unstable();
        names
    }

    /// Every value of `keyword` anywhere in `schema`.
    fn find<'s>(schema: &'s Value, keyword: &str) -> Vec<&'s Value> {
        match schema {
            Value::Object(map) => map
                .iter()
                .flat_map(|(key, value)| {
                    let here = (key == keyword).then_some(value);
                    here.into_iter().chain(find(value, keyword))
                })
                .collect(),
            Value::Array(items) => items.iter().flat_map(|item| find(item, keyword)).collect(),
            _ => Vec::new(),
        }
    }

    fn patterns(schema: &Value) -> Vec<&str> {
        find(schema, "pattern").into_iter().filter_map(Value::as_str).collect()
    }

    /// Whether one of the patterns of a unit's definition accepts `text`.
    fn accepts(schema: &Value, unit: &str, text: &str) -> bool {
        patterns(&schema["$defs"][unit])
            .into_iter()
            .any(|pattern| regex::Regex::new(pattern).expect("a valid pattern").is_match(text))
    }

    #[test]
    fn properties_are_the_decoders_fields() {
        let schema = schema();
        let defs = &schema["$defs"];
        for (object, fields) in [
            (&schema, TOP_FIELDS),
            (&defs["setting"], SETTING_FIELDS),
            (&defs["service"], SERVICE_FIELDS),
            (&defs["probe"], PROBE_FIELDS),
            (&defs["liveness_probe"], PROBE_FIELDS),
            (&defs["deploy"], DEPLOY_FIELDS),
            (&defs["smoke"], SMOKE_FIELDS),
            (&defs["backup"], BACKUP_FIELDS),
            (&defs["analysis"], ANALYSIS_FIELDS),
            (&defs["autoscale"], AUTOSCALE_FIELDS),
            (&defs["resources"], RESOURCES_FIELDS),
            (&defs["logs"], LOGS_FIELDS),
            (&defs["router"], ROUTER_FIELDS),
            (&defs["dependency"], DEPENDS_ON_FIELDS),
            (&defs["build"], BUILD_FIELDS),
            (&defs["mount"], MOUNT_FIELDS),
            (&defs["volume"], VOLUME_FIELDS),
        ] {
            let properties = object["properties"].as_object().expect("an object schema");
            assert_eq!(sorted(properties.keys().map(String::as_str)), sorted(fields.iter().copied()));
        }
    }

    #[test]
    fn enums_list_every_choice() {
        fn names<T>(table: &[(&'static str, T)]) -> Vec<&'static str> {
            table.iter().map(|(name, _)| *name).collect()
        }
        let schema = schema();
        let defs = &schema["$defs"];
        let service = &defs["service"]["properties"];
        for (field, choices) in [
            (&defs["condition"], names(CONDITIONS)),
            (&service["kind"], names(KINDS)),
            (&service["protocol"], names(PROTOCOLS)),
            (&service["balance"], names(BALANCES)),
            (&service["restart"], names(RESTARTS)),
            (&service["pull"], names(PULLS)),
            (&defs["deploy"]["properties"]["strategy"], names(STRATEGIES)),
        ] {
            let listed: Vec<&str> = find(field, "enum")
                .into_iter()
                .flat_map(|names| names.as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect();
            for choice in choices {
                assert!(listed.contains(&choice), "`{choice}` is missing from {listed:?}");
            }
        }
    }

    #[test]
    fn every_pattern_compiles() {
        let schema = schema();
        for pattern in patterns(&schema) {
            assert!(regex::Regex::new(pattern).is_ok(), "{pattern}");
        }
    }

    /// The unit's patterns accept exactly the samples the decoder parses, and references.
    fn agrees<E>(unit: &str, parse: impl Fn(&str) -> Result<E, String>, samples: &[&str]) {
        let schema = schema();
        for text in samples {
            assert_eq!(accepts(&schema, unit, text), parse(text).is_ok(), "{unit} `{text}`");
        }
        assert!(accepts(&schema, unit, "${VALUE}"), "{unit} interpolated");
    }

    #[test]
    fn unit_patterns_agree_with_the_decoder() {
        agrees("duration", parse_duration, &["100ms", "2s", "1m30s", "1.5s", "250us", "0", "10", "5x", "1m30", "-1s"]);
        agrees("percentage", parse_percent, &["70%", "0.1%", "100%", "70", "%", "x%"]);
        agrees("size", parse_size, &["512Mi", "1G", "512m", "4096", "10 MiB", "Mi", "12 parsecs"]);
        agrees("signal", parse_signal, &["SIGTERM", "term", "Hup", "15", "SIGFOO", "16"]);
    }
}
