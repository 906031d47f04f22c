//! Artifacts for a daemon on another host (`tug --host`). The client sends what only it has:
//! each source the daemon lacks as a bundle and each build context as the engine's archive
//! (`PUT /v1/uploads/<sha256>`), and `on_host`, what the daemon must resolve itself. The
//! daemon ([`resolve_on_host`]) makes the copies, moves paths inside the client's stack folder
//! into its own, builds, pulls or looks up the images on its own engine, creates the volumes,
//! and recomputes the revisions, before anything changes.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tug_proto::spec::{HostArtifacts, HostBuild, HostImage, HostSource, RunRequest, ServiceSpec, UpRequest};
use tug_stackfile::Stack;

use super::{Artifacts, PROJECT_LABEL, create_volumes, digests, endpoint_named, named_volumes, pulled_or_present};
use crate::client::Client;
use crate::source;

/// The artifacts for a remote daemon: sources digested and sent when it lacks them, build
/// contexts sent for the services that start, and what it must resolve on its host.
pub fn resolve(
    client: &Client,
    stack: &Stack,
    wanted: &[String],
    state_dir: &Path,
) -> Result<(Artifacts, HostArtifacts), String> {
    // A daemon from before `on_host` would ignore it and run what it was not sent.
    let status: tug_proto::status::StackStatus = client.get("/v1/status", crate::run::QUICK)?;
    if status.version.is_empty() {
        return Err("the remote daemon runs an older tug, which cannot take images, sources or builds from here: \
                    upgrade tug on that host (`tug down` there, then `tug up -d` with the new one)"
            .into());
    }
    let mut artifacts = digests(stack, Some(wanted), state_dir)?;
    artifacts.engine = named_engine(stack)?;
    let mut on_host = for_host(stack, wanted, &artifacts);
    for (name, snapshot) in &mut artifacts.sources {
        let Some(source) = stack.services.get(name).and_then(|s| s.source.as_ref()) else { continue };
        let sent = send_source(client, name, source, &snapshot.digest, state_dir)?;
        snapshot.digest = sent.digest.clone();
        on_host.sources.insert(name.clone(), sent);
    }
    for (name, image) in on_host.images.iter_mut().filter(|(_, i)| i.start && i.built) {
        let Some(container) = stack.services.get(name).and_then(|s| s.container.as_ref()) else { continue };
        let Some(build) = &container.build else { continue };
        image.build = Some(send_context(client, name, container, build, state_dir)?);
        // The deploy's answer comes once the host has built it: say why it may take a while.
        eprintln!("{name}: the host builds {}", container.image);
    }
    Ok((artifacts, on_host))
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
) -> Result<HostSource, String> {
    #[derive(serde::Deserialize)]
    struct Present {
        present: bool,
    }
    let asked: Present = client.get(&format!("/v1/sources?service={service}&digest={digest}"), crate::run::QUICK)?;
    if asked.present {
        return Ok(HostSource { digest: digest.to_string(), upload: None });
    }
    let (digest, upload) =
        send_file(client, state_dir, (service, "source"), |out| source::write_bundle(source, state_dir, out))?;
    Ok(HostSource { digest, upload: Some(upload) })
}

/// Writes a file with `write` in the state folder's uploads (private: a source or a build
/// context may hold files only its owner may read), sends it as an upload, and removes it.
/// Answers what `write` answered and the file's SHA-256.
fn send_file<T>(
    client: &Client,
    state_dir: &Path,
    (service, what): (&str, &str),
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<T, String>,
) -> Result<(T, String), String> {
    use std::io::Write;
    let folder = crate::upload::folder(&crate::daemon::private_state_dir(state_dir)?)?;
    let path = RemovedAfter(folder.join(format!(".{what}-{service}-{}", std::process::id()).replace(' ', "-")));
    let failed = |e: std::io::Error| format!("cannot write {}: {e}", path.0.display());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path.0)
        .map_err(failed)?;
    let mut buffered = std::io::BufWriter::new(file);
    let mut hashing = source::HashingWriter { inner: &mut buffered, hasher: sha2::Sha256::default() };
    let written = write(&mut hashing).map_err(|e| format!("service `{service}`: {e}"))?;
    let sha = tug_proto::auth::hex(&sha2::Digest::finalize(hashing.hasher));
    buffered.flush().map_err(failed)?;
    let bytes = std::fs::metadata(&path.0).map_err(failed)?.len();
    eprintln!("{service}: sending its {what} ({})", crate::run::format_bytes(bytes));
    client.upload(&path.0, &sha, UPLOAD_ANSWER).map_err(|e| format!("service `{service}`: sending its {what}: {e}"))?;
    Ok((written, sha))
}

