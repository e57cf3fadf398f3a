//! A pupil SuperNode: the loop Flower's own SuperNode runs (`flwr/supernode/
//! start_client_internal.py`), with the ClientApp replaced by an [`App`] that answers in
//! Rust. It activates the node, keeps a heartbeat, pulls each message and its objects,
//! confirms receipt, answers `train`, `evaluate` and `query` messages, and pushes the reply
//! and the objects the SuperLink asks for. Every reply is written to the state folder
//! before it is pushed and removed once the SuperLink has all of it, so a reply computed
//! before a crash is sent after the restart. Transient failures (SuperLink unreachable,
//! 502-504) are retried with exponential backoff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;

use crate::fleet::{FleetClient, FleetError};
use crate::objects::{
    deflate_error_message, deflate_message, inflate_message, tree_ids, Deflated, RecordDict,
};
use crate::proto;

/// Flower's error code for an exception raised by the ClientApp.
const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;

/// What a SuperNode computes for the messages it receives.
pub trait App {
    /// Answers a `train` message (FedAvg sends `arrays` and `config`; the reply carries
    /// one array record and one metric record with `num-examples`).
    fn train(&mut self, content: &RecordDict) -> Result<RecordDict, String>;
    /// Answers an `evaluate` message (one metric record with `num-examples`).
    fn evaluate(&mut self, content: &RecordDict) -> Result<RecordDict, String>;
    /// Answers a `query` message; by default it is refused.
    fn query(&mut self, _content: &RecordDict) -> Result<RecordDict, String> {
        Err("this node answers no query".into())
    }
}

/// What the loop reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The node is online with this id.
    Online(u64),
    /// The first message of a run arrived: the run and its app (`publisher/name`).
    Joined {
        /// The run.
        run: u64,
        /// The Flower App the ServerApp belongs to.
        app: String,
    },
    /// Replies kept from before a restart were sent.
    Resent(usize),
    /// A message arrived: its type, run and group (Flower's round).
    Received {
        /// `train`, `evaluate` or `query`.
        kind: String,
        /// The run.
        run: u64,
        /// The group id (the round, for Flower's strategies).
        group: String,
    },
    /// A reply went out: its type, the seconds spent computing it, and its error if the app
    /// refused.
    Replied {
        /// The message type.
        kind: String,
        /// Seconds spent in the app.
        seconds: f64,
        /// The app's error, if it refused.
        error: Option<String>,
    },
    /// A call failed transiently and is tried again after `wait`.
    Retrying {
        /// What failed.
        what: String,
        /// The wait before the next try.
        wait: Duration,
    },
}

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct SuperNodeConfig {
    /// Seconds between heartbeats the node promises (Flower's default is 30).
    pub heartbeat_interval: f64,
    /// The wait between pulls when no message is waiting.
    pub poll: Duration,
    /// Where replies wait until the SuperLink holds them.
    pub state_dir: PathBuf,
    /// Stop (deactivating the node) after this long without a message, once one came;
    /// `None` runs until an error.
    pub exit_after_idle: Option<Duration>,
    /// The longest a transient failure is retried before the loop gives up.
    pub max_retry: Duration,
}

impl SuperNodeConfig {
    /// Defaults with replies kept under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> SuperNodeConfig {
        SuperNodeConfig {
            heartbeat_interval: 30.0,
            poll: Duration::from_millis(500),
            state_dir: state_dir.into(),
            exit_after_idle: None,
            max_retry: Duration::from_secs(120),
        }
    }
}

