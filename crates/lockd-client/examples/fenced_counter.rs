//! Increments a counter in a file under an exclusive lock, and records the fencing token
//! beside it so that a stale holder can be detected.
//!
//! ```sh
//! cargo run --example fenced_counter -- 127.0.0.1:7531 s3cret /tmp/counter
//! ```

use std::time::Duration;

use lockd_client::{Client, Mode};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(key), Some(path)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: fenced_counter ADDR AUTH_KEY FILE");
    };
    let client = Client::connect(&addr, &key).await?;
    let guard = client
        .acquire(Mode::Ex, &[path.as_str()], Duration::from_secs(10))
        .await?;
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let (count, last_token) = text.trim().split_once(' ').map_or((0u64, 0u64), |(c, t)| {
        (c.parse().unwrap_or(0), t.parse().unwrap_or(0))
    });
    // The resource's side of fencing: never accept an older token than the last writer's.
    anyhow::ensure!(
        guard.token() > last_token,
        "stale lock: token {} <= {last_token}",
        guard.token()
    );
    anyhow::ensure!(
        !guard.may_be_lost(),
        "connection lost while holding the lock"
    );
    std::fs::write(&path, format!("{} {}\n", count + 1, guard.token()))?;
    println!("counter is now {} (token {})", count + 1, guard.token());
    guard.release().await?;
    Ok(())
}
