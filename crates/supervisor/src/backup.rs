//! A service's data, dumped and loaded back (`backup.command` and `backup.restore`), each run
//! inside a ready instance of it, whatever its driver. The dump is the command's standard
//! output byte for byte (never masked: a dump must load back exactly); its standard error, which
//! only ever reaches a message, has the instance's secrets masked.

use tokio::sync::mpsc;

use crate::driver::ExecEvent;
use crate::instance;
use crate::{Error, Supervisor};

/// Output chunks in flight between a command and whoever reads it.
const BUFFERED: usize = 16;

/// A service's `backup` as the daemon schedules it.
pub struct BackedUp {
    pub service: String,
    pub schedule: Option<String>,
    pub keep: u32,
    pub restores: bool,
}

impl Supervisor {
    /// The engine (its address) and each named volume the stack's containers mount, with an
    /// image (id) of a service that mounts it: what a backup copies the volume's files through.
    pub fn volumes(&self) -> (Option<String>, Vec<(String, String)>) {
        let table = self.inner.lock();
        let mut volumes: Vec<(String, String)> = Vec::new();
        for service in table.services.values() {
            let Some(container) = service.spec.container.as_ref() else { continue };
            for mount in &container.mounts {
                if mount.kind == tug_proto::spec::MountKind::Volume && !volumes.iter().any(|(v, _)| *v == mount.source)
                {
                    volumes.push((mount.source.clone(), container.image_id.clone()));
                }
            }
        }
        (table.engine.clone(), volumes)
    }

    /// The services with a `backup`, in the stack's order.
    pub fn backed_up(&self) -> Vec<BackedUp> {
        let table = self.inner.lock();
        table
            .services
            .values()
            .filter_map(|s| {
                let backup = s.spec.backup.as_ref()?;
                Some(BackedUp {
                    service: s.spec.name.clone(),
                    schedule: backup.schedule.clone(),
                    keep: backup.keep,
                    restores: backup.restore.is_some(),
                })
            })
            .collect()
    }

    /// `backup.command` in a ready instance of `service`: its output (stdout is the dump), then
    /// how it ended.
    pub fn dump(&self, service: &str) -> Result<mpsc::Receiver<ExecEvent>, Error> {
        self.in_instance(service, None)
    }

    /// `backup.restore` in a ready instance of `service`, `input` (a dump) on its standard input.
    pub fn load(&self, service: &str, input: mpsc::Receiver<Vec<u8>>) -> Result<mpsc::Receiver<ExecEvent>, Error> {
        self.in_instance(service, Some(input))
    }

    fn in_instance(
        &self,
        service: &str,
        input: Option<mpsc::Receiver<Vec<u8>>>,
    ) -> Result<mpsc::Receiver<ExecEvent>, Error> {
        let restoring = input.is_some();
        let found = {
            let table = self.inner.lock();
            let Some(spec) = table.services.get(service).map(|s| s.spec.clone()) else {
                return Err(Error::NotFound(format!("no service named `{service}`")));
            };
            let Some(backup) = spec.backup.as_ref() else {
                return Err(Error::BadRequest(format!("`{service}` has no `backup` in the stack file")));
            };
            if restoring && backup.restore.is_none() {
                return Err(Error::BadRequest(format!(
                    "`{service}` has no `backup.restore`: say how a dump is loaded back"
                )));
            }
            table.instances.values().filter(|i| i.status.service == service && i.status.state.is_up()).find_map(|i| {
                let (exec, secrets) = i.exec.clone()?;
                let resolved = i.resolved.as_ref()?;
                let argv = if restoring { resolved.restore.clone()? } else { resolved.dump.clone()? };
                Some((i.status.instance.clone(), exec, secrets, argv))
            })
        };
        let Some((instance, exec, secrets, argv)) = found else {
            return Err(Error::Conflict(format!("`{service}` has no ready instance to run its backup command in")));
        };
        crate::log::info(
            if restoring { "restoring a dump" } else { "dumping its data" },
            &[("service", service), ("instance", &instance)],
        );
        let (raw, mut events) = mpsc::channel(BUFFERED);
        let (out, received) = mpsc::channel(BUFFERED);
        tokio::spawn(async move { exec.stream_fed(argv, input, raw).await });
        // Standard error is masked (it may quote a connection string); the dump is not.
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let event = match event {
                    ExecEvent::Output(tug_logs::Stream::Err, chunk) => {
                        let masked = instance::redact(&chunk, &secrets).unwrap_or(chunk);
                        ExecEvent::Output(tug_logs::Stream::Err, masked)
                    }
                    other => other,
                };
                if out.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(received)
    }
}
