//! pupil devices in a real Flower federation (`flwr==1.42.0` in the venv at
//! `PUPIL_FLWR_VENV`, default `$PUPIL_CACHE/.flwr`, which tests/run makes): a
//! `flower-superlink --insecure` on loopback, the ServerApp in `interop/flower/pupil_fedavg`
//! started with Flower's own `flwr run`, and `pupil flower` SuperNodes training the MNIST
//! 2NN on their shards. Flower's FedAvg aggregates their replies round by round; the
//! ServerApp writes the aggregated metrics, which the tests read.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "support/flwr.rs"]
mod flwr;
use flwr::{free_port, path_with_venv, venv_bin, wait_for_port, Proc};

/// One federation at a time: each starts a SuperLink, a ServerApp and several nodes.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A SuperLink with its Flower home (the CLI's connection to it) in a temporary folder.
struct Federation {
    dir: tempfile::TempDir,
    port: u16,
    /// The CA certificate when the SuperLink serves TLS.
    ca: Option<PathBuf>,
    _link: Proc,
}

/// A CA and a certificate for 127.0.0.1 that it signed, made with `openssl` in `dir`:
/// `ca.crt`, `server.pem`, `server.key`.
fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=pupil test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

impl Federation {
    /// Starts `flower-superlink --insecure` on a free port with a file-backed store (its
    /// in-memory SQLite fails under concurrent nodes) and waits until it listens.
    fn start() -> Federation {
        Federation::start_with(false)
    }