/// A file removed when this goes, on every path out.
struct RemovedAfter(PathBuf);

impl Drop for RemovedAfter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends `service`'s build context to the remote daemon, which builds the image there.
fn send_context(
    client: &Client,
    service: &str,
    container: &tug_stackfile::model::Container,
    build: &tug_stackfile::model::Build,
    state_dir: &Path,
) -> Result<HostBuild, String> {
    let request = tug_engine::BuildRequest {
        context: build.context.clone(),
        dockerfile: build.dockerfile.clone(),
        ..tug_engine::BuildRequest::new(&build.context, &container.image)
    };
    let (dockerfile, upload) = send_file(client, state_dir, (service, "build context"), |out| {
        tug_engine::write_context(&request, out).map_err(|e| e.to_string())
    })?;
    let args = build.args.iter().map(|(k, v)| (k.clone(), crate::run::value(v))).collect();
    Ok(HostBuild { upload, dockerfile, args, target: build.target.clone() })
}

/// The engine the stack's `engine` names, as a URL (`None`: the daemon's own).
fn named_engine(stack: &Stack) -> Result<Option<String>, String> {
    let Some(named) = &stack.engine else { return Ok(None) };
    let endpoint = tug_engine::resolve_endpoint(Some(named), None, None).map_err(|e| format!("engine: {e}"))?;
    Ok(Some(endpoint.url()))
}

/// How long the daemon may take to answer an upload once it is sent: it writes the last of it
/// to disk (a sync of up to 4 GiB) and renames it.
const UPLOAD_ANSWER: std::time::Duration = std::time::Duration::from_secs(600);

/// What a remote daemon must resolve on its host for `wanted` to start: every image (pulled
/// for the services that start, looked up for the others) and the named volumes they mount.
pub fn for_host(stack: &Stack, wanted: &[String], artifacts: &Artifacts) -> HostArtifacts {
    let images = stack
        .services
        .iter()
        .filter_map(|(name, service)| {
            let container = service.container.as_ref()?;
            let image = HostImage {
                pull: container.pull,
                built: container.build.is_some(),
                start: wanted.contains(name),
                build: None,
            };
            Some((name.clone(), image))
        })
        .collect();
    let sources = artifacts
        .sources
        .iter()
        .map(|(name, snapshot)| (name.clone(), HostSource { digest: snapshot.digest.clone(), upload: None }))
        .collect();
    HostArtifacts { images, volumes: named_volumes(stack, wanted), sources, root: stack.root.clone() }
}

/// This host as the daemon sees it: its state folder and the folder of the stack it runs.
pub struct ThisHost {
    pub state_dir: PathBuf,
    pub root: PathBuf,
    /// Where the steps of builds go as they run (`artifacts::build_step`: none that holds a
    /// secret), for a client that asked to see them; a line that finds it full is dropped rather
    /// than slow the build.
    pub build_output: Option<tokio::sync::mpsc::Sender<String>>,
}

/// A remote client's `PUT /v1/stack` or `POST /v1/plan` made whole on this host (see
/// [`resolve_on_host`]); a request without `on_host` (the local CLI resolved everything)
/// passes unchanged.
pub async fn complete_up(mut request: UpRequest, host: ThisHost, plan: bool) -> Result<UpRequest, String> {
    let Some(on_host) = request.on_host.take() else { return Ok(request) };
    let spec = &mut request.spec;
    spec.root = host.root.clone();
    resolve_on_host(&spec.project, &mut spec.engine, &mut spec.services, &on_host, &host, plan).await?;
    Ok(request)
}

