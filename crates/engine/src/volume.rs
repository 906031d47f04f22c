//! Volumes, and the one network lookup tug needs.

use std::net::Ipv4Addr;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::Error;
use crate::container::label_filter;
use crate::engine::Engine;
use crate::image::object;
use crate::transport::{Call, segment};

impl Engine {
    /// `POST /volumes/create`: creates a named volume with `labels`. One that exists already is
    /// fine (it is left as it is, labels included).
    pub async fn create_volume(&self, name: &str, labels: &[(String, String)]) -> Result<(), Error> {
        let body = json!({"Name": name, "Labels": object(labels)});
        let reply = self.fetch(Call::post("/volumes/create").json(&body)).await?;
        match reply.status {
            // Docker answers 201 for an existing volume; Podman 409.
            StatusCode::CONFLICT => Ok(()),
            _ => reply.ok(),
        }
    }

    /// `GET /volumes`: the names of the volumes that have all `labels`, sorted.
    pub async fn list_volumes(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "Volumes", default)]
            volumes: Option<Vec<Volume>>,
        }
        #[derive(Deserialize)]
        struct Volume {
            #[serde(rename = "Name")]
            name: String,
        }
        let mut call = Call::get("/volumes");
        if !labels.is_empty() {
            call = call.query("filters", label_filter(labels));
        }
        let reply = self.fetch(call).await?;
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let raw: Raw = reply.json()?;
        let mut names: Vec<String> = raw.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect();
        names.sort();
        Ok(names)
    }

    /// `DELETE /volumes/{name}`. An absent volume is fine; one in use by a container (running or
    /// not) is [`Error::Conflict`] with the engine's message, which names the containers.
    pub async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        let reply = self.fetch(Call::delete(format!("/volumes/{}", segment(name)))).await?;
        match reply.status {
            StatusCode::NOT_FOUND => Ok(()),
            StatusCode::CONFLICT => Err(Error::Conflict { what: format!("volume {name}"), message: reply.message() }),
            _ => reply.ok(),
        }
    }

    /// `GET /networks/{name}`: the IPv4 gateway of the network's first IPv4 IPAM config, where
    /// containers on it reach the host (Docker's `bridge` is usually 172.17.0.1; Podman's
    /// default network is `podman`). When the config gives a subnet but no gateway, as Docker
    /// 20.10 does for `bridge`, the gateway is the subnet's first address, which is what the
    /// default IPAM driver gives the bridge. `None` when the network does not exist or has no
    /// IPv4 config (`host`, `none`).
    pub async fn network_gateway(&self, network: &str) -> Result<Option<Ipv4Addr>, Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "IPAM", default)]
            ipam: Option<Ipam>,
        }
        #[derive(Deserialize)]
        struct Ipam {
            #[serde(rename = "Config", default)]
            config: Option<Vec<IpamConfig>>,
        }
        #[derive(Deserialize)]
        struct IpamConfig {
            #[serde(rename = "Subnet", default)]
            subnet: Option<String>,
            #[serde(rename = "Gateway", default)]
            gateway: Option<String>,
        }
        let reply = self.fetch(Call::get(format!("/networks/{}", segment(network)))).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(reply.into_error());
        }
        let raw: Raw = reply.json()?;
        let configs = raw.ipam.and_then(|i| i.config).unwrap_or_default();
        Ok(configs.iter().find_map(|c| gateway(c.gateway.as_deref(), c.subnet.as_deref())))
    }
}

/// The gateway of one IPAM config: its `Gateway` (possibly with a `/prefix`), else the first
/// address of an IPv4 `Subnet`. `None` for an IPv6 config.
fn gateway(gateway: Option<&str>, subnet: Option<&str>) -> Option<Ipv4Addr> {
    if let Some(gateway) = gateway.filter(|g| !g.is_empty()) {
        return gateway.split('/').next()?.parse().ok();
    }
    let (network, prefix) = subnet?.split_once('/')?;
    let network: Ipv4Addr = network.parse().ok()?;
    let prefix: u32 = prefix.parse().ok()?;
    if prefix > 30 {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some(Ipv4Addr::from((u32::from(network) & mask) + 1))
}

impl Engine {
    /// `GET /containers/{id}/archive?path=PATH`: the folder at `path` in container `id` (which
    /// need not be running) as a tar stream, chunk by chunk to `out`; the tar's entries are
    /// named from the folder's own name. Ends early, without error, when `out` is closed.
    pub async fn download_folder(
        &self,
        id: &str,
        path: &str,
        out: tokio::sync::mpsc::Sender<hyper::body::Bytes>,
    ) -> Result<(), Error> {
        use http_body_util::BodyExt;
        let call = Call::get(format!("/containers/{}/archive", segment(id))).query("path", path);
        let (request, mut response) = self.send(call).await?;
        if !response.status().is_success() {
            return Err(self.error_reply(request, response).await.into_error());
        }
        while let Some(frame) = response.body_mut().frame().await {
            let frame = frame.map_err(|e| Error::Protocol { request: request.clone(), message: e.to_string() })?;
            if let Ok(data) = frame.into_data()
                && out.send(data).await.is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// `PUT /containers/{id}/archive?path=PATH`: the tar stream `input` unpacked into the folder
    /// `path` of container `id` (which need not be running).
    pub async fn upload_folder(
        &self,
        id: &str,
        path: &str,
        input: tokio::sync::mpsc::Receiver<std::io::Result<hyper::body::Bytes>>,
    ) -> Result<(), Error> {
        let mut call =
            Call::new(hyper::Method::PUT, format!("/containers/{}/archive", segment(id))).query("path", path);
        call.body = crate::transport::ReqBody::Channel(input);
        call.content_type = Some("application/x-tar");
        let (request, response) = self.send(call).await?;
        if !response.status().is_success() {
            return Err(self.error_reply(request, response).await.into_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_come_from_the_config_or_the_subnet() {
        let ip = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        assert_eq!(gateway(Some("10.88.0.1"), Some("10.88.0.0/16")), ip("10.88.0.1"));
        assert_eq!(gateway(Some("10.88.0.1/16"), None), ip("10.88.0.1"));
        assert_eq!(gateway(None, Some("172.17.0.0/16")), ip("172.17.0.1"));
        assert_eq!(gateway(Some(""), Some("192.168.5.7/24")), ip("192.168.5.1"));
        assert_eq!(gateway(None, Some("fd00::/64")), None);
        assert_eq!(gateway(Some("fd00::1"), None), None);
        assert_eq!(gateway(None, Some("10.0.0.0/32")), None);
        assert_eq!(gateway(None, Some("10.0.0.0/0")), ip("0.0.0.1"));
        assert_eq!(gateway(None, None), None);
    }
}
