//! An interceptor stack from code: zstd compression above AES-256-GCM encryption above the
//! TCP failure detector, as a configured node would run it, with cluster keys on every frame
//! and beacon. Two processes in two terminals see each other, exchange an encrypted message
//! each second, and a killed one (Ctrl-C, or `kill -9`) is reported within milliseconds:
//!
//! ```sh
//! cargo run -p cohort --example secure_stack
//! ```

// An example program: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use cohort::interceptors::compression::{Algorithm, CompressionConfig};
use cohort::interceptors::encryption::{EncryptionConfig, KeyConfig};
use cohort::prelude::*;

struct Print;

impl ChannelListener for Print {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        println!(
            "from {}: {}",
            msg.from,
            String::from_utf8_lossy(&msg.payload)
        );
        Ok(())
    }
}

struct Events;

impl MembershipListener for Events {
    fn on_event(&self, event: &MembershipEvent) {
        println!("membership: {event:?}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Top first: compression must be above encryption (encrypted bytes do not compress), and
    // encryption above the failure detector; the builder refuses another order.
    let mut stack = vec![
        InterceptorConfig::Compression(CompressionConfig {
            algorithm: Algorithm::Zstd,
            ..CompressionConfig::default()
        }),
        InterceptorConfig::Encryption(EncryptionConfig {
            // In production the 32 bytes come from a secrets store.
            keys: vec![KeyConfig::from_bytes(
                1,
                *b"an example 32-byte secret key!!!",
            )],
            ..EncryptionConfig::default()
        }),
    ];
    stack.extend(default_stack()); // tcp_ping, tcp_failure_detector
    let cluster_key = ClusterKey::new(*b"an example cluster secret")?;
    let (builder, _handles) = GroupChannel::builder()
        .keys(KeyRing::new(vec![cluster_key])?)
        .transport(TransportConfig {
            port: 0,
            ..TransportConfig::default()
        })
        .membership(MembershipSetup {
            config: MembershipConfig {
                cluster: "secure-example".into(),
                ..MembershipConfig::default()
            },
            multicast: Some(MulticastConfig::default()),
            static_members: None,
            dns: None,
        })
        .listener(Arc::new(Print))
        .membership_listener(Arc::new(Events))
        .stack(&stack)?;
    let channel = builder.start().await?;
    println!("started as {}", channel.local().id);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let members = channel.members();
                if !members.is_empty() {
                    let text = format!("hello from {}", channel.local().id.short());
                    if let Err(e) = channel.send_wait(&members, text.into(), SendOptions::USE_ACK).await {
                        println!("{e}");
                    }
                }
            }
        }
    }
    channel.stop().await;
    Ok(())
}