/// `f` tried again with exponential backoff (0.5 s doubling to 10 s) while it fails
/// transiently, for at most `max`.
fn retry<T>(
    what: &str,
    max: Duration,
    on_event: &mut dyn FnMut(Event),
    mut f: impl FnMut() -> Result<T, FleetError>,
) -> Result<T, FleetError> {
    let start = Instant::now();
    let mut wait = Duration::from_millis(500);
    loop {
        match f() {
            Err(e) if e.is_transient() && start.elapsed() + wait < max => {
                on_event(Event::Retrying {
                    what: what.to_owned(),
                    wait,
                });
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// Sends heartbeats from a thread until dropped.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(client: Arc<FleetClient>, node_id: u64, interval: f64) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let period = Duration::from_secs_f64((interval / 2.0).max(0.1));
            let tick = Duration::from_millis(100);
            let mut since = Duration::ZERO;
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                since += tick;
                if since >= period {
                    since = Duration::ZERO;
                    // A missed beat is caught up by the next; the pulls report real trouble.
                    let _ = client.heartbeat(node_id, interval);
                }
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The reply's metadata for instruction `ins` (Flower's `Message(content, reply_to=ins)`).
fn reply_metadata(ins: &proto::Metadata) -> proto::Metadata {
    let created = now();
    proto::Metadata {
        run_id: ins.run_id,
        message_id: String::new(),
        src_node_id: ins.dst_node_id,
        dst_node_id: ins.src_node_id,
        reply_to_message_id: ins.message_id.clone(),
        group_id: ins.group_id.clone(),
        ttl: (ins.created_at + ins.ttl - created).max(1e-3),
        message_type: ins.message_type.clone(),
        created_at: created,
        src_task_id: ins.dst_task_id,
        dst_task_id: ins.src_task_id,
    }
}

/// A reply ready to push: the message as the SuperLink takes it and its objects.
struct Reply {
    message: proto::Message,
    tree: proto::ObjectTree,
    objects: Vec<(String, Vec<u8>)>,
    runtime: f64,
}

impl Reply {
    fn new(ins: &proto::Metadata, answer: Result<RecordDict, String>, runtime: f64) -> Reply {
        let mut metadata = reply_metadata(ins);
        let (deflated, content, error): (Deflated, _, _) = match answer {
            Ok(content) => (
                deflate_message(&metadata, &content),
                Some(proto::RecordDict::default()),
                None,
            ),
            Err(reason) => {
                let error = proto::Error {
                    code: CLIENT_APP_RAISED_EXCEPTION,
                    reason,
                };
                (
                    deflate_error_message(&metadata, error.clone()),
                    None,
                    Some(error),
                )
            }
        };
        metadata.message_id = deflated.id.clone();
        Reply {
            message: proto::Message {
                metadata: Some(metadata),
                content,
                error,
            },
            tree: deflated.tree,
            objects: deflated.objects,
            runtime,
        }
    }

    /// The bytes kept on disk: the push request, then each object as a push request.
    fn encode(&self) -> Vec<u8> {
        let head = proto::PushMessagesRequest {
            node: None,
            messages_list: vec![self.message.clone()],
            message_object_trees: vec![self.tree.clone()],
            clientapp_runtime_list: vec![self.runtime],
        };
        let mut out = head.encode_length_delimited_to_vec();
        for (id, content) in &self.objects {
            let o = proto::PushObjectRequest {
                object_id: id.clone(),
                object_content: content.clone(),
                ..Default::default()
            };
            out.extend(o.encode_length_delimited_to_vec());
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Option<Reply> {
        let head = proto::PushMessagesRequest::decode_length_delimited(&mut bytes).ok()?;
        let mut objects = Vec::new();
        while !bytes.is_empty() {
            let o = proto::PushObjectRequest::decode_length_delimited(&mut bytes).ok()?;
            objects.push((o.object_id, o.object_content));
        }
        Some(Reply {
            message: head.messages_list.into_iter().next()?,
            tree: head.message_object_trees.into_iter().next()?,
            objects,
            runtime: head.clientapp_runtime_list.first().copied().unwrap_or(0.0),
        })
    }

    fn run_id(&self) -> u64 {
        self.message.metadata.as_ref().map_or(0, |m| m.run_id)
    }
}

/// The folder of replies not yet held by the SuperLink.
struct Pending {
    dir: PathBuf,
}

impl Pending {
    fn open(dir: &Path) -> Result<Pending, FleetError> {
        let dir = dir.join("replies");
        std::fs::create_dir_all(&dir).map_err(|e| FleetError::Io(dir.display().to_string(), e))?;
        Ok(Pending { dir })
    }

    /// Writes `reply` (to a temporary name, then renamed: a crash leaves it whole or absent).
    fn keep(&self, reply: &Reply) -> Result<PathBuf, FleetError> {
        let id = reply
            .message
            .metadata
            .as_ref()
            .map_or("reply", |m| m.message_id.as_str());
        let path = self.dir.join(format!("{id}.reply"));
        let tmp = self.dir.join(format!("{id}.tmp"));
        let io = |e| FleetError::Io(path.display().to_string(), e);
        std::fs::write(&tmp, reply.encode()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// The kept replies, oldest name first; unreadable files are skipped.
    fn all(&self) -> Vec<(PathBuf, Reply)> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "reply"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .filter_map(|p| Some((p.clone(), Reply::decode(&std::fs::read(&p).ok()?)?)))
            .collect()
    }
}

/// One connection's state: the client, the node and what it reports.
struct Node<'a> {
    client: &'a FleetClient,
    id: u64,
    /// The runs seen so far.
    runs: std::collections::HashSet<u64>,
    cfg: &'a SuperNodeConfig,
    on_event: &'a mut dyn FnMut(Event),
}

impl Node<'_> {
    fn retry<T>(
        &mut self,
        what: &str,
        f: impl FnMut() -> Result<T, FleetError>,
    ) -> Result<T, FleetError> {
        retry(what, self.cfg.max_retry, self.on_event, f)
    }

    /// Pushes `reply` and the objects the SuperLink asks for.
    fn push(&mut self, reply: &Reply) -> Result<(), FleetError> {
        let (client, id) = (self.client, self.id);
        let (wanted, session) = self.retry("push-messages", || {
            client.push_message(id, reply.message.clone(), reply.tree.clone(), reply.runtime)
        })?;
        let run = reply.run_id();
        for (object_id, content) in &reply.objects {
            if wanted.contains(object_id) {
                self.retry("push-object", || {
                    client.push_object(id, run, &session, object_id, content.clone())
                })?;
            }
        }
        Ok(())
    }

    /// Every object of `tree` in run `run`, waiting for those not yet stored.
    fn pull_objects(
        &mut self,
        run: u64,
        tree: &proto::ObjectTree,
    ) -> Result<HashMap<String, Vec<u8>>, FleetError> {
        let (client, id) = (self.client, self.id);
        let mut objects = HashMap::new();
        for object_id in tree_ids(tree) {
            if objects.contains_key(&object_id) {
                continue;
            }
            let start = Instant::now();
            let content = loop {
                let got = self.retry("pull-object", || client.pull_object(id, run, &object_id))?;
                match got {
                    Some(c) => break c,
                    None if start.elapsed() < self.cfg.max_retry => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    None => {
                        return Err(FleetError::Refused {
                            path: "/v1/fleet/pull-object",
                            status: 404,
                            detail: format!("object {object_id} never became available"),
                        })
                    }
                }
            };
            objects.insert(object_id, content);
        }
        Ok(objects)
    }

    /// Receives, answers and replies to one message.
    fn handle(
        &mut self,
        app: &mut dyn App,
        pending: &Pending,
        message: proto::Message,
        tree: proto::ObjectTree,
    ) -> Result<(), FleetError> {
        let ins = message.metadata.unwrap_or_default();
        let (client, id) = (self.client, self.id);
        if self.runs.insert(ins.run_id) {
            let run = self.retry("get-run", || client.get_run(id, ins.run_id))?;
            (self.on_event)(Event::Joined {
                run: ins.run_id,
                app: format!("{} {}", run.fab_id, run.fab_version),
            });
        }
        let objects = self.pull_objects(ins.run_id, &tree)?;
        self.retry("confirm-message-received", || {
            client.confirm_message_received(id, ins.run_id, &ins.message_id)
        })?;
        let kind = ins.message_type.split('.').next().unwrap_or("").to_owned();
        (self.on_event)(Event::Received {
            kind: kind.clone(),
            run: ins.run_id,
            group: ins.group_id.clone(),
        });
        let start = Instant::now();
        let answer = inflate_message(&tree.object_id, &objects)
            .map_err(|e| e.to_string())
            .and_then(|content| match kind.as_str() {
                "train" => app.train(&content),
                "evaluate" => app.evaluate(&content),
                "query" => app.query(&content),
                other => Err(format!("unknown message type {other:?}")),
            });
        let seconds = start.elapsed().as_secs_f64();
        let error = answer.as_ref().err().cloned();
        let reply = Reply::new(&ins, answer, seconds);
        let kept = pending.keep(&reply)?;
        self.push(&reply)?;
        let _ = std::fs::remove_file(kept);
        (self.on_event)(Event::Replied {
            kind,
            seconds,
            error,
        });
        Ok(())
    }
}

/// Runs a SuperNode with `app` until an error, or until `cfg.exit_after_idle` passes
/// without a message once one came; the node is deactivated on the way out. The node's
/// key must be registered (`register_node`, or listed with `--enable-supernode-auth`).
/// Returns how many messages it answered.
pub fn run(
    client: Arc<FleetClient>,
    app: &mut dyn App,
    cfg: &SuperNodeConfig,
    on_event: &mut dyn FnMut(Event),
) -> Result<usize, FleetError> {
    let pending = Pending::open(&cfg.state_dir)?;
    // After a crash the SuperLink holds the node online until its heartbeats are missed,
    // refusing activation (412) until then: a node whose last run did not end cleanly (the
    // `online` marker is still there) retries through that. Otherwise a 412 is final: the
    // SuperLink does not know the key (with `--enable-supernode-auth`, list it with `flwr
    // supernode register`) or the node is online from another process.
    let marker = cfg.state_dir.join("online");
    let crashed = marker.exists();
    let node_id = retry("activate-node", cfg.max_retry, on_event, || {
        match client.activate_node(cfg.heartbeat_interval) {
            Err(FleetError::Refused { status: 412, .. }) if crashed => Err(FleetError::Refused {
                path: "/v1/fleet/activate-node",
                status: 503,
                detail: "the node is still online from before a restart".into(),
            }),
            Err(FleetError::Refused {
                status: 412,
                detail,
                path,
            }) => Err(FleetError::Refused {
                path,
                status: 412,
                detail: format!(
                    "{detail}: the SuperLink does not know this node's key (with \
                     --enable-supernode-auth, list it with `flwr supernode register`) or the \
                     node is online in another process"
                ),
            }),
            other => other,
        }
    })?;
    std::fs::write(&marker, node_id.to_string())
        .map_err(|e| FleetError::Io(marker.display().to_string(), e))?;
    on_event(Event::Online(node_id));
    let _heartbeat = Heartbeat::start(client.clone(), node_id, cfg.heartbeat_interval);
    let mut node = Node {
        client: &client,
        id: node_id,
        runs: Default::default(),
        cfg,
        on_event,
    };
    let result = serve(&mut node, app, &pending);
    if client.deactivate_node(node_id).is_ok() {
        let _ = std::fs::remove_file(&marker);
    }
    result
}

fn serve(node: &mut Node<'_>, app: &mut dyn App, pending: &Pending) -> Result<usize, FleetError> {
    let kept = pending.all();
    if !kept.is_empty() {
        let count = kept.len();
        for (path, reply) in kept {
            // A reply the SuperLink no longer takes (its run ended) is dropped, not retried.
            match node.push(&reply) {
                Err(e) if !e.is_transient() => {}
                other => other?,
            }
            let _ = std::fs::remove_file(path);
        }
        (node.on_event)(Event::Resent(count));
    }
    let mut answered = 0;
    let mut last = None::<Instant>;
    loop {
        let (client, id) = (node.client, node.id);
        let pulled = node.retry("pull-messages", || client.pull_messages(id))?;
        if pulled.messages_list.is_empty() {
            if let (Some(idle), Some(at)) = (node.cfg.exit_after_idle, last) {
                if at.elapsed() >= idle {
                    return Ok(answered);
                }
            }
            std::thread::sleep(node.cfg.poll);
            continue;
        }
        for (message, tree) in pulled
            .messages_list
            .into_iter()
            .zip(pulled.message_object_trees)
        {
            node.handle(app, pending, message, tree)?;
            answered += 1;
        }
        last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Array, Record};

    #[test]
    fn a_reply_answers_its_instruction_and_survives_the_disk() {
        let ins = proto::Metadata {
            run_id: 9,
            message_id: "abc".into(),
            src_node_id: 1,
            dst_node_id: 42,
            group_id: "3".into(),
            ttl: 600.0,
            message_type: "train".into(),
            created_at: now() - 10.0,
            src_task_id: Some(5),
            dst_task_id: Some(6),
            ..Default::default()
        };
        let content = RecordDict(vec![(
            "arrays".into(),
            Record::Arrays(vec![("w".into(), Array::from_f32(&[2], &[1.0, 2.0]))]),
        )]);
        let reply = Reply::new(&ins, Ok(content), 0.25);
        let m = reply.message.metadata.clone().unwrap();
        assert_eq!((m.src_node_id, m.dst_node_id, m.run_id), (42, 1, 9));
        assert_eq!(m.reply_to_message_id, "abc");
        assert_eq!((m.src_task_id, m.dst_task_id), (Some(6), Some(5)));
        assert!(m.ttl > 580.0 && m.ttl <= 590.0, "ttl {}", m.ttl);
        assert_eq!(m.message_id, reply.tree.object_id);
        assert!(reply.message.content.is_some() && reply.message.error.is_none());
        let back = Reply::decode(&reply.encode()).unwrap();
        assert_eq!(back.message, reply.message);
        assert_eq!(back.tree, reply.tree);
        assert_eq!(back.objects, reply.objects);
        let refused = Reply::new(&ins, Err("no data".into()), 0.0);
        assert!(refused.message.content.is_none());
        assert_eq!(refused.message.error.as_ref().unwrap().reason, "no data");
        assert_eq!(refused.objects.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let pending = Pending::open(dir.path()).unwrap();
        pending.keep(&reply).unwrap();
        pending.keep(&refused).unwrap();
        std::fs::write(dir.path().join("replies/torn.reply"), b"\x05ab").unwrap();
        assert_eq!(pending.all().len(), 2, "the torn file is skipped");
    }
}
