//! What a revision is made of, resolved before anything starts: the image id of every service
//! that runs an image (pulled or built as its `pull` and `build` say), and the copy of every
//! process service's `source`. Both go into the spec, so they are part of the revision: a
//! rebuilt `:dev` tag or an edited file is a change that `deploy` rolls out.
//!
//! Everything that can fail here (an unreachable engine, a missing image, a failed build, a
//! volume the engine refuses) fails `up` and `deploy` before the daemon is asked to change
//! anything, with the service, the image and what to do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tug_stackfile::Stack;
use tug_stackfile::model::{Pull, VolumeMount};

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use crate::client::Client;
use crate::source::{self, Snapshot};

/// Labels on every volume tug creates: which stack it belongs to.
pub const PROJECT_LABEL: &str = "tug.project";
pub const STATE_DIR_LABEL: &str = "tug.state_dir";

/// An image as the engine has it.
pub struct Image {
    /// `sha256:…`: what the revision holds and the instances run.
    pub id: String,
    /// Its `USER` (empty: root), for whom its secret files are.
    pub user: String,
}

#[derive(Default)]
pub struct Artifacts {
    /// The engine's address, when a service runs an image.
    pub engine: Option<String>,
    /// Service → its image, resolved.
    pub images: HashMap<String, Image>,
    /// Service → its source's copy for this revision.
    pub sources: HashMap<String, Snapshot>,
}

/// The engine's volume name of the stack's volume `name` (Compose's convention).
pub fn volume_name(project: &str, name: &str) -> String {
    format!("{project}_{name}")
}

/// The engine the stack names, else `DOCKER_HOST`, else the usual sockets.
pub fn endpoint(stack: &Stack) -> Result<tug_engine::Endpoint, String> {
    endpoint_named(stack.engine.as_deref())
}

