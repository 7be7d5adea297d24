//! A chat across processes: every line typed is sent to every member (USE_ACK, one await per
//! line), and every line received is printed. Members find each other by multicast on the
//! loopback interface. Run it in two or three terminals:
//!
//! ```sh
//! cargo run -p cohort --example chat -- alice
//! cargo run -p cohort --example chat -- bob
//! ```

// An example program: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;

use cohort::prelude::*;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Print;

impl ChannelListener for Print {
    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        println!("{}", String::from_utf8_lossy(&msg.payload));
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "anonymous".into());
    let channel = GroupChannel::builder()
        .transport(TransportConfig {
            port: 0,
            ..TransportConfig::default()
        })
        .membership(MembershipSetup {
            config: MembershipConfig {
                cluster: "chat".into(),
                ..MembershipConfig::default()
            },
            multicast: Some(MulticastConfig::default()),
            static_members: None,
            dns: None,
        })
        .listener(Arc::new(Print))
        .start()
        .await?;
    eprintln!(
        "{name} joined as {}; type lines, Ctrl-D to leave",
        channel.local().id
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let members = channel.members();
        if members.is_empty() {
            eprintln!("(nobody else here yet)");
            continue;
        }
        let text = format!("{name}: {line}");
        if let Err(e) = channel
            .send_wait(&members, text.into(), SendOptions::USE_ACK)
            .await
        {
            eprintln!("({e})");
        }
    }
    channel.stop().await;
    Ok(())
}