/// [`complete_up`] for a one-off run (`tug run`).
pub async fn complete_run(mut request: RunRequest, host: ThisHost) -> Result<RunRequest, String> {
    let Some(on_host) = request.on_host.take() else { return Ok(request) };
    let services = std::slice::from_mut(&mut request.service);
    resolve_on_host(&request.project, &mut request.engine, services, &on_host, &host, false).await?;
    Ok(request)
}

/// On the daemon, for a remote client's request (`on_host`): makes the source copies it sent
/// (or finds those this host has), moves paths inside the client's stack folder into this
/// host's, resolves its images on this host's engine (built from a context it sent, pulled as
/// their `pull` says, or only looked up with `lookup_only`, for a plan) and creates its
/// volumes. Fills in the services' copies, image ids and so their revisions, and, when the
/// stack names none, this host's engine. The uploads it names are removed, used or not.
async fn resolve_on_host(
    project: &str,
    engine: &mut Option<String>,
    services: &mut [ServiceSpec],
    on_host: &HostArtifacts,
    host: &ThisHost,
    lookup_only: bool,
) -> Result<(), String> {
    let started = std::time::SystemTime::now();
    let resolved = async {
        well_formed(services, on_host)?;
        sources_on_this_host(services, &on_host.sources, &host.state_dir, lookup_only).await?;
        for service in services.iter_mut() {
            paths_onto_this_host(service, &on_host.root, &host.root);
        }
        images_on_this_host(project, engine, services, on_host, host, lookup_only).await
    }
    .await;
    // The copies' paths and the image ids are part of the revisions: the client could not know them.
    for service in services.iter_mut() {
        service.revision = service.compute_revision();
    }
    // After every service's step: two services may share one upload (one source folder). One
    // sent again since this request began is another deploy's now (same content, same name).
    for (_, upload) in on_host.uploads().filter(|(_, u)| crate::upload::valid_digest(u)) {
        let file = crate::upload::path_of(&host.state_dir, upload);
        if std::fs::metadata(&file).and_then(|m| m.modified()).is_ok_and(|t| t <= started) {
            let _ = std::fs::remove_file(file);
        }
    }
    resolved
}

/// Names that become paths here are checked before any is used: service names (folders of
/// copies), source digests (a copy's folder), uploads (files).
fn well_formed(services: &[ServiceSpec], on_host: &HostArtifacts) -> Result<(), String> {
    let named = services.iter().map(|s| &s.name).chain(on_host.sources.keys()).chain(on_host.images.keys());
    if let Some(name) = named.into_iter().find(|n| !tug_supervisor::is_service_name(n)) {
        return Err(format!("`{name}` is not a valid service name"));
    }
    if let Some((name, source)) = on_host.sources.iter().find(|(_, s)| !source::is_digest(&s.digest)) {
        return Err(format!("service `{name}`: `{}` is not a source's digest", source.digest));
    }
    match on_host.uploads().find(|(_, upload)| !crate::upload::valid_digest(upload)) {
        Some((name, upload)) => Err(format!("service `{name}`: `{upload}` does not name an upload")),
        None => Ok(()),
    }
}