/// `named` (the stack's `engine`), else this process's `DOCKER_HOST`, else the usual sockets.
fn endpoint_named(named: Option<&str>) -> Result<tug_engine::Endpoint, String> {
    let docker_host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    let runtime_dir = std::env::var("XDG_RUNTIME_DIR").ok().filter(|d| !d.is_empty());
    tug_engine::resolve_endpoint(named, docker_host.as_deref(), runtime_dir.as_deref()).map_err(|e| e.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

/// Resolves the artifacts of `wanted` (pulling and building what they need, creating their
/// volumes). Other services' images are only looked up: their instances are not started now.
pub fn resolve(stack: &Stack, wanted: &[String], state_dir: &Path) -> Result<Artifacts, String> {
    let mut artifacts = sources(stack, wanted, state_dir)?;
    if !stack.services.values().any(|s| s.container.is_some()) {
        return Ok(artifacts);
    }
    // Only what starts now needs the engine: `tug up api` of a process is not refused because
    // the engine another service would use is down.
    if !stack.services.iter().any(|(n, s)| s.container.is_some() && wanted.contains(n)) {
        artifacts.engine = endpoint(stack).ok().map(|e| e.url());
        return Ok(artifacts);
    }
    let endpoint = endpoint(stack).map_err(|e| format!("{} run images, but {e}", images_of(stack)))?;
    artifacts.engine = Some(endpoint.url());
    let engine = tug_engine::Engine::new(endpoint);
    let state = state_dir.display().to_string();
    runtime()?.block_on(async {
        engine.version().await.map_err(|e| format!("{} run images, but {e}", images_of(stack)))?;
        // Builds and pulls run side by side; each reports its own failure.
        let mut tasks = Vec::new();
        for (name, service) in &stack.services {
            let Some(container) = service.container.clone() else { continue };
            let engine = engine.clone();
            let name = name.clone();
            let wanted = wanted.contains(&name);
            let project = stack.name.clone();
            tasks.push(tokio::spawn(async move {
                let image = match image_id(&engine, &project, &name, &container, wanted).await {
                    Ok(Some(id)) => match engine.inspect_image(&id).await {
                        Ok(info) => Ok(Some(Image { user: info.map(|i| i.user).unwrap_or_default(), id })),
                        Err(e) => Err(format!("service `{name}`: cannot look up the image {id}: {e}")),
                    },
                    other => other.map(|_| None),
                };
                (name, image)
            }));
        }
        let mut problems = Vec::new();
        for task in tasks {
            match task.await {
                Ok((name, Ok(Some(image)))) => {
                    artifacts.images.insert(name, image);
                }
                Ok((_, Ok(None))) => {}
                Ok((_, Err(problem))) => problems.push(problem),
                Err(e) => problems.push(format!("an image task failed: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        volumes(&engine, stack, wanted, &state).await
    })?;
    Ok(artifacts)
}

/// The copies of `wanted` services' sources, made now.
fn sources(stack: &Stack, wanted: &[String], state_dir: &Path) -> Result<Artifacts, String> {
    let mut artifacts = Artifacts::default();
    for (name, service) in &stack.services {
        if let Some(source) = &service.source
            && wanted.contains(name)
        {
            let snapshot = source::snapshot(name, source, state_dir).map_err(|e| format!("service `{name}`: {e}"))?;
            artifacts.sources.insert(name.clone(), snapshot);
        }
    }
    Ok(artifacts)
}

/// [`resolve`], or for a `remote` daemon its sources sent ([`send_source`]) and what the
/// daemon must resolve on its host ([`for_host`]); the engine is then the one the stack
/// names, else the daemon's own.
pub fn resolve_here_or_there(
    stack: &Stack,
    wanted: &[String],
    state_dir: &Path,
    remote: Option<&Client>,
) -> Result<(Artifacts, Option<tug_proto::spec::HostArtifacts>), String> {
    let Some(client) = remote else { return Ok((resolve(stack, wanted, state_dir)?, None)) };
    let mut artifacts = digests(stack, Some(wanted), state_dir)?;
    artifacts.engine = named_engine(stack)?;
    let mut on_host = for_host(stack, wanted, &artifacts);
    for (name, snapshot) in &mut artifacts.sources {
        let Some(source) = stack.services.get(name).and_then(|s| s.source.as_ref()) else { continue };
        let sent = send_source(client, name, source, &snapshot.digest, state_dir)?;
        snapshot.digest = sent.digest.clone();
        on_host.sources.insert(name.clone(), sent);
    }
    Ok((artifacts, Some(on_host)))
}

/// Makes sure the remote daemon has `service`'s source with `digest`: asks, and sends its
/// bundle (`PUT /v1/uploads/<sha256>`) when it does not. Answers the digest of what was sent
/// (a file edited meanwhile makes it another revision).
fn send_source(
    client: &Client,
    service: &str,
    source: &Path,
    digest: &str,
    state_dir: &Path,
) -> Result<tug_proto::spec::HostSource, String> {
    #[derive(serde::Deserialize)]
    struct Present {
        present: bool,
    }
    let asked: Present = client.get(&format!("/v1/sources?service={service}&digest={digest}"), crate::run::QUICK)?;
    if asked.present {
        return Ok(tug_proto::spec::HostSource { digest: digest.to_string(), upload: None });
    }
    // A private file in the state folder: a source may hold files only its owner may read.
    let folder = crate::daemon::private_state_dir(state_dir)?.join(crate::upload::UPLOADS);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&folder)
        .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    let bundle = folder.join(format!(".bundle-{service}-{}", std::process::id()));
    let sent = write_and_send(client, service, source, state_dir, &bundle);
    let _ = std::fs::remove_file(&bundle);
    sent
}

fn write_and_send(
    client: &Client,
    service: &str,
    source: &Path,
    state_dir: &Path,
    bundle: &Path,
) -> Result<tug_proto::spec::HostSource, String> {
    use std::io::Write;
    let failed = |e: std::io::Error| format!("cannot write {}: {e}", bundle.display());
    let file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(bundle).map_err(failed)?;
    let mut buffered = std::io::BufWriter::new(file);
    let mut hashing = source::HashingWriter { inner: &mut buffered, hasher: sha2::Sha256::default() };
    let digest =
        source::write_bundle(source, state_dir, &mut hashing).map_err(|e| format!("service `{service}`: {e}"))?;
    let sha = tug_proto::auth::hex(&sha2::Digest::finalize(hashing.hasher));
    buffered.flush().map_err(failed)?;
    let bytes = std::fs::metadata(bundle).map_err(failed)?.len();
    eprintln!("{service}: sending its source ({})", crate::run::format_bytes(bytes));
    client.upload(bundle, &sha, UPLOAD_ANSWER).map_err(|e| format!("service `{service}`: sending its source: {e}"))?;
    Ok(tug_proto::spec::HostSource { digest, upload: Some(sha) })
}

/// The engine the stack's `engine` names, as a URL (`None`: the daemon's own).
fn named_engine(stack: &Stack) -> Result<Option<String>, String> {
    let Some(named) = &stack.engine else { return Ok(None) };
    let endpoint = tug_engine::resolve_endpoint(Some(named), None, None).map_err(|e| format!("engine: {e}"))?;
    Ok(Some(endpoint.url()))
}

/// How long the daemon may take to answer an upload once it is sent (it checks the digest
/// and renames a file).
const UPLOAD_ANSWER: std::time::Duration = std::time::Duration::from_secs(60);

/// What a remote daemon must resolve on its host for `wanted` to start: every image (pulled
/// for the services that start, looked up for the others) and the named volumes they mount.
pub fn for_host(stack: &Stack, wanted: &[String], artifacts: &Artifacts) -> tug_proto::spec::HostArtifacts {
    let images = stack
        .services
        .iter()
        .filter_map(|(name, service)| {
            let container = service.container.as_ref()?;
            let image = tug_proto::spec::HostImage {
                pull: container.pull,
                built: container.build.is_some(),
                start: wanted.contains(name),
            };
            Some((name.clone(), image))
        })
        .collect();
    let sources = artifacts
        .sources
        .iter()
        .map(|(name, snapshot)| {
            (name.clone(), tug_proto::spec::HostSource { digest: snapshot.digest.clone(), upload: None })
        })
        .collect();
    tug_proto::spec::HostArtifacts { images, volumes: named_volumes(stack, wanted), sources, root: stack.root.clone() }
}

/// On the daemon, for a remote client's request (`on_host`): makes the source copies it sent
/// (or finds those this host has), resolves its images on this host's engine (pulled as their
/// `pull` says, or only looked up with `lookup_only`, for a plan) and creates its volumes.
/// Fills in the services' copies, image ids and so their revisions, and, when the stack names
/// none, this host's engine.
pub async fn resolve_on_host(
    project: &str,
    engine: &mut Option<String>,
    services: &mut [tug_proto::spec::ServiceSpec],
    on_host: &tug_proto::spec::HostArtifacts,
    (state_dir, root): (&Path, &Path),
    lookup_only: bool,
) -> Result<(), String> {
    sources_on_this_host(services, &on_host.sources, state_dir, lookup_only).await?;
    for service in services.iter_mut() {
        paths_onto_this_host(service, &on_host.root, root);
    }
    let resolved = images_on_this_host(project, engine, services, on_host, state_dir, lookup_only).await;
    // The copies' paths and the image ids are part of the revisions: the client could not know them.
    for service in services.iter_mut() {
        service.revision = service.compute_revision();
    }
    resolved
}

async fn images_on_this_host(
    project: &str,
    engine: &mut Option<String>,
    services: &mut [tug_proto::spec::ServiceSpec],
    on_host: &tug_proto::spec::HostArtifacts,
    state_dir: &Path,
    lookup_only: bool,
) -> Result<(), String> {
    if on_host.images.is_empty() {
        return Ok(());
    }
    let endpoint = match endpoint_named(engine.as_deref()) {
        Ok(endpoint) => endpoint,
        Err(_) if lookup_only => return Ok(()),
        Err(e) => return Err(format!("the stack runs images, but on this host {e}")),
    };
    *engine = Some(endpoint.url());
    let engine = tug_engine::Engine::new(endpoint);
    if let Err(e) = engine.version().await {
        return if lookup_only { Ok(()) } else { Err(format!("the stack runs images, but on this host {e}")) };
    }
    let mut problems = Vec::new();
    for service in services.iter_mut() {
        let (Some(container), Some(wanted)) = (service.container.as_mut(), on_host.images.get(&service.name)) else {
            continue;
        };
        match image_on_this_host(&engine, &service.name, &container.image, wanted, lookup_only).await {
            Ok(Some(info)) => {
                container.image_id = info.id;
                container.image_user = info.user;
            }
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }
    }
    if !lookup_only {
        let state = state_dir.display().to_string();
        problems.extend(create_volumes(&engine, project, &on_host.volumes, &state).await);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// Paths inside the client's stack folder (`from`) name the same paths inside this host's
/// (`to`): the service's `working_dir` (unless it runs from a source's copy) and its bind mounts.
fn paths_onto_this_host(service: &mut tug_proto::spec::ServiceSpec, from: &Path, to: &Path) {
    let onto = |path: &Path| match path.strip_prefix(from) {
        // `join("")` would add a trailing slash: a different path to compare, a new revision.
        Ok(rest) if from.is_absolute() && rest.as_os_str().is_empty() => to.to_path_buf(),
        Ok(rest) if from.is_absolute() => to.join(rest),
        _ => path.to_path_buf(),
    };
    if service.source.is_none() {
        service.working_dir = onto(&service.working_dir);
    }
    for mount in service.container.iter_mut().flat_map(|c| c.mounts.iter_mut()) {
        if mount.kind == tug_proto::spec::MountKind::Bind {
            mount.source = onto(Path::new(&mount.source)).display().to_string();
        }
    }
}

/// Points every source the services run from at this host's copy: made from the bundle the
/// client sent, or one this host already has (for a plan, where it would be). A source the
/// client did not send must already be readable here.
async fn sources_on_this_host(
    services: &mut [tug_proto::spec::ServiceSpec],
    sent: &std::collections::BTreeMap<String, tug_proto::spec::HostSource>,
    state_dir: &Path,
    lookup_only: bool,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for service in services.iter_mut() {
        let name = service.name.clone();
        let Some(source) = service.source.as_mut() else { continue };
        let Some(host) = sent.get(&name) else {
            if !lookup_only && !source.copy.is_dir() {
                problems.push(format!(
                    "service `{name}`: this host has no copy of its source {}, and the request did not send it; run \
                     the command again with this version of `tug`",
                    source.path.display()
                ));
            }
            continue;
        };
        let copy = if lookup_only {
            state_dir.join(tug_supervisor::history::REVISIONS).join(&name).join(&host.digest)
        } else {
            match copy_on_this_host(&name, host, state_dir).await {
                Ok(copy) => copy,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            }
        };
        service.working_dir = source::working_dir_in_copy(&service.working_dir, &source.copy, &copy);
        source.copy = copy;
        source.digest = host.digest.clone();
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// The copy of a source a client sent (unpacked from its upload, which is then removed) or
/// one this host has.
async fn copy_on_this_host(
    service: &str,
    sent: &tug_proto::spec::HostSource,
    state_dir: &Path,
) -> Result<PathBuf, String> {
    let Some(upload) = &sent.upload else {
        return source::existing(service, &sent.digest, state_dir).map(|s| s.copy).ok_or_else(|| {
            format!("service `{service}`: this host no longer has the copy of its source; run the command again")
        });
    };
    if !crate::upload::valid_digest(upload) {
        return Err(format!("service `{service}`: `{upload}` does not name an upload"));
    }
    let file = crate::upload::path_of(state_dir, upload);
    let (name, state) = (service.to_string(), state_dir.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || {
        let opened = std::fs::File::open(&file);
        let _ = std::fs::remove_file(&file);
        let mut bundle = std::io::BufReader::new(
            opened
                .map_err(|e| format!("service `{name}`: its source was not uploaded ({e}); run the command again"))?,
        );
        source::unpack_bundle(&name, &mut bundle, &state)
    })
    .await
    .map_err(|e| format!("service `{service}`: unpacking its source stopped: {e}"))??;
    if unpacked.digest != sent.digest {
        return Err(format!(
            "service `{service}`: its source changed while it was sent ({} became {}); run the command again",
            sent.digest, unpacked.digest
        ));
    }
    Ok(unpacked.copy)
}

/// A remote client's image as this host's engine has it: pulled as `pull` says when the
/// service starts; a built one (its context is on the client) only as present.
async fn image_on_this_host(
    engine: &tug_engine::Engine,
    service: &str,
    image: &str,
    wanted: &tug_proto::spec::HostImage,
    lookup_only: bool,
) -> Result<Option<tug_engine::ImageInfo>, String> {
    let looked_up = |e: tug_engine::Error| format!("service `{service}`: cannot look up the image `{image}`: {e}");
    let present = engine.inspect_image(image).await.map_err(looked_up)?;
    if lookup_only || !wanted.start {
        return Ok(present);
    }
    if wanted.built {
        return match present {
            Some(info) => Ok(Some(info)),
            None => Err(format!(
                "service `{service}` builds `{image}` from a folder on the machine that ran `tug`, and this host's \
                 engine has no `{image}`: `tug --host` does not send build contexts; build it on this host \
                 (`docker build -t {image} …`), or push it to a registry this host pulls from"
            )),
        };
    }
    let id = pulled_or_present(engine, service, image, wanted.pull, present).await?;
    engine.inspect_image(&id).await.map_err(looked_up)
}

/// What the revisions would be, acting on nothing (`deploy --plan`): sources digested but not
/// copied, images looked up but neither built nor pulled (one to build or pull is compared as
/// the engine has it now, or as missing). An unreachable engine leaves the image ids out.
pub fn resolve_for_plan(stack: &Stack, state_dir: &Path) -> Result<Artifacts, String> {
    let mut artifacts = digests(stack, None, state_dir)?;
    if !stack.services.values().any(|s| s.container.is_some()) {
        return Ok(artifacts);
    }
    let Ok(endpoint) = endpoint(stack) else { return Ok(artifacts) };
    artifacts.engine = Some(endpoint.url());
    let engine = tug_engine::Engine::new(endpoint);
    runtime()?.block_on(async {
        for (name, service) in &stack.services {
            let Some(container) = &service.container else { continue };
            if let Ok(Some(info)) = engine.inspect_image(&container.image).await {
                artifacts.images.insert(name.clone(), Image { id: info.id, user: info.user });
            }
        }
    });
    Ok(artifacts)
}

/// [`resolve_for_plan`] for a remote daemon: the sources digested; the daemon looks the
/// images up on its own engine ([`resolve_on_host`]).
pub fn resolve_for_remote_plan(stack: &Stack, state_dir: &Path) -> Result<Artifacts, String> {
    let mut artifacts = digests(stack, None, state_dir)?;
    artifacts.engine = named_engine(stack)?;
    Ok(artifacts)
}

/// The digest of every source (of the `wanted` services' only, when given) and the copy it
/// would have, none made.
fn digests(stack: &Stack, wanted: Option<&[String]>, state_dir: &Path) -> Result<Artifacts, String> {
    let mut artifacts = Artifacts::default();
    for (name, service) in &stack.services {
        if let Some(source) = &service.source
            && wanted.is_none_or(|w| w.contains(name))
        {
            let snapshot =
                source::digest_only(name, source, state_dir).map_err(|e| format!("service `{name}`: {e}"))?;
            artifacts.sources.insert(name.clone(), snapshot);
        }
    }
    Ok(artifacts)
}

fn images_of(stack: &Stack) -> String {
    let names: Vec<&str> =
        stack.services.iter().filter(|(_, s)| s.container.is_some()).map(|(n, _)| n.as_str()).collect();
    match names.as_slice() {
        [one] => format!("service `{one}` runs an image"),
        many => format!("services {} run images", many.join(", ")),
    }
}

/// The image id a service runs: built (with `build`), pulled by its `pull` policy, or looked
/// up only (`wanted` false: it does not start now, and a missing image is no error yet).
async fn image_id(
    engine: &tug_engine::Engine,
    project: &str,
    service: &str,
    container: &tug_stackfile::model::Container,
    wanted: bool,
) -> Result<Option<String>, String> {
    let image = &container.image;
    let looked_up = |e: tug_engine::Error| format!("service `{service}`: cannot look up the image `{image}`: {e}");
    if !wanted {
        return Ok(engine.inspect_image(image).await.map_err(looked_up)?.map(|i| i.id));
    }
    if let Some(build) = &container.build {
        eprintln!("{service}: building {image} from {}", build.context.display());
        let request = tug_engine::BuildRequest {
            context: build.context.clone(),
            dockerfile: build.dockerfile.clone(),
            args: build.args.iter().map(|(k, v)| (k.clone(), v.expose().to_string())).collect(),
            target: build.target.clone(),
            tag: image.clone(),
            labels: vec![(PROJECT_LABEL.to_string(), project.to_string())],
        };
        let mut progress = |line: &str| {
            let hides_a_secret =
                build.args.values().any(|v| v.sensitive && !v.expose().is_empty() && line.contains(v.expose()));
            if line.starts_with("Step ") && !hides_a_secret {
                eprintln!("{service}: {line}");
            }
        };
        // A build argument from a secret can show in the build's output: never in tug's.
        let secrets: Vec<&str> =
            build.args.values().filter(|v| v.sensitive && !v.expose().is_empty()).map(|v| v.expose()).collect();
        let id = engine.build(&request, &mut progress).await.map_err(|e| {
            let message = format!("service `{service}`: {e}");
            secrets.iter().fold(message, |text, secret| text.replace(secret, tug_stackfile::model::MASK))
        })?;
        return Ok(Some(id));
    }
    let present = engine.inspect_image(image).await.map_err(looked_up)?;
    pulled_or_present(engine, service, image, container.pull, present).await.map(Some)
}

/// The id of `image` as `pull` wants it, given what the engine has (`present`): pulled
/// (`always`, or `missing` when absent) or the one present.
async fn pulled_or_present(
    engine: &tug_engine::Engine,
    service: &str,
    image: &str,
    pull: Pull,
    present: Option<tug_engine::ImageInfo>,
) -> Result<String, String> {
    let looked_up = |e: tug_engine::Error| format!("service `{service}`: cannot look up the image `{image}`: {e}");
    let pull = match (pull, &present) {
        (Pull::Always, _) | (Pull::Missing, None) => true,
        (Pull::Missing, Some(_)) | (Pull::Never, _) => false,
    };
    if pull {
        eprintln!("{service}: pulling {image}");
        if let Err(e) = engine.pull(image).await {
            return match present {
                // `always` with the registry out of reach: say so, and do not run a stale image silently.
                Some(_) => Err(format!(
                    "service `{service}`: `pull: always`, and {e}; use `pull: missing` to run the image the engine has"
                )),
                None => Err(format!(
                    "service `{service}`: the image `{image}` is not on the container engine, and {e}; build it \
                     (`build:`), load it (`docker load`), or check its name"
                )),
            };
        }
        let pulled = engine.inspect_image(image).await.map_err(looked_up)?;
        return pulled.map(|i| i.id).ok_or_else(|| {
            format!("service `{service}`: the engine pulled `{image}` but does not list it afterwards")
        });
    }
    match present {
        Some(info) => Ok(info.id),
        None => Err(format!(
            "service `{service}`: the image `{image}` is not on the container engine (`pull: never`); build or load \
             it first (`docker build -t {image} …` or `docker load`)"
        )),
    }
}

/// Creates the named volumes `wanted` services mount (labelled with the stack), checks the
/// external ones exist, and creates bind-mounted folders inside the stack's folder.
async fn volumes(engine: &tug_engine::Engine, stack: &Stack, wanted: &[String], state_dir: &str) -> Result<(), String> {
    let mut problems = create_volumes(engine, &stack.name, &named_volumes(stack, wanted), state_dir).await;
    for (name, service) in stack.services.iter().filter(|(n, _)| wanted.contains(n)) {
        let Some(container) = &service.container else { continue };
        for mount in &container.volumes {
            if let VolumeMount::Bind { source, .. } = mount
                && !source.exists()
                && source.starts_with(&stack.root)
                && let Err(e) = std::fs::create_dir_all(source)
            {
                problems.push(format!("service `{name}`: cannot create {}: {e}", source.display()));
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// The named volumes `wanted` services mount, each once.
fn named_volumes(stack: &Stack, wanted: &[String]) -> Vec<tug_proto::spec::HostVolume> {
    let mut out: Vec<tug_proto::spec::HostVolume> = Vec::new();
    for (service, definition) in stack.services.iter().filter(|(n, _)| wanted.contains(n)) {
        let Some(container) = &definition.container else { continue };
        for mount in &container.volumes {
            let VolumeMount::Named { name, .. } = mount else { continue };
            if out.iter().any(|v| &v.name == name) {
                continue;
            }
            let external = stack.volumes.get(name).is_some_and(|v| v.external);
            out.push(tug_proto::spec::HostVolume {
                service: service.clone(),
                name: name.clone(),
                engine_name: if external { name.clone() } else { volume_name(&stack.name, name) },
                external,
            });
        }
    }
    out
}

/// Creates `volumes` on the engine (labelled with the stack) and checks the external ones
/// exist; answers what went wrong, one line each.
async fn create_volumes(
    engine: &tug_engine::Engine,
    project: &str,
    volumes: &[tug_proto::spec::HostVolume],
    state_dir: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for volume in volumes {
        let (service, name) = (&volume.service, &volume.name);
        if volume.external {
            match engine.list_volumes(&[]).await {
                Ok(exists) if exists.contains(&volume.engine_name) => {}
                Ok(_) => problems.push(format!(
                    "service `{service}`: the external volume `{name}` does not exist on the engine; create it \
                     (`docker volume create {name}`)"
                )),
                Err(e) => problems.push(format!("service `{service}`: cannot list the engine's volumes: {e}")),
            }
            continue;
        }
        let labels = vec![
            (PROJECT_LABEL.to_string(), project.to_string()),
            ("tug.volume".to_string(), name.clone()),
            (STATE_DIR_LABEL.to_string(), state_dir.to_string()),
        ];
        if let Err(e) = engine.create_volume(&volume.engine_name, &labels).await {
            problems.push(format!("service `{service}`: cannot create the volume `{name}`: {e}"));
        }
    }
    problems
}

/// `down --volumes`: removes the named volumes this stack created (never external ones).
pub fn remove_volumes(stack: &Stack, state_dir: &Path) -> Result<Vec<String>, String> {
    let endpoint = endpoint(stack)?;
    let engine = tug_engine::Engine::new(endpoint);
    let state = state_dir.display().to_string();
    runtime()?.block_on(async {
        let names = engine.list_volumes(&[(STATE_DIR_LABEL, &state)]).await.map_err(|e| e.to_string())?;
        let mut removed = Vec::new();
        for name in names {
            engine.remove_volume(&name).await.map_err(|e| format!("cannot remove the volume `{name}`: {e}"))?;
            removed.push(name);
        }
        Ok(removed)
    })
}
