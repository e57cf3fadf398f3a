//! The Fleet API calls a SuperNode makes, as Flower 1.42's SuperLink serves them: `POST
//! /v1/fleet/<rpc in kebab case>` with an `application/protobuf` body, every request
//! carrying the node's signed identity headers ([`NodeKey::auth_headers`]).
//! `flwr/supernode/fleet_http_client.py` and `fleet_http_connection.py` are the reference.

use std::time::Duration;

use prost::Message;

use crate::identity::NodeKey;
use crate::proto;

/// The media type of Fleet requests and answers.
const PROTOBUF: &str = "application/protobuf";
/// The longest answer read (a pulled object tree can be large, not unbounded).
const MAX_ANSWER_LEN: u64 = 512 << 20;

/// Why a Fleet call failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The SuperLink could not be reached or the connection broke.
    #[error("cannot reach the SuperLink at {url}: {detail}; check --superlink and that it runs")]
    Network {
        /// The request's URL.
        url: String,
        /// What the transport said.
        detail: String,
    },
    /// The SuperLink answered with an error status.
    #[error("the SuperLink refused {path}: HTTP {status}: {detail}")]
    Refused {
        /// The Fleet path.
        path: &'static str,
        /// The HTTP status.
        status: u16,
        /// The answer's text (Flower's error detail).
        detail: String,
    },
    /// The answer was not the protobuf message the call returns.
    #[error("the SuperLink's answer to {path} is not a valid message: {detail}")]
    BadAnswer {
        /// The Fleet path.
        path: &'static str,
        /// The decoder's error.
        detail: String,
    },
    /// A message's objects were not what their tree promised.
    #[error("message objects: {0}")]
    Objects(#[from] crate::objects::ObjectError),
    /// The node's key could not be made, read or encoded.
    #[error("node key: {0}")]
    Key(String),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// A SuperNode's connection to a SuperLink's Fleet API.
pub struct FleetClient {
    base: String,
    key: NodeKey,
    agent: ureq::Agent,
}

impl FleetError {
    /// Whether trying again later can help: the SuperLink unreachable, or answering 500 (its store was busy), 502,
    /// 503 or 504 (a proxy or a restart in between).
    pub fn is_transient(&self) -> bool {
        match self {
            FleetError::Network { .. } => true,
            FleetError::Refused { status, .. } => matches!(status, 500 | 502..=504),
            _ => false,
        }
    }
}

impl FleetClient {
    /// A client of the SuperLink at `address` (`host:port`, plain HTTP as with
    /// `flower-superlink --insecure`, or a full `http://` / `https://` URL) signing with `key`.
    pub fn new(address: &str, key: NodeKey) -> FleetClient {
        FleetClient::with_agent(address, key, Self::agent(None))
    }

    /// A client of a SuperLink serving TLS (`https://` is assumed for `host:port`) with a
    /// certificate issued by one of the PEM `root_certificates` (Flower's
    /// `--ssl-ca-certfile`); as `flower-supernode --root-certificates` takes them.
    pub fn with_root_certificates(
        address: &str,
        key: NodeKey,
        root_certificates: &[u8],
    ) -> Result<FleetClient, FleetError> {
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(root_certificates) {
            match item.map_err(|e| FleetError::Key(format!("root certificates: {e}")))? {
                ureq::tls::PemItem::Certificate(c) => roots.push(c),
                _ => continue,
            }
        }
        if roots.is_empty() {
            return Err(FleetError::Key(
                "the root certificates file holds no PEM certificate".into(),
            ));
        }
        let address = if address.contains("://") {
            address.to_owned()
        } else {
            format!("https://{address}")
        };
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
            .build();
        Ok(FleetClient::with_agent(
            &address,
            key,
            Self::agent(Some(tls)),
        ))
    }

    fn agent(tls: Option<ureq::tls::TlsConfig>) -> ureq::Agent {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)));
        if let Some(tls) = tls {
            config = config.tls_config(tls);
        }
        config.build().into()
    }

    fn with_agent(address: &str, key: NodeKey, agent: ureq::Agent) -> FleetClient {
        let base = if address.contains("://") {
            address.trim_end_matches('/').to_owned()
        } else {
            format!("http://{address}")
        };
        FleetClient { base, key, agent }
    }

    /// The node's key.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// Sends `request` to `path` and decodes the answer.
    fn call<A: Message + Default>(
        &self,
        path: &'static str,
        request: &impl Message,
    ) -> Result<A, FleetError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .post(&url)
            .header("content-type", PROTOBUF)
            .header("accept", PROTOBUF);
        for (name, value) in self.key.auth_headers() {
            req = req.header(name, value);
        }
        let network = |e: ureq::Error| FleetError::Network {
            url: url.clone(),
            detail: e.to_string(),
        };
        let mut resp = req.send(&request.encode_to_vec()[..]).map_err(network)?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_LEN)
            .read_to_vec()
            .map_err(network)?;
        if !(200..300).contains(&status) {
            let detail = String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned();
            return Err(FleetError::Refused {
                path,
                status,
                detail,
            });
        }
        A::decode(body.as_slice()).map_err(|e| FleetError::BadAnswer {
            path,
            detail: e.to_string(),
        })
    }

    /// Registers this node's public key (a SuperLink run with `--enable-supernode-auth`
    /// admits listed keys only); returns the node id.
    pub fn register_node(&self) -> Result<u64, FleetError> {
        let request = proto::RegisterNodeFleetRequest {
            public_key: self.key.public_key_pem().to_vec(),
        };
        let answer: proto::RegisterNodeFleetResponse =
            self.call("/v1/fleet/register-node", &request)?;
        Ok(answer.node_id)
    }

    /// Marks the node online, promising a heartbeat every `heartbeat_interval` seconds;
    /// returns its node id.
    pub fn activate_node(&self, heartbeat_interval: f64) -> Result<u64, FleetError> {
        let request = proto::ActivateNodeRequest {
            public_key: self.key.public_key_pem().to_vec(),
            heartbeat_interval,
        };
        let answer: proto::ActivateNodeResponse = self.call("/v1/fleet/activate-node", &request)?;
        Ok(answer.node_id)
    }

    /// Tells the SuperLink node `node_id` is alive; whether it accepted the heartbeat.
    pub fn heartbeat(&self, node_id: u64, heartbeat_interval: f64) -> Result<bool, FleetError> {
        let request = proto::SendNodeHeartbeatRequest {
            node: Some(proto::Node { node_id }),
            heartbeat_interval,
        };
        let answer: proto::SendNodeHeartbeatResponse =
            self.call("/v1/fleet/send-node-heartbeat", &request)?;
        Ok(answer.success)
    }

    /// The messages waiting for node `node_id`.
    pub fn pull_messages(&self, node_id: u64) -> Result<proto::PullMessagesResponse, FleetError> {
        let request = proto::PullMessagesRequest {
            node: Some(proto::Node { node_id }),
            message_ids: Vec::new(),
        };
        self.call("/v1/fleet/pull-messages", &request)
    }

    /// Pulls object `object_id` of run `run_id`: `Ok(None)` while the SuperLink has it
    /// registered but not yet stored (try again), an error if it does not know it.
    pub fn pull_object(
        &self,
        node_id: u64,
        run_id: u64,
        object_id: &str,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        let request = proto::PullObjectRequest {
            node: Some(proto::Node { node_id }),
            run_id,
            object_id: object_id.to_owned(),
        };
        let answer: proto::PullObjectResponse = self.call("/v1/fleet/pull-object", &request)?;
        if !answer.object_found {
            return Err(FleetError::Refused {
                path: "/v1/fleet/pull-object",
                status: 404,
                detail: format!("object {object_id} of run {run_id} is not known"),
            });
        }
        Ok(answer.object_available.then_some(answer.object_content))
    }

    /// Tells the SuperLink that every object of message `message_id` arrived.
    pub fn confirm_message_received(
        &self,
        node_id: u64,
        run_id: u64,
        message_id: &str,
    ) -> Result<(), FleetError> {
        let request = proto::ConfirmMessageReceivedRequest {
            node: Some(proto::Node { node_id }),
            run_id,
            message_object_id: message_id.to_owned(),
        };
        let _: proto::ConfirmMessageReceivedResponse =
            self.call("/v1/fleet/confirm-message-received", &request)?;
        Ok(())
    }

    /// Pushes one reply (its metadata and, for an error, the error; its content travels
    /// as objects) with its object tree; returns the ids of the objects the SuperLink
    /// still needs and the session to push them in.
    pub fn push_message(
        &self,
        node_id: u64,
        message: proto::Message,
        tree: proto::ObjectTree,
        runtime_seconds: f64,
    ) -> Result<(Vec<String>, String), FleetError> {
        let request = proto::PushMessagesRequest {
            node: Some(proto::Node { node_id }),
            messages_list: vec![message],
            message_object_trees: vec![tree],
            clientapp_runtime_list: vec![runtime_seconds],
        };
        let answer: proto::PushMessagesResponse = self.call("/v1/fleet/push-messages", &request)?;
        Ok((answer.objects_to_push, answer.session_id))
    }

    /// Pushes one object's bytes in `session_id`.
    pub fn push_object(
        &self,
        node_id: u64,
        run_id: u64,
        session_id: &str,
        object_id: &str,
        content: Vec<u8>,
    ) -> Result<(), FleetError> {
        let request = proto::PushObjectRequest {
            node: Some(proto::Node { node_id }),
            run_id,
            object_id: object_id.to_owned(),
            object_content: content,
            session_id: session_id.to_owned(),
        };
        let answer: proto::PushObjectResponse = self.call("/v1/fleet/push-object", &request)?;
        if !answer.stored {
            return Err(FleetError::Refused {
                path: "/v1/fleet/push-object",
                status: 200,
                detail: format!("object {object_id} was not stored"),
            });
        }
        Ok(())
    }

    /// The run `run_id`: its app (`fab_id`, version, hash) and configuration overrides.
    pub fn get_run(&self, node_id: u64, run_id: u64) -> Result<proto::Run, FleetError> {
        let request = proto::GetRunRequest {
            node: Some(proto::Node { node_id }),
            run_id,
        };
        let answer: proto::GetRunResponse = self.call("/v1/fleet/get-run", &request)?;
        answer.run.ok_or(FleetError::BadAnswer {
            path: "/v1/fleet/get-run",
            detail: "no run in the answer".into(),
        })
    }

    /// Marks node `node_id` offline.
    pub fn deactivate_node(&self, node_id: u64) -> Result<(), FleetError> {
        let request = proto::DeactivateNodeRequest { node_id };
        let _: proto::DeactivateNodeResponse = self.call("/v1/fleet/deactivate-node", &request)?;
        Ok(())
    }

    /// Removes node `node_id` from the federation.
    pub fn unregister_node(&self, node_id: u64) -> Result<(), FleetError> {
        let request = proto::UnregisterNodeFleetRequest { node_id };
        let _: proto::UnregisterNodeFleetResponse =
            self.call("/v1/fleet/unregister-node", &request)?;
        Ok(())
    }
}