    /// With `auth`: TLS with a fresh CA (Flower requires it for node authentication) and
    /// `--enable-supernode-auth`, so only keys listed with `flwr supernode register` join.
    fn start_with(auth: bool) -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let home = dir.path().join("flwr-home");
        std::fs::create_dir_all(&home).unwrap();
        let ca = auth.then(|| {
            certificates(dir.path());
            dir.path().join("ca.crt")
        });
        let transport = match &ca {
            Some(ca) => format!("root-certificates = \"{}\"", ca.display()),
            None => "insecure = true".into(),
        };
        std::fs::write(
            home.join("config.toml"),
            format!(
                "[superlink]\ndefault = \"test\"\n\n[superlink.test]\naddress = \"127.0.0.1:{port}\"\n{transport}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("superlink.log")).unwrap();
        let mut command = Command::new(venv_bin().join("flower-superlink"));
        if auth {
            let at = |f: &str| dir.path().join(f).display().to_string();
            command.args([
                "--ssl-certfile",
                &at("server.pem"),
                "--ssl-keyfile",
                &at("server.key"),
            ]);
            command.args([
                "--ssl-ca-certfile",
                &at("ca.crt"),
                "--enable-supernode-auth",
            ]);
        } else {
            command.arg("--insecure");
        }
        let link = Proc(
            command
                .args(["--port", &port.to_string(), "--database"])
                .arg(dir.path().join("state.db"))
                .env("PATH", path_with_venv())
                .env("FLWR_HOME", &home)
                .process_group(0)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start flower-superlink"),
        );
        wait_for_port(port);
        Federation {
            dir,
            port,
            ca,
            _link: link,
        }
    }

    /// Starts `pupil flower` for shard `i` of `n` with its state in `node<i>`, logging to
    /// `node<i>.log`.
    fn node(&self, i: usize, n: usize) -> Proc {
        self.node_logging(i, n, &format!("node{i}.log"))
    }

    fn node_logging(&self, i: usize, n: usize, log: &str) -> Proc {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        Proc(
            self.node_command(i, n)
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start pupil flower"),
        )
    }

    /// `pupil flower` for shard `i` of `n`, its state in `node<i>`.
    fn node_command(&self, i: usize, n: usize) -> Command {
        let state = self.dir.path().join(format!("node{i}"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_pupil"));
        command
            .args(["flower", "--superlink", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--fresh",
                "7",
                "--shard",
                &format!("{i}/{n}"),
                "--adapter",
                "cpu",
            ])
            .args(["--examples", "600", "--eval-examples", "300"])
            .args(["--heartbeat-interval", "10", "--exit-after-idle", "60"])
            .arg("--model")
            .arg(root().join("models/mnist-student.pupil"))
            .arg("--state")
            .arg(&state);
        if let Some(ca) = &self.ca {
            command.arg("--root-certificates").arg(ca);
        }
        command
    }

    /// Lists node `i`'s key on the SuperLink with `flwr supernode register`.
    fn list_key(&self, i: usize) {
        let key = self
            .node_command(i, 1)
            .arg("--print-public-key")
            .output()
            .unwrap();
        assert!(key.status.success());
        let file = self.dir.path().join(format!("node{i}.pub"));
        std::fs::write(&file, &key.stdout).unwrap();
        let out = Command::new(venv_bin().join("flwr"))
            .args(["supernode", "register"])
            .arg(&file)
            .arg("test")
            .env("PATH", path_with_venv())
            .env("FLWR_HOME", self.dir.path().join("flwr-home"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "flwr supernode register: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Submits the ServerApp with `flwr run` and waits for the results it writes.
    fn run(&self, config: &str) -> serde_json::Value {
        let results = self.dir.path().join("results.json");
        let status = Command::new(venv_bin().join("flwr"))
            .arg("run")
            .arg(root().join("interop/flower/pupil_fedavg"))
            .arg("test")
            .arg("--run-config")
            .arg(format!("results='{}' {config}", results.display()))
            .env("PATH", path_with_venv())
            .env("FLWR_HOME", self.dir.path().join("flwr-home"))
            .status()
            .expect("flwr run");
        assert!(status.success(), "flwr run failed");
        let start = Instant::now();
        while !results.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(400),
                "no results after 400 s; superlink log tail:\n{}\nnode0:\n{}",
                tail(&self.log("superlink.log")),
                self.log("node0.log")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(Duration::from_millis(200));
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap()
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Each round's aggregated evaluation accuracy.
fn accuracies(results: &serde_json::Value) -> Vec<f64> {
    let evaluate = results["evaluate"].as_object().expect("evaluate metrics");
    (1..=evaluate.len())
        .map(|r| evaluate[&r.to_string()]["eval_acc"].as_f64().unwrap())
        .collect()
}

/// Four pupil SuperNodes, Flower's FedAvg, three rounds of train and evaluate: every node
/// takes part and the global model's accuracy on the nodes' held-out digits rises round by
/// round (from fresh weights: near chance before the first round).
#[test]
fn pupil_supernodes_federate_under_flowers_fedavg() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fed = Federation::start();
    let _nodes: Vec<Proc> = (0..4).map(|i| fed.node(i, 4)).collect();
    let results = fed.run("num-server-rounds=3 min-nodes=4");
    assert_eq!(results["nodes"].as_array().unwrap().len(), 4);
    let acc = accuracies(&results);
    eprintln!(
        "4 pupil SuperNodes: accuracy per round {acc:?}, {:.1} s",
        results["seconds"]
    );
    assert_eq!(acc.len(), 3, "{results}");
    assert!(
        acc.windows(2).all(|w| w[1] > w[0]) && acc[2] > 0.5,
        "accuracy per round {acc:?}"
    );
    assert_eq!(
        results["arrays"]["mlp.0.weight"],
        serde_json::json!([200, 784])
    );
    for i in 0..4 {
        let log = fed.log(&format!("node{i}.log"));
        assert_eq!(
            log.matches("replied to train").count(),
            3,
            "node {i}:\n{log}"
        );
        assert_eq!(
            log.matches("replied to evaluate").count(),
            3,
            "node {i}:\n{log}"
        );
    }
}

/// A SuperNode killed (SIGKILL) once its first train message arrived comes back with the
/// same key and id, and the run completes all its rounds.
#[test]
fn a_supernode_killed_mid_round_rejoins_and_the_run_completes() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fed = Federation::start();
    let mut nodes: Vec<Proc> = (0..4).map(|i| fed.node(i, 4)).collect();
    let watcher = std::thread::scope(|s| {
        let run = s.spawn(|| fed.run("num-server-rounds=3 min-nodes=4 round-timeout=40.0"));
        let start = Instant::now();
        while !fed.log("node0.log").contains(": train") {
            assert!(
                start.elapsed() < Duration::from_secs(200),
                "node 0 got no train message"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(nodes.remove(0));
        nodes.push(fed.node_logging(0, 4, "node0.restarted.log"));
        run.join().unwrap()
    });
    let acc = accuracies(&watcher);
    assert_eq!(acc.len(), 3, "{watcher}");
    assert!(acc[2] > acc[0], "accuracy per round {acc:?}");
    let log = fed.log("node0.restarted.log");
    assert!(
        log.contains("online as node"),
        "the restarted node did not rejoin:\n{log}"
    );
    let first = fed.log("node0.log");
    let id = |l: &str| {
        l.lines()
            .find_map(|x| x.strip_prefix("pupil flower: online as node "))
            .map(str::to_owned)
    };
    assert_eq!(id(&first), id(&log), "the same key is the same node");
    assert!(
        log.contains("replied to evaluate"),
        "the restarted node took part again:\n{log}"
    );
}

/// Over TLS with `--enable-supernode-auth`: the four nodes whose keys were listed with
/// `flwr supernode register` join and federate; a node with an unlisted key is refused and
/// says so.
#[test]
fn only_listed_keys_join_a_superlink_with_supernode_auth() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fed = Federation::start_with(true);
    for i in 0..4 {
        fed.list_key(i);
    }
    let _nodes: Vec<Proc> = (0..4).map(|i| fed.node(i, 4)).collect();
    let stranger = fed.node_command(5, 8).output().unwrap();
    let said = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        !stranger.status.success() && said.contains("flwr supernode register"),
        "{said}"
    );
    let results = fed.run("num-server-rounds=3 min-nodes=4");
    assert_eq!(results["nodes"].as_array().unwrap().len(), 4);
    let acc = accuracies(&results);
    assert!(
        acc.len() == 3 && acc.windows(2).all(|w| w[1] > w[0]),
        "accuracy per round {acc:?}"
    );
}

/// Flower's own Python SuperNode (`flower-supernode`, running the NumPy ClientApp of the
/// same App on the same kind of shard) and three pupil SuperNodes in one run: FedAvg
/// averages their replies together and the model improves, so pupil speaks Flower's wire
/// format, not only to itself.
#[test]
fn flowers_own_supernode_and_pupil_supernodes_average_together() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fed = Federation::start();
    let mut nodes: Vec<Proc> = (0..3).map(|i| fed.node(i, 4)).collect();
    let cache = std::env::var("PUPIL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/pupil")
        });
    let runtime_port = free_port();
    let log = std::fs::File::create(fed.dir.path().join("flower-node.log")).unwrap();
    nodes.push(Proc(
        Command::new(venv_bin().join("flower-supernode"))
            .args([
                "--insecure",
                "--superlink",
                &format!("127.0.0.1:{}", fed.port),
            ])
            .args(["--port", &runtime_port.to_string(), "--node-config"])
            .arg(format!(
                "data='{}' partition-id=3 num-partitions=4 examples=600 eval-examples=300",
                cache.join("mnist").display()
            ))
            .env("PATH", path_with_venv())
            .process_group(0)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start flower-supernode"),
    ));
    let results = fed.run("num-server-rounds=3 min-nodes=4");
    assert_eq!(results["nodes"].as_array().unwrap().len(), 4, "{results}");
    let acc = accuracies(&results);
    eprintln!(
        "3 pupil + 1 Flower SuperNodes: accuracy per round {acc:?}, {:.1} s",
        results["seconds"]
    );
    assert!(
        acc.len() == 3 && acc.windows(2).all(|w| w[1] > w[0]) && acc[2] > 0.4,
        "accuracy per round {acc:?}"
    );
    let python = fed.log("flower-node.log");
    assert!(
        python.matches("Sent successfully").count() >= 6,
        "Flower's node:\n{}",
        tail(&python)
    );
    for i in 0..3 {
        let log = fed.log(&format!("node{i}.log"));
        assert_eq!(
            log.matches("replied to train").count(),
            3,
            "node {i}:\n{log}"
        );
    }
}
