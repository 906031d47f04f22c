//! `tug backup` and `tug restore`, and the daemon's side of both (and of scheduled backups).
//!
//! A backup is one archive (`archive.rs`) of the state folder's files that a restore needs
//! (the secret store, the rollout history, the API key that seals it) and of each service's
//! dump (`backup.command`, run in a ready instance by the daemon). A restore checks the whole
//! archive before it changes anything, puts the files back into a stack that is down, starts
//! the services whose dumps it holds, feeds each dump to the service's `backup.restore`, then
//! starts the rest.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tug_proto::{ArchiveKey, BackupEntry, BackupRequest, BackupResponse, RestoreRequest, RestoreResponse};
use tug_secrets::Store;
use tug_supervisor::{ExecEvent, Supervisor};
use zeroize::Zeroizing;

use crate::StackArgs;
use crate::archive::{self, Entry, Header, Item, Reader, Writer};
use crate::run::{self, UpOptions};

/// The state folder's files an archive carries. `secrets.key` is not one: it opens the archive.
pub const STATE_FILES: [&str; 3] = [Store::FILE, "rollouts.json", tug_proto::auth::KEY_FILE];
/// A state file larger than this is not the stack's (the store and the history are small).
const MAX_STATE_FILE: u64 = 64 << 20;
/// A backup or a restore takes what its dumps take.
const LONG: Duration = Duration::from_secs(24 * 3600);
/// The last bytes of a dump command's standard error quoted when it fails.
const STDERR_TAIL: usize = 2048;

/// The archive key as a request carries it.
fn archive_key(key: &[u8; 32]) -> ArchiveKey {
    ArchiveKey(tug_proto::auth::hex(key))
}

fn key_from_hex(key: &ArchiveKey) -> Result<Zeroizing<[u8; 32]>, String> {
    let bytes = Zeroizing::new(tug_proto::auth::unhex(&key.0).unwrap_or_default());
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| "the archive key is not 64 hex digits")?;
    Ok(Zeroizing::new(key))
}

// ---------------------------------------------------------------------------------------------
// The daemon's side.

/// What is wrong with a `POST /v1/backup` request on its face (a 400), before anything runs.
pub fn check_backup_request(supervisor: &Supervisor, request: &BackupRequest) -> Result<(), String> {
    if let Some(key) = &request.key {
        key_from_hex(key).map_err(|why| format!("key: {why}"))?;
    }
    if let Some(problem) = request.out.as_deref().and_then(|out| archive_path_problem("out", out)) {
        return Err(problem);
    }
    let backed_up: Vec<String> = supervisor.backed_up().into_iter().map(|b| b.service).collect();
    match request.services.iter().find(|s| !backed_up.contains(s)) {
        Some(service) => Err(format!("services: `{service}` has no `backup` in the stack file")),
        None => Ok(()),
    }
}

/// What is wrong with a `POST /v1/restore` request on its face (a 400), before anything runs.
pub fn check_restore_request(request: &RestoreRequest) -> Result<(), String> {
    key_from_hex(&request.key).map_err(|why| format!("key: {why}"))?;
    archive_path_problem("file", &request.file).map_or(Ok(()), Err)
}

/// Why `path` (the request's `field`) cannot name an archive on the daemon's host, if it cannot.
fn archive_path_problem(field: &str, path: &Path) -> Option<String> {
    if path.as_os_str().is_empty() {
        Some(format!("{field} is empty: give the archive's absolute path on the daemon's host"))
    } else if !path.is_absolute() {
        Some(format!("{field} {}: the archive's path must be absolute (it is on the daemon's host)", path.display()))
    } else if path.file_name().is_none() {
        Some(format!("{field} {}: name the archive's file, not a folder", path.display()))
    } else {
        None
    }
}

