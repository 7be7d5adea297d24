//! Cache invalidation across processes: each process keeps a local cache; `set KEY VALUE`
//! broadcasts an invalidation (SYNCHRONIZED_ACK: it returns once every member's listener
//! dropped the key), and `get KEY` asks every member by RPC who holds a value for it.
//! Members find each other by multicast on the loopback interface. In two terminals:
//!
//! ```sh
//! cargo run -p cohort --example cache_invalidation
//! ```
//! then type `set a 1` in one and `get a` in the other.

// An example program: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cohort::prelude::*;
use tokio::io::{AsyncBufReadExt, BufReader};

type Cache = Arc<Mutex<HashMap<String, String>>>;

/// Drops the keys other members invalidate.
struct Invalidate(Cache);

impl ChannelListener for Invalidate {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        let key = String::from_utf8_lossy(&msg.payload).into_owned();
        self.0.lock().map_err(|_| "cache poisoned")?.remove(&key);
        Ok(())
    }
}

/// Answers `get` requests from the local cache.
struct Lookup(Cache);

impl RpcHandler for Lookup {
    fn reply_request(&self, _from: &Member, request: &Bytes) -> Option<Bytes> {
        let key = String::from_utf8_lossy(request);
        let cache = self.0.lock().ok()?;
        cache.get(key.as_ref()).map(|v| Bytes::from(v.clone()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cache: Cache = Arc::default();
    let channel = GroupChannel::builder()
        .transport(TransportConfig {
            port: 0,
            ..TransportConfig::default()
        })
        .membership(MembershipSetup {
            config: MembershipConfig {
                cluster: "cache-example".into(),
                ..MembershipConfig::default()
            },
            multicast: Some(MulticastConfig::default()),
            static_members: None,
            dns: None,
        })
        .listener(Arc::new(Invalidate(cache.clone())))
        .start()
        .await?;
    let rpc = RpcChannel::new(
        &channel,
        "cache",
        Arc::new(Lookup(cache.clone())),
        SendOptions::NONE,
    )?;
    eprintln!("ready: `set KEY VALUE`, `get KEY`; Ctrl-D to leave");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set", key, value] => {
                cache
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert((*key).into(), (*value).into());
                let members = channel.members();
                if members.is_empty() {
                    println!("set locally (alone)");
                    continue;
                }
                let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
                match channel
                    .send_wait(&members, key.to_string().into(), sync)
                    .await
                {
                    Ok(o) => println!("invalidated on {} members", o.results.len()),
                    Err(e) => println!("invalidation incomplete: {e}"),
                }
            }
            ["get", key] => {
                let answer = rpc
                    .call(
                        &channel.members(),
                        key.to_string().into(),
                        CallOptions::default(),
                    )
                    .await?;
                for r in &answer.replies {
                    println!("{} has {}", r.from, String::from_utf8_lossy(&r.payload));
                }
                println!(
                    "{} answered, {} did not ({} unreachable)",
                    answer.replies.len(),
                    answer.no_reply.len(),
                    answer.failed.len()
                );
            }
            _ => println!("?"),
        }
    }
    channel.stop().await;
    Ok(())
}
