//! What a revision is made of, resolved before anything starts: the image id of every service
//! that runs an image (pulled or built as its `pull` and `build` say), and the copy of every
//! process service's `source`. Both go into the spec, so they are part of the revision: a
//! rebuilt `:dev` tag or an edited file is a change that `deploy` rolls out.
//!
//! Everything that can fail here (an unreachable engine, a missing image, a failed build, a
//! volume the engine refuses) fails `up` and `deploy` before the daemon is asked to change
//! anything, with the service, the image and what to do. For a daemon on another host, its
//! engine and its state folder: [`remote`].

use std::collections::HashMap;
use std::path::Path;

use tug_stackfile::Stack;
use tug_stackfile::model::{Pull, VolumeMount};

use crate::client::Client;
use crate::source::{self, Snapshot};

pub mod remote;

pub use remote::{ThisHost, complete_run, complete_up, for_host, resolve_for_remote_plan};

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
pub(crate) fn endpoint_named(named: Option<&str>) -> Result<tug_engine::Endpoint, String> {
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

/// [`resolve`], or for a `remote` daemon [`remote::resolve`]: its sources and build contexts
/// sent, and what the daemon must resolve on its host.
pub fn resolve_here_or_there(
    stack: &Stack,
    wanted: &[String],
    state_dir: &Path,
    remote: Option<&Client>,
) -> Result<(Artifacts, Option<tug_proto::spec::HostArtifacts>), String> {
    match remote {
        Some(client) => remote::resolve(client, stack, wanted, state_dir).map(|(a, h)| (a, Some(h))),
        None => Ok((resolve(stack, wanted, state_dir)?, None)),
    }
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

/// The line of a build's output worth showing: a step (`Step 2/5 : RUN …`), unless it holds
/// one of `secrets` (a build argument from a secret), which is then not shown at all. A secret
/// of several lines is looked for a line at a time, as the output comes.
fn build_step<'a>(line: &'a str, secrets: &[&str]) -> Option<&'a str> {
    let holds_a_secret =
        secrets.iter().flat_map(|s| s.lines()).any(|part| !part.trim().is_empty() && line.contains(part));
    (line.starts_with("Step ") && !holds_a_secret).then_some(line.trim_end())
}

/// `message` with every (non-empty) secret in it masked: a build's output can show a build
/// argument from a secret.
fn masked<'a>(message: String, secrets: impl Iterator<Item = &'a str>) -> String {
    secrets.filter(|s| !s.is_empty()).fold(message, |text, secret| text.replace(secret, tug_stackfile::model::MASK))
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
        // A build argument from a secret can show in the build's output: never in tug's.
        let secrets: Vec<&str> =
            build.args.values().filter(|v| v.sensitive && !v.expose().is_empty()).map(|v| v.expose()).collect();
        let mut progress = |line: &str| {
            if let Some(step) = build_step(line, &secrets) {
                eprintln!("{service}: {step}");
            }
        };
        let id = engine
            .build(&request, &mut progress)
            .await
            .map_err(|e| masked(format!("service `{service}`: {e}"), secrets.iter().copied()))?;
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

/// On the daemon, for a remote `down --volumes`: the named volumes this stack created on its
/// engine (labelled with its state folder), which it removes once everything stopped.
pub async fn volumes_to_remove(supervisor: &tug_supervisor::Supervisor) -> Result<Vec<String>, String> {
    let Some(engine) = daemon_engine(supervisor)? else { return Ok(Vec::new()) };
    let state = supervisor.config().state_dir.display().to_string();
    engine.list_volumes(&[(STATE_DIR_LABEL, &state)]).await.map_err(|e| format!("the stack's volumes: {e}"))
}

/// [`volumes_to_remove`], removed; what cannot be is logged (the client has gone by then).
pub async fn remove_volumes_here(supervisor: &tug_supervisor::Supervisor) {
    let (Ok(Some(engine)), Ok(names)) = (daemon_engine(supervisor), volumes_to_remove(supervisor).await) else {
        tug_supervisor::log::warn("down --volumes: the stack's volumes could not be listed", &[]);
        return;
    };
    for name in names {
        match engine.remove_volume(&name).await {
            Ok(()) => tug_supervisor::log::info("down --volumes: removed the volume", &[("volume", &name)]),
            Err(e) => tug_supervisor::log::warn(&format!("down --volumes: {e}"), &[("volume", &name)]),
        }
    }
}

fn daemon_engine(supervisor: &tug_supervisor::Supervisor) -> Result<Option<tug_engine::Engine>, String> {
    let Some(url) = supervisor.engine() else { return Ok(None) };
    let endpoint = tug_engine::resolve_endpoint(Some(&url), None, None).map_err(|e| e.to_string())?;
    Ok(Some(tug_engine::Engine::new(endpoint)))
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

#[cfg(test)]
mod tests {
    use super::build_step;

    #[test]
    fn a_build_shows_its_steps_but_never_one_that_holds_a_secret() {
        let secrets = ["hunter2-token", ""];
        assert_eq!(build_step("Step 2/5 : RUN make\n", &secrets), Some("Step 2/5 : RUN make"));
        assert_eq!(build_step(" ---> Running in 3f2a\n", &secrets), None);
        assert_eq!(build_step("Step 3/5 : RUN test \"$T\" = hunter2-token", &secrets), None);
        // An empty secret hides nothing; one of several lines hides a step with any of them.
        assert_eq!(build_step("Step 1/5 : FROM scratch", &[""]), Some("Step 1/5 : FROM scratch"));
        assert_eq!(build_step("Step 4/5 : RUN echo line-two", &["line-one\nline-two\n"]), None);
    }
}