/// `POST /v1/backup` (the request passed [`check_backup_request`]): the archive, written
/// beside `out` and renamed into place once whole.
pub async fn write_archive(
    supervisor: &Supervisor,
    state_dir: &Path,
    request: BackupRequest,
) -> Result<BackupResponse, String> {
    let key = match &request.key {
        Some(key) => key_from_hex(key)?,
        None => own_key(state_dir)?,
    };
    let services = if request.services.is_empty() {
        supervisor.backed_up().into_iter().map(|b| b.service).collect()
    } else {
        request.services.clone()
    };
    let out = match request.out.clone() {
        Some(out) => out,
        None => backups_folder(supervisor)?.join(default_name(&supervisor.project(), None)),
    };
    let partial = out.with_file_name(format!(
        ".{}.partial-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("backup"),
        std::process::id()
    ));
    let header = Header {
        project: supervisor.project(),
        created: tug_logs::format_time(SystemTime::now()),
        key_id: archive::key_id(&key),
        archive: archive::random_id(),
        services: services.clone(),
    };
    let written = write_to(supervisor, state_dir, &key, &header, &partial).await;
    let (bytes, entries) = match written {
        Ok(done) => done,
        Err(why) => {
            let _ = std::fs::remove_file(&partial);
            return Err(why);
        }
    };
    std::fs::rename(&partial, &out).map_err(|e| format!("{}: cannot write the archive: {e}", out.display()))?;
    if let Some(dir) = out.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    tug_supervisor::log::info(&format!("backup written: {} ({bytes} bytes)", out.display()), &[]);
    Ok(BackupResponse { file: out, bytes, entries })
}

async fn write_to(
    supervisor: &Supervisor,
    state_dir: &Path,
    key: &[u8; 32],
    header: &Header,
    partial: &Path,
) -> Result<(u64, Vec<BackupEntry>), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| format!("{}: {e}", partial.display());
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(partial).map_err(io)?;
    let mut writer = Writer::new(BufWriter::new(file), key, header).map_err(io)?;
    let mut entries = Vec::new();
    for name in STATE_FILES {
        let path = state_dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.len() > MAX_STATE_FILE {
            return Err(format!("{}: {} bytes is more than a state file holds", path.display(), meta.len()));
        }
        let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?);
        writer.begin(&Entry::File(name.to_string())).map_err(io)?;
        writer.data(&bytes).map_err(io)?;
        writer.end().map_err(io)?;
        entries.push(BackupEntry { entry: format!("file:{name}"), bytes: bytes.len() as u64 });
    }
    let (engine, volumes) = supervisor.volumes();
    if !volumes.is_empty() {
        let engine = engine_at(engine.as_deref())?;
        for (volume, image) in &volumes {
            writer.begin(&Entry::Volume(volume.clone())).map_err(io)?;
            let size = copy_volume_out(&engine, state_dir, volume, image, &mut writer).await?;
            writer.end().map_err(io)?;
            entries.push(BackupEntry { entry: format!("volume:{volume}"), bytes: size });
        }
    }
    for service in &header.services {
        let mut events = supervisor.dump(service).map_err(|e| e.to_string())?;
        writer.begin(&Entry::Dump(service.clone())).map_err(io)?;
        let mut size = 0u64;
        let mut written = Ok(());
        let mut keep = |chunk: &[u8]| {
            if written.is_ok() {
                size += chunk.len() as u64;
                written = writer.data(chunk).map_err(io);
            }
        };
        command_ended(service, "backup", &mut events, Some(&mut keep)).await?;
        written?;
        writer.end().map_err(io)?;
        entries.push(BackupEntry { entry: format!("dump:{service}"), bytes: size });
    }
    let (bytes, out) = writer.finish().map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok((bytes, entries))
}

/// Where a volume is mounted in the helper container its files are copied through.
const VOLUME_MOUNT: &str = "/tug-volume";

fn engine_at(url: Option<&str>) -> Result<tug_engine::Engine, String> {
    let endpoint = tug_engine::resolve_endpoint(url, None, None).map_err(|e| format!("the container engine: {e}"))?;
    Ok(tug_engine::Engine::new(endpoint))
}

/// A container of `image` with `volume` mounted, created and never started: the engine copies
/// files in and out of a stopped container. Labelled with the state folder, so one a crash
/// left is removed with the stack's containers.
async fn helper(
    engine: &tug_engine::Engine,
    state_dir: &Path,
    volume: &str,
    image: &str,
    read_only: bool,
) -> Result<String, String> {
    let mut config = tug_engine::ContainerConfig::new(image);
    config.cmd = Some(vec!["true".into()]);
    config.mounts.push(tug_engine::Mount {
        kind: tug_engine::MountKind::Volume,
        source: volume.to_string(),
        target: VOLUME_MOUNT.to_string(),
        read_only,
    });
    config.labels.push((crate::artifacts::STATE_DIR_LABEL.to_string(), state_dir.display().to_string()));
    let name = format!("tug-backup-{}", &archive::random_id()[..12]);
    engine.create_container(&name, &config).await.map_err(|e| format!("volume `{volume}`: {e}"))
}

