//! The project-wide fields that reach past the stack: `api` (the daemon's network endpoint)
//! and `notify` (webhooks).

use std::path::Path;

use crate::diag::Diagnostic;
use crate::model::{Api, ApiTls, Notify, NotifyEvent};
use crate::read::{Ctx, Scope};
use crate::service::normalize;
use crate::yaml::{Kind, Node};

/// `api: { listen, tls: { cert, key, client_ca } }`. Paths are relative to the stack's folder.
pub fn api(ctx: &mut Ctx, node: &Node, scope: &Scope, root: &Path) -> Option<Api> {
    let f = ctx.fields(node, "api", &["listen", "tls"])?;
    let Some(listen_node) = f.get("listen") else {
        ctx.error("missing-field", node.span, "api.listen", "`api` needs `listen` (such as 127.0.0.1:7070)");
        return None;
    };
    let listen = ctx.parsed(listen_node, "api.listen", scope, "an address", |text| {
        text.parse::<std::net::SocketAddr>().map_err(|_| {
            format!("`{text}` is not an address and port (such as 127.0.0.1:7070, 0.0.0.0:7070 or [::1]:7070)")
        })
    })?;
    let tls = match f.get("tls") {
        None => None,
        Some(tls_node) => {
            let t = ctx.fields(tls_node, "api.tls", &["cert", "key", "client_ca"])?;
            let mut path = |key: &str, required: bool| -> Option<std::path::PathBuf> {
                match t.get(key) {
                    Some(n) => ctx.string(n, &format!("api.tls.{key}"), scope).map(|p| normalize(&root.join(p))),
                    None => {
                        if required {
                            ctx.error(
                                "missing-field",
                                tls_node.span,
                                &format!("api.tls.{key}"),
                                format!("`api.tls` needs `{key}` (a PEM file)"),
                            );
                        }
                        None
                    }
                }
            };
            let cert = path("cert", true);
            let key = path("key", true);
            let client_ca = path("client_ca", false);
            Some(ApiTls { cert: cert?, key: key?, client_ca })
        }
    };
    Some(Api { listen, tls })
}

/// `notify: [{ url, events }]`; `events` defaults to every event.
pub fn notify(ctx: &mut Ctx, node: &Node, scope: &Scope) -> Vec<Notify> {
    let Kind::Seq(items) = &node.kind else {
        ctx.type_error(node, "notify", "a list of webhooks ({ url, events })");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("notify[{i}]");
        let Some(f) = ctx.fields(item, &path, &["url", "events"]) else { continue };
        let Some(url_node) = f.get("url") else {
            ctx.error("missing-field", item.span, &format!("{path}.url"), "a webhook needs `url`");
            continue;
        };
        let Some(url) = ctx.text(url_node, &format!("{path}.url"), scope) else { continue };
        let scheme_ok = url.expose().starts_with("http://") || url.expose().starts_with("https://");
        if !scheme_ok {
            ctx.diags.push(
                Diagnostic::error(
                    "invalid-value",
                    Some(url_node.span),
                    format!("{path}.url"),
                    format!("`{}` is not an http:// or https:// URL", url.shown()),
                )
                .with_hint("webhooks are POSTed: write https://hooks.example.com/tug"),
            );
            continue;
        }
        let events = match f.get("events") {
            None => NotifyEvent::ALL.iter().map(|(_, e)| *e).collect(),
            Some(n) => {
                let mut events = Vec::new();
                let list: Vec<&Node> = match &n.kind {
                    Kind::Seq(items) => items.iter().collect(),
                    _ => vec![n],
                };
                for (j, event) in list.into_iter().enumerate() {
                    if let Some(e) = ctx.choice(event, &format!("{path}.events[{j}]"), scope, &NotifyEvent::ALL)
                        && !events.contains(&e)
                    {
                        events.push(e);
                    }
                }
                events
            }
        };
        out.push(Notify { url, events });
    }
    out
}
