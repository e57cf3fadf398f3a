//! Run the upstream server: HTTP on an address, a durable embedded store, signed versions.
//!
//!     cargo run --release --example serve -- 127.0.0.1:7070 [seconds]
//!
//! It imports the shipped student as version 1 on first start and aggregates whenever 8
//! updates are pending (or a minute passed with some). Stops after `seconds` when given,
//! else on Ctrl-C. `pupil serve --help` has every option.

use std::time::Duration;

use pupil_sync::server::{finite_gate, serve, Server, ServerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7070".into());
    let seconds: Option<u64> = args.next().map(|s| s.parse()).transpose()?;

    let store = std::env::temp_dir().join("pupil-example-server");
    let config = ServerConfig {
        open_registration: true,
        ..ServerConfig::default()
    };
    let server = Server::open(&store, config, finite_gate())?;
    let current = server.import_model(include_bytes!("../models/mnist-student.pupil").to_vec())?;

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!(
            "serving version {} on http://{} (store {})",
            current.version,
            listener.local_addr()?,
            store.display()
        );
        let stop = async move {
            match seconds {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        serve(server, listener, stop).await?;
        println!("stopped");
        Ok(())
    })
}