/// The volume's files as the engine's tar, into the archive; its size.
async fn copy_volume_out<W: Write>(
    engine: &tug_engine::Engine,
    state_dir: &Path,
    volume: &str,
    image: &str,
    writer: &mut Writer<W>,
) -> Result<u64, String> {
    let id = helper(engine, state_dir, volume, image, true).await?;
    let (tx, mut rx) = mpsc::channel(8);
    let download = {
        let (engine, id) = (engine.clone(), id.clone());
        tokio::spawn(async move { engine.download_folder(&id, VOLUME_MOUNT, tx).await })
    };
    let mut size = 0u64;
    let mut failed = None;
    while let Some(chunk) = rx.recv().await {
        size += chunk.len() as u64;
        if let Err(e) = writer.data(&chunk) {
            failed = Some(format!("writing the archive: {e}"));
            break;
        }
    }
    drop(rx);
    let downloaded = download.await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
    let _ = engine.remove_container(&id, true).await;
    if let Some(why) = failed {
        return Err(why);
    }
    downloaded.map_err(|e| format!("volume `{volume}`: {e}"))?;
    Ok(size)
}

/// `POST /v1/restore`: each dump of the archive, fed to its service's `backup.restore`. The
/// files were put back by the CLI before the daemon started.
pub async fn load_archive(supervisor: &Supervisor, request: RestoreRequest) -> Result<RestoreResponse, String> {
    let key = key_from_hex(&request.key)?;
    let path = request.file.clone();
    let shown = path.display().to_string();
    let file = std::fs::File::open(&path).map_err(|e| format!("{shown}: {e}"))?;
    let mut input = BufReader::new(file);
    let (header, line) = archive::read_header(&mut input).map_err(|e| format!("{shown}: {e}"))?;
    if header.project != supervisor.project() {
        return Err(format!("{shown} is a backup of `{}`, not of `{}`", header.project, supervisor.project()));
    }
    let mut reader = Reader::new(input, &key, &header, &line).map_err(|e| format!("{shown}: {e}"))?;
    let mut loaded = Vec::new();
    let mut feeding: Option<Feeding> = None;
    while let Some(item) = reader.next_item().map_err(|e| format!("{shown}: {e}"))? {
        match item {
            Item::Begin(Entry::Dump(service)) => {
                let (tx, rx) = mpsc::channel(8);
                let events = supervisor.load(&service, rx).map_err(|e| e.to_string())?;
                let ended = tokio::spawn(restore_ended(service.clone(), events));
                feeding = Some(Feeding { input: tx, service, size: 0, ended });
            }
            Item::Begin(Entry::File(_) | Entry::Volume(_)) | Item::End if feeding.is_none() => {}
            Item::Data(bytes) => {
                if let Some(f) = feeding.as_mut() {
                    f.size += bytes.len() as u64;
                    if f.input.send(bytes.to_vec()).await.is_err() {
                        return Err(format!("`{}`: its restore command stopped reading", f.service));
                    }
                }
            }
            Item::End => {
                if let Some(Feeding { input, service, size, ended }) = feeding.take() {
                    drop(input);
                    ended.await.map_err(|e| e.to_string())??;
                    loaded.push(BackupEntry { entry: format!("dump:{service}"), bytes: size });
                }
            }
            Item::Begin(Entry::File(_) | Entry::Volume(_)) => {}
        }
    }
    Ok(RestoreResponse { loaded })
}

/// The dump being fed to its service's restore command.
struct Feeding {
    input: mpsc::Sender<Vec<u8>>,
    service: String,
    size: u64,
    /// How the command ended.
    ended: tokio::task::JoinHandle<Result<(), String>>,
}

/// How a restore command ended: Ok on exit status 0, else what it said.
async fn restore_ended(service: String, mut events: mpsc::Receiver<ExecEvent>) -> Result<(), String> {
    command_ended(&service, "restore", &mut events, None).await
}

