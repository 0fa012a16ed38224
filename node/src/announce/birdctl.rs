//! BIRD's control socket: ask `show protocols` and read each BGP session's state (the parse is
//! pure; the query is a few lines over a Unix socket, the same text `birdc` prints).

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One BGP session as BIRD reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// BIRD's protocol name (`peer1`, ...).
    pub name: String,
    /// BIRD's protocol state: `up`, `start`, `down`, ...
    pub state: String,
    /// The BGP state: `Established`, `Active`, `Connect`, `Idle`, ...
    pub bgp_state: String,
    /// The rest of BIRD's info column (e.g. the last error).
    pub info: String,
    /// The peer's address and AS number, from the node's `[[bgp.peers]]` (BIRD's table names
    /// the protocol only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
}

impl Session {
    pub fn up(&self) -> bool {
        self.bgp_state == "Established"
    }

    /// `peer1 (198.18.1.1 AS64500)`, or the protocol name alone when the peer is not known.
    pub fn peer(&self) -> String {
        match (self.address, self.asn) {
            (Some(a), Some(n)) => format!("{} ({a} AS{n})", self.name),
            _ => self.name.clone(),
        }
    }
}

const BGP_STATES: [&str; 7] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
    "Close",
];

/// Parses the reply to `show protocols` (reply code 1002 lines, continuation lines start with
/// a space); keeps the BGP protocols.
pub fn parse_protocols(reply: &str) -> Vec<Session> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in reply.lines() {
        let body = if let Some(rest) = line.strip_prefix("1002-") {
            in_table = true;
            rest
        } else if let Some(rest) = line.strip_prefix(' ') {
            if !in_table {
                continue;
            }
            rest
        } else {
            in_table = false;
            continue;
        };
        let words: Vec<&str> = body.split_whitespace().collect();
        if words.len() < 4 || words[1] != "BGP" {
            continue;
        }
        let pos = words.iter().position(|w| BGP_STATES.contains(w));
        let (bgp_state, info) = match pos {
            Some(i) => (words[i].to_string(), words[i + 1..].join(" ")),
            None => (String::new(), String::new()),
        };
        out.push(Session {
            name: words[0].to_string(),
            state: words[3].to_string(),
            bgp_state,
            info,
            address: None,
            asn: None,
        });
    }
    out
}

/// Sends one command and returns the reply up to its final line (`NNNN ` with a space).
pub async fn query(control: &Path, command: &str) -> std::io::Result<String> {
    let fut = async {
        let stream = tokio::net::UnixStream::connect(control).await?;
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        // Greeting: "0001 BIRD 2.0.12 ready."
        lines.next_line().await?;
        w.write_all(format!("{command}\n").as_bytes()).await?;
        let mut reply = String::new();
        while let Some(line) = lines.next_line().await? {
            let done = line.len() >= 5
                && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && line.as_bytes()[4] == b' ';
            reply.push_str(&line);
            reply.push('\n');
            if done {
                break;
            }
        }
        Ok(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "BIRD did not answer"))?
}

pub async fn sessions(control: &Path) -> std::io::Result<Vec<Session>> {
    Ok(parse_protocols(&query(control, "show protocols").await?))
}

/// Routes in BIRD's tables (`show route count`): with `import none` on every session these
/// are the VIP routes learned from the kernel table, i.e. what BIRD exports.
pub fn parse_route_count(reply: &str) -> u64 {
    reply
        .lines()
        .filter(|l| l.contains(" routes for "))
        .filter_map(|l| {
            let body = l.get(5..).unwrap_or(l).trim_start();
            body.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

pub async fn exported_routes(control: &Path) -> std::io::Result<u64> {
    Ok(parse_route_count(
        &query(control, "show route count").await?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_routes_over_tables() {
        let reply = "0014-2 of 2 routes for 2 networks in table master4\n0014-1 of 1 routes for 1 networks in table master6\n0000 \n";
        assert_eq!(parse_route_count(reply), 3);
        assert_eq!(
            parse_route_count("0014-0 of 0 routes for 0 networks in table master4\n0000 \n"),
            0
        );
    }

    use super::*;

    #[test]
    fn parses_birds_protocol_table() {
        let reply = "2002-Name       Proto      Table      State  Since         Info\n\
1002-device1    Device     ---        up     08:00:48.512  \n \
shoal_kernel4 Kernel     master4    up     08:00:48.512  \n \
bfd1       BFD        ---        up     08:00:48.512  \n \
peer1      BGP        ---        up     08:00:49.520  Established   \n \
peer2      BGP        ---        start  08:00:48.512  Active        Socket: Connection refused\n\
0000 \n";
        let s = parse_protocols(reply);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "peer1");
        assert!(s[0].up());
        assert_eq!(s[1].state, "start");
        assert_eq!(s[1].bgp_state, "Active");
        assert_eq!(s[1].info, "Socket: Connection refused");
        assert!(!s[1].up());
    }

    #[test]
    fn ignores_other_replies() {
        assert!(parse_protocols("8001 Syntax error\n").is_empty());
        assert!(parse_protocols("").is_empty());
    }
}