async fn images_on_this_host(
    project: &str,
    engine: &mut Option<String>,
    services: &mut [ServiceSpec],
    on_host: &HostArtifacts,
    host: &ThisHost,
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
        let who = (project, service.name.as_str());
        match image_on_this_host(&engine, who, &container.image, wanted, (host, lookup_only)).await {
            Ok(Some(info)) => {
                container.image_id = info.id;
                container.image_user = info.user;
            }
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }
    }
    if !lookup_only {
        let state = host.state_dir.display().to_string();
        problems.extend(create_volumes(&engine, project, &on_host.volumes, &state).await);
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// Paths inside the client's stack folder (`from`) name the same paths inside this host's
/// (`to`): the service's `working_dir` (unless it runs from a source's copy) and its bind mounts.
fn paths_onto_this_host(service: &mut ServiceSpec, from: &Path, to: &Path) {
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
    services: &mut [ServiceSpec],
    sent: &std::collections::BTreeMap<String, HostSource>,
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

/// The copy of a source a client sent (unpacked from its upload) or one this host has.
async fn copy_on_this_host(service: &str, sent: &HostSource, state_dir: &Path) -> Result<PathBuf, String> {
    let Some(upload) = &sent.upload else {
        return source::existing(service, &sent.digest, state_dir).map(|s| s.copy).ok_or_else(|| {
            format!("service `{service}`: this host no longer has the copy of its source; run the command again")
        });
    };
    let file = crate::upload::path_of(state_dir, upload);
    let (name, state) = (service.to_string(), state_dir.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || {
        let opened = std::fs::File::open(&file)
            .map_err(|e| format!("service `{name}`: its source was not uploaded ({e}); run the command again"))?;
        source::unpack_bundle(&name, &mut std::io::BufReader::new(opened), &state)
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

/// A remote client's image as this host's engine has it: built from the context it sent, or
/// pulled as `pull` says, when the service starts; otherwise only looked up.
async fn image_on_this_host(
    engine: &tug_engine::Engine,
    (project, service): (&str, &str),
    image: &str,
    wanted: &HostImage,
    (host, lookup_only): (&ThisHost, bool),
) -> Result<Option<tug_engine::ImageInfo>, String> {
    let looked_up = |e: tug_engine::Error| format!("service `{service}`: cannot look up the image `{image}`: {e}");
    if let Some(build) = wanted.build.as_ref().filter(|_| wanted.start && !lookup_only) {
        let id = build_on_this_host(engine, (project, service), image, build, host).await?;
        return engine.inspect_image(&id).await.map_err(looked_up);
    }
    let present = engine.inspect_image(image).await.map_err(looked_up)?;
    if lookup_only || !wanted.start {
        return Ok(present);
    }
    if wanted.built {
        // A client that sent no context: the tag as this engine has it.
        return present.map(Some).ok_or_else(|| {
            format!(
                "service `{service}` builds `{image}`, and the request sent no build context: run the command \
                 again with this version of `tug`"
            )
        });
    }
    let id = pulled_or_present(engine, service, image, wanted.pull, present).await?;
    engine.inspect_image(&id).await.map_err(looked_up)
}

/// Builds `image` on this host's engine from the context a client uploaded (removed after).
async fn build_on_this_host(
    engine: &tug_engine::Engine,
    (project, service): (&str, &str),
    image: &str,
    build: &HostBuild,
    host: &ThisHost,
) -> Result<String, String> {
    let archive = crate::upload::path_of(&host.state_dir, &build.upload);
    if !archive.is_file() {
        return Err(format!("service `{service}`: its build context was not uploaded; run the command again"));
    }
    let request = tug_engine::BuildRequest {
        dockerfile: Some(build.dockerfile.clone()),
        args: build.args.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect(),
        target: build.target.clone(),
        labels: vec![(PROJECT_LABEL.to_string(), project.to_string())],
        ..tug_engine::BuildRequest::new(PathBuf::new(), image)
    };
    tug_supervisor::log::info(
        &format!("building {image} from the context a remote `tug` sent"),
        &[("service", service)],
    );
    // The build's own lines stay out of the log: a build argument from a secret can show there.
    // Its steps go to a client that asked for them, as a local build shows them.
    let secrets: Vec<&str> = build.args.iter().filter(|(_, v)| v.sensitive).map(|(_, v)| v.value.as_str()).collect();
    let mut progress = |line: &str| {
        if let (Some(output), Some(step)) = (&host.build_output, super::build_step(line, &secrets)) {
            let _ = output.try_send(format!("{service}: {step}\n"));
        }
    };
    let built = engine.build_archive(&request, &archive, &mut progress).await;
    built.map_err(|e| super::masked(format!("service `{service}`: {e}"), secrets.iter().copied()))
}

/// [`resolve_for_plan`] for a remote daemon: the sources digested; the daemon looks the
/// images up on its own engine ([`resolve_on_host`]).
pub fn resolve_for_remote_plan(stack: &Stack, state_dir: &Path) -> Result<Artifacts, String> {
    let mut artifacts = digests(stack, None, state_dir)?;
    artifacts.engine = named_engine(stack)?;
    Ok(artifacts)
}