/// Where a backup command's standard output (the dump) goes.
type StdoutSink<'a> = dyn FnMut(&[u8]) + Send + 'a;

/// Follows a `which` (backup or restore) command to its end: its standard output to `stdout`
/// when given, the last of the rest kept for the message when it fails (an exit status not 0,
/// or none).
async fn command_ended(
    service: &str,
    which: &str,
    events: &mut mpsc::Receiver<ExecEvent>,
    mut stdout: Option<&mut StdoutSink<'_>>,
) -> Result<(), String> {
    let mut said: Vec<u8> = Vec::new();
    let ended = loop {
        match events.recv().await {
            Some(ExecEvent::Output(tug_logs::Stream::Out, chunk)) if stdout.is_some() => {
                if let Some(keep) = stdout.as_mut() {
                    keep(&chunk);
                }
            }
            Some(ExecEvent::Output(_, chunk)) => {
                said.extend_from_slice(&chunk);
                let extra = said.len().saturating_sub(STDERR_TAIL);
                said.drain(..extra);
            }
            Some(ExecEvent::Exit(code)) => break Ok(code),
            Some(ExecEvent::Failed(why)) => break Err(why),
            None => break Err("it ended without an exit status".into()),
        }
    };
    let said = String::from_utf8_lossy(&said).trim().to_string();
    match ended {
        Ok(0) => Ok(()),
        Ok(code) => Err(format!("`{service}`: its {which} command exited with {code}: {said}")),
        Err(why) => Err(format!("`{service}`: its {which} command {why}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI's side.

/// The secrets key's store: TUG_SECRETS_KEY, a key file given, or the state folder's own.
fn open_store(state_dir: &Path, key_file: Option<&Path>) -> Result<Option<Store>, String> {
    let given = match key_file {
        Some(path) => Some(Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--key-file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        )),
        None => crate::stack::secrets_key_env().map(Zeroizing::new),
    };
    Store::open(state_dir, given.as_deref().map(String::as_str)).map_err(|e| e.to_string())
}

/// `tug backup [--out FILE] [SERVICE...]`.
pub fn backup(args: &StackArgs, out: Option<PathBuf>, services: Vec<String>) -> Result<ExitCode, String> {
    let loaded = crate::stack::load(args)?;
    let stack = crate::secrets::require_valid(&loaded.compiled)?;
    for service in &services {
        match stack.services.get(service) {
            Some(s) if s.backup.is_some() => {}
            Some(_) => return Err(format!("`{service}` has no `backup` in the stack file")),
            None => return Err(format!("no service named `{service}`")),
        }
    }
    let client = run::running_client(args)?;
    if let Some(host) = &args.host {
        return backup_on_host(&client, host, out, services);
    }
    let store = crate::stack::store_for_writing(loaded.store, &loaded.state_dir)?;
    let key = store.derived_key(archive::KEY_PURPOSE);
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let out = match out {
        Some(path) => cwd.join(path),
        None => {
            let dir = stack.root.join("backups");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            dir.join(default_name(&stack.name, None))
        }
    };
    let request = BackupRequest { out: Some(out), services, key: Some(archive_key(&key)) };
    let answer: BackupResponse = client.send("POST", "/v1/backup", &request, LONG)?;
    println!("{}", answer.file.display());
    eprintln!(
        "wrote {}; it opens with this stack's secrets key ({}): keep a copy of that key away from this host",
        written(&answer),
        store.key_description()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tug --host URL backup`: the archive is written on that host (in its stack's `backups/`,
/// or at an absolute `--out` there), sealed with that host's secrets key, which this machine
/// does not have.
fn backup_on_host(
    client: &crate::client::Client,
    host: &str,
    out: Option<PathBuf>,
    services: Vec<String>,
) -> Result<ExitCode, String> {
    if let Some(path) = out.as_ref().filter(|p| !p.is_absolute()) {
        return Err(format!("--out {}: the archive is written on {host}: give an absolute path there", path.display()));
    }
    let request = BackupRequest { out, services, key: None };
    let answer: BackupResponse = client.send("POST", "/v1/backup", &request, LONG)?;
    println!("{}", answer.file.display());
    eprintln!(
        "wrote {} on {host}; it opens with that host's secrets key (its .tug/{}): keep a copy of that key away from it",
        written(&answer),
        Store::KEY_FILE
    );
    Ok(ExitCode::SUCCESS)
}

/// `FILE (N bytes): entry (N bytes), …`.
fn written(answer: &BackupResponse) -> String {
    let parts: Vec<String> = answer.entries.iter().map(|e| format!("{} ({} bytes)", e.entry, e.bytes)).collect();
    format!("{} ({} bytes): {}", answer.file.display(), answer.bytes, parts.join(", "))
}

/// `<project>[-<service>]-<UTC time>.tug-backup`.
pub fn default_name(project: &str, service: Option<&str>) -> String {
    let time = tug_logs::format_time(SystemTime::now()).replace([':', '.'], "").replace('-', "");
    let stamp = time.get(..15).unwrap_or(&time);
    match service {
        Some(service) => format!("{project}-{service}-{stamp}Z.{}", archive::EXTENSION),
        None => format!("{project}-{stamp}Z.{}", archive::EXTENSION),
    }
}

/// `tug restore FILE [--key-file KEY]`.
pub fn restore(args: &StackArgs, file: &Path, key_file: Option<&Path>, insecure: bool) -> Result<ExitCode, String> {
    if let Some(host) = &args.host {
        // The state folder and the volumes it puts back are that host's, not this machine's.
        return Err(format!(
            "restore puts the stack's state folder and volumes back where the stack runs: copy {} to {host} \
             and run `tug restore` there",
            file.display()
        ));
    }
    let loaded = crate::stack::load(args)?;
    let project = match &loaded.compiled.stack {
        Some(stack) => stack.name.clone(),
        None => crate::secrets::require_valid(&loaded.compiled).map(|s| s.name.clone())?,
    };
    let state_dir = loaded.state_dir.clone();
    let shown = file.display().to_string();
    let store = open_store(&state_dir, key_file)?.ok_or_else(|| {
        format!(
            "{shown} is sealed with the secrets key of the stack it came from, and there is none here: give it \
             with --key-file FILE (a copy of that stack's .tug/secrets.key) or TUG_SECRETS_KEY"
        )
    })?;
    let key = store.derived_key(archive::KEY_PURPOSE);
    // First the whole archive is checked: nothing changes for one that is not whole.
    let (header, entries) = verify(file, &key, &project)?;
    if let Ok(client) = run::running_client(args)
        && client.get::<serde_json::Value>("/v1/status", Duration::from_secs(5)).is_ok()
    {
        return Err("the stack is running: `tug down` first; restore puts its state back, then starts it".into());
    }
    let state_dir = crate::daemon::private_state_dir(&state_dir)?;
    put_back_files(file, &key, &state_dir)?;
    if let Some(path) = key_file
        && !state_dir.join(Store::KEY_FILE).exists()
    {
        // The restored store opens with the key it was restored with, from now on here too.
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?);
        let line = Zeroizing::new(format!("{}\n", text.trim()));
        write_private(&state_dir.join(Store::KEY_FILE), line.as_bytes())?;
    }
    let files: Vec<&BackupEntry> = entries.iter().filter(|e| e.entry.starts_with("file:")).collect();
    eprintln!(
        "restored {}: {}",
        state_dir.display(),
        files.iter().map(|e| e.entry.trim_start_matches("file:")).collect::<Vec<_>>().join(", ")
    );
    if entries.iter().any(|e| e.entry.starts_with("volume:")) {
        let stack = crate::secrets::require_valid(&loaded.compiled)?;
        put_back_volumes(stack, file, &key, &state_dir)?;
        for entry in entries.iter().filter(|e| e.entry.starts_with("volume:")) {
            eprintln!("restored {} ({} bytes)", entry.entry, entry.bytes);
        }
    }
    let quiet_up = |services: Vec<String>| {
        let options = UpOptions {
            detach: true,
            advertise: None,
            listen: None,
            insecure,
            services,
            timeout: None,
            deploy: false,
            no_wait: false,
            quiet: true,
        };
        run::up(args, options)
    };
    if !header.services.is_empty() {
        let code = quiet_up(header.services.clone())?;
        if code != ExitCode::SUCCESS {
            return Err("the services to restore did not start: nothing was loaded (see `tug ps`)".into());
        }
        let client = run::running_client(args)?;
        let request =
            RestoreRequest { file: std::env::current_dir().unwrap_or_default().join(file), key: archive_key(&key) };
        let answer: RestoreResponse = client.send("POST", "/v1/restore", &request, LONG)?;
        for entry in &answer.loaded {
            eprintln!("loaded {} ({} bytes)", entry.entry, entry.bytes);
        }
    }
    let code = quiet_up(Vec::new())?;
    eprintln!("{project} restored from {shown} (made {})", header.created);
    Ok(code)
}

/// Reads the whole archive with `key`: its header and what it holds, or why it cannot be
/// restored here.
fn verify(file: &Path, key: &[u8; 32], project: &str) -> Result<(Header, Vec<BackupEntry>), String> {
    let shown = file.display().to_string();
    let opened = std::fs::File::open(file).map_err(|e| format!("{shown}: {e}"))?;
    let mut input = BufReader::new(opened);
    let (header, line) = archive::read_header(&mut input).map_err(|e| format!("{shown}: {e}"))?;
    if header.project != project {
        return Err(format!(
            "{shown} is a backup of the project `{}`, and this stack is `{project}`: nothing was restored",
            header.project
        ));
    }
    let mut reader = Reader::new(input, key, &header, &line).map_err(|e| format!("{shown}: {e}"))?;
    let mut entries: Vec<BackupEntry> = Vec::new();
    loop {
        match reader.next_item() {
            Ok(None) => break,
            Ok(Some(Item::Begin(entry))) => entries.push(BackupEntry { entry: entry_name(&entry), bytes: 0 }),
            Ok(Some(Item::Data(bytes))) => {
                if let Some(last) = entries.last_mut() {
                    last.bytes += bytes.len() as u64;
                }
            }
            Ok(Some(Item::End)) => {}
            Err(e) => return Err(format!("{shown}: {e}; nothing was restored")),
        }
    }
    Ok((header, entries))
}

fn entry_name(entry: &Entry) -> String {
    match entry {
        Entry::File(name) => format!("file:{name}"),
        Entry::Dump(service) => format!("dump:{service}"),
        Entry::Volume(name) => format!("volume:{name}"),
    }
}

/// The archive's state files, each written whole (temporary file, fsync, rename).
fn put_back_files(file: &Path, key: &[u8; 32], state_dir: &Path) -> Result<(), String> {
    let shown = file.display().to_string();
    let opened = std::fs::File::open(file).map_err(|e| format!("{shown}: {e}"))?;
    let mut input = BufReader::new(opened);
    let (header, line) = archive::read_header(&mut input).map_err(|e| format!("{shown}: {e}"))?;
    let mut reader = Reader::new(input, key, &header, &line).map_err(|e| format!("{shown}: {e}"))?;
    let mut current: Option<(String, Zeroizing<Vec<u8>>)> = None;
    while let Some(item) = reader.next_item().map_err(|e| format!("{shown}: {e}"))? {
        match item {
            Item::Begin(Entry::File(name)) if STATE_FILES.contains(&name.as_str()) => {
                current = Some((name, Zeroizing::new(Vec::new())));
            }
            Item::Begin(_) => current = None,
            Item::Data(bytes) => {
                if let Some((_, buffer)) = current.as_mut() {
                    buffer.extend_from_slice(&bytes);
                }
            }
            Item::End => {
                if let Some((name, bytes)) = current.take() {
                    write_private(&state_dir.join(&name), &bytes)?;
                }
            }
        }
    }
    Ok(())
}

/// The archive's volumes, each unpacked into the stack's volume of that name (created, with the
/// images, as `up` would) through a container that is never started, before anything runs.
fn put_back_volumes(
    stack: &tug_stackfile::model::Stack,
    file: &Path,
    key: &[u8; 32],
    state_dir: &Path,
) -> Result<(), String> {
    let names: Vec<String> = stack.services.keys().cloned().collect();
    let artifacts = crate::artifacts::resolve(stack, &names, state_dir)?;
    let engine = engine_at(artifacts.engine.as_deref())?;
    // Each volume's name on the engine, with the image of a service that mounts it.
    let mut images: Vec<(String, String)> = Vec::new();
    for (service, definition) in &stack.services {
        let (Some(container), Some(image)) = (definition.container.as_ref(), artifacts.images.get(service)) else {
            continue;
        };
        for mount in &container.volumes {
            if let tug_stackfile::model::VolumeMount::Named { name, .. } = mount {
                let engine_name = if stack.volumes.get(name).is_some_and(|v| v.external) {
                    name.clone()
                } else {
                    crate::artifacts::volume_name(&stack.name, name)
                };
                images.push((engine_name, image.id.clone()));
            }
        }
    }
    let shown = file.display().to_string();
    let opened = std::fs::File::open(file).map_err(|e| format!("{shown}: {e}"))?;
    let mut input = BufReader::new(opened);
    let (header, line) = archive::read_header(&mut input).map_err(|e| format!("{shown}: {e}"))?;
    let mut reader = Reader::new(input, key, &header, &line).map_err(|e| format!("{shown}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let mut current: Option<Unpacking> = None;
        while let Some(item) = reader.next_item().map_err(|e| format!("{shown}: {e}"))? {
            match item {
                Item::Begin(Entry::Volume(volume)) => {
                    let Some((_, image)) = images.iter().find(|(v, _)| *v == volume) else {
                        return Err(format!(
                            "{shown} holds the volume `{volume}`, which no service of this stack mounts"
                        ));
                    };
                    let id = helper(&engine, state_dir, &volume, image, false).await?;
                    let (tx, rx) = mpsc::channel(8);
                    let upload = {
                        let (engine, id, volume) = (engine.clone(), id.clone(), volume.clone());
                        tokio::spawn(async move {
                            engine.upload_folder(&id, "/", rx).await.map_err(|e| format!("volume `{volume}`: {e}"))
                        })
                    };
                    current = Some(Unpacking { helper: id, tar: tx, upload });
                }
                Item::Data(bytes) => {
                    if let Some(unpacking) = current.as_ref() {
                        let _ = unpacking.tar.send(Ok(hyper::body::Bytes::from(bytes.to_vec()))).await;
                    }
                }
                Item::End => {
                    if let Some(Unpacking { helper, tar, upload }) = current.take() {
                        drop(tar);
                        let uploaded = upload.await.map_err(|e| e.to_string()).and_then(|r| r);
                        let _ = engine.remove_container(&helper, true).await;
                        uploaded?;
                    }
                }
                Item::Begin(_) => {}
            }
        }
        Ok(())
    })
}

/// A volume being unpacked: the helper container, the tar going to it, the upload's end.
struct Unpacking {
    helper: String,
    tar: mpsc::Sender<std::io::Result<hyper::body::Bytes>>,
    upload: tokio::task::JoinHandle<Result<(), String>>,
}

/// `bytes` as `path`, mode 0600, whole or not at all.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let error = |e: std::io::Error| format!("{}: {e}", path.display());
    let partial = path.with_extension(format!("partial{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)?;
    drop(file);
    std::fs::rename(&partial, path).map_err(error)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scheduled backups.

/// How often the schedules are looked at: a due backup starts within this of its minute.
const SCHEDULE_TICK: Duration = Duration::from_secs(5);

/// The daemon's scheduled backups: a service whose `backup.schedule` comes due gets an archive
/// of the state and of its dump in `backups/` beside the stack file, named
/// `<project>-<service>-<UTC time>.tug-backup`; the oldest beyond `keep` go. Each outcome is
/// an event (`backup_failed` reaches the webhooks). The archive is sealed with the state
/// folder's secrets key (a stack whose key is only in TUG_SECRETS_KEY cannot be backed up on
/// a schedule, and each attempt says so).
pub async fn run_schedules(supervisor: Supervisor) {
    use std::collections::HashMap;
    use tug_stackfile::cron::Schedule;
    // Each service's schedule (as written) and when it is next due.
    let mut next: HashMap<String, (String, SystemTime)> = HashMap::new();
    loop {
        tokio::time::sleep(SCHEDULE_TICK).await;
        let now = SystemTime::now();
        let mut due = Vec::new();
        for backed in supervisor.backed_up() {
            let Some(text) = backed.schedule else {
                next.remove(&backed.service);
                continue;
            };
            let Ok(schedule) = Schedule::parse(&text) else { continue };
            let entry = next.entry(backed.service.clone()).or_insert_with(|| (text.clone(), schedule.next_after(now)));
            if entry.0 != text {
                *entry = (text.clone(), schedule.next_after(now));
            }
            if now >= entry.1 {
                entry.1 = schedule.next_after(now);
                due.push((backed.service, backed.keep));
            }
        }
        for (service, keep) in due {
            let outcome = scheduled_backup(&supervisor, &service, keep).await;
            let event = match outcome {
                Ok(message) => {
                    tug_supervisor::events::Event::new(tug_supervisor::events::Kind::Backup, &service, message)
                }
                Err(why) => {
                    tug_supervisor::log::warn(&format!("scheduled backup failed: {why}"), &[("service", &service)]);
                    tug_supervisor::events::Event::new(tug_supervisor::events::Kind::BackupFailed, &service, why)
                }
            };
            supervisor.events().emit(event);
        }
    }
}

/// The archive key from the daemon's own secrets key. A stack without secrets has no key yet:
/// one is made, as `tug backup` makes it. A store sealed with TUG_SECRETS_KEY alone (no key
/// file) cannot be opened here, and says so.
fn own_key(state_dir: &Path) -> Result<Zeroizing<[u8; 32]>, String> {
    let store = Store::open_or_create(state_dir, None)
        .map_err(|e| format!("the archive is sealed with the secrets key, and the daemon cannot read one: {e}"))?;
    Ok(store.derived_key(archive::KEY_PURPOSE))
}

/// The `backups/` folder of the stack the daemon runs, made if need be.
fn backups_folder(supervisor: &Supervisor) -> Result<PathBuf, String> {
    let root = supervisor.root().ok_or("no stack has been applied yet")?;
    let dir = root.join("backups");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

async fn scheduled_backup(supervisor: &Supervisor, service: &str, keep: u32) -> Result<String, String> {
    let state_dir = supervisor.config().state_dir.clone();
    let dir = backups_folder(supervisor)?;
    let project = supervisor.project();
    let out = Some(dir.join(default_name(&project, Some(service))));
    let request = BackupRequest { out, services: vec![service.to_string()], key: None };
    let written = write_archive(supervisor, &state_dir, request).await?;
    let prefix = format!("{project}-{service}-");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let removed = beyond_keep(&names, &prefix, keep);
    for name in &removed {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(format!(
        "wrote {} ({} bytes){}",
        written.file.display(),
        written.bytes,
        if removed.is_empty() { String::new() } else { format!("; removed {}", removed.join(", ")) }
    ))
}

/// The scheduled archives of one service (`prefix`, then a sortable UTC time) beyond the `keep`
/// newest, oldest first.
fn beyond_keep(names: &[String], prefix: &str, keep: u32) -> Vec<String> {
    let suffix = format!(".{}", archive::EXTENSION);
    let mut ours: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(prefix) && n.ends_with(&suffix))
        // `<project>-<service>-` must not also match `<project>-<service>-worker-…`.
        .filter(|n| n[prefix.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    ours.sort();
    let extra = ours.len().saturating_sub(keep as usize);
    ours.into_iter().take(extra).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_scheduled_archives_of_a_service_are_kept() {
        let names: Vec<String> = [
            "shop-db-20261205T030000Z.tug-backup",
            "shop-db-20261207T030000Z.tug-backup",
            "shop-db-20261206T030000Z.tug-backup",
            "shop-db-worker-20261201T030000Z.tug-backup",
            "shop-20261201T030000Z.tug-backup",
            "shop-db-20261201T030000Z.tug-backup.partial",
            "notes.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            beyond_keep(&names, "shop-db-", 2),
            ["shop-db-20261205T030000Z.tug-backup"],
            "the oldest of db's three, not db-worker's, a manual one or a partial one"
        );
        assert!(beyond_keep(&names, "shop-db-", 7).is_empty());
    }

    #[test]
    fn default_names_sort_by_time() {
        let name = default_name("shop", Some("db"));
        assert!(name.starts_with("shop-db-2") && name.ends_with("Z.tug-backup"), "{name}");
        assert_eq!(name.len(), "shop-db-".len() + "20261207T030000Z".len() + ".tug-backup".len(), "{name}");
    }
}
