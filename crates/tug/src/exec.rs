//! `tug exec` and `tug run`: a command inside a running instance, or a one-off instance of a
//! service, run by the daemon (so a container's runs in the container, a process's with the
//! instance's environment and folder), its output streamed here and its exit code returned.

use std::io::Write;
use std::process::ExitCode;

use tug_proto::spec::{ExecRequest, RunRequest};
use tug_proto::stream::{Decoder, Frame};

use crate::StackArgs;
use crate::client::Client;
use crate::run::{self, UpOptions};

/// Prints a streamed answer's output as it comes; the command's exit code is this one's.
fn follow<B: serde::Serialize>(client: &Client, path: &str, request: &B) -> Result<ExitCode, String> {
    let mut decoder = Decoder::default();
    let mut ended: Option<Result<i32, String>> = None;
    let mut on_data = |bytes: &[u8]| -> Result<(), String> {
        decoder.push(bytes);
        while let Some(frame) = decoder.next_frame()? {
            // Output errors (a closed pipe) end the command here, not there: ignore them.
            match frame {
                Frame::Stdout(bytes) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&bytes).and_then(|_| out.flush());
                }
                Frame::Stderr(bytes) => {
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&bytes).and_then(|_| err.flush());
                }
                Frame::Exit(code) => ended = Some(Ok(code)),
                Frame::Error(why) => ended = Some(Err(why)),
                Frame::Answer(..) => return Err("the daemon answered a command with a deploy's answer".into()),
            }
        }
        Ok(())
    };
    client.stream(path, request, &mut on_data)?;
    match ended {
        Some(Ok(code)) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Some(Err(why)) => Err(why),
        None => Err("the daemon ended the command's output without its exit status".into()),
    }
}

/// `tug exec TARGET -- CMD...`
pub fn exec(args: &StackArgs, target: &str, command: Vec<String>) -> Result<ExitCode, String> {
    if command.is_empty() {
        return Err("say which command to run: tug exec SERVICE -- COMMAND [ARG...]".into());
    }
    let client = run::running_client(args)?;
    follow(&client, "/v1/exec", &ExecRequest { target: target.to_string(), command })
}

/// `tug run SERVICE [-- CMD...]`: what the service depends on starts first (as `up` starts it).
pub fn run(args: &StackArgs, service: &str, command: Vec<String>, insecure: bool) -> Result<ExitCode, String> {
    let loaded = crate::stack::load(args)?;
    let stack = crate::secrets::require_valid(&loaded.compiled)?;
    let Some(definition) = stack.services.get(service) else {
        let known: Vec<&str> = stack.services.keys().map(String::as_str).collect();
        return Err(format!("no service or job named `{service}` (the stack has: {})", known.join(", ")));
    };
    let dependencies: Vec<String> = definition.depends_on.keys().cloned().collect();
    if !dependencies.is_empty() {
        let options = UpOptions {
            detach: true,
            advertise: None,
            listen: None,
            insecure,
            services: dependencies,
            timeout: None,
            deploy: false,
            no_wait: false,
            quiet: true,
        };
        let code = run::up(args, options)?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
    }
    // After `up`, which may have generated secrets: the stack as it now is.
    let loaded = crate::stack::load(args)?;
    let stack = crate::secrets::require_valid(&loaded.compiled)?;
    let wanted = [service.to_string()];
    // A remote daemon gets the source it lacks and resolves the image on its engine, as for
    // `up`; a local one is started only once everything resolved.
    let remote = if args.host.is_some() { Some(run::running_client(args)?) } else { None };
    let (artifacts, on_host) =
        crate::artifacts::resolve_here_or_there(stack, &wanted, &loaded.state_dir, remote.as_ref())?;
    let (client, started) = run::daemon_client(args)?;
    let spec = run::to_spec(stack, &artifacts);
    let Some(service_spec) = spec.services.into_iter().find(|s| s.name == service) else {
        return Err(format!("no service or job named `{service}`"));
    };
    let request = RunRequest { project: spec.project, engine: spec.engine, service: service_spec, command, on_host };
    let outcome = follow(&client, "/v1/run", &request);
    if started {
        run::down_if_idle(&client);
    }
    outcome
}
