//! The command line: every subcommand and flag of the `shoal` binary.
//!
//! The manifests' container args are parsed with this same parser in a test, so flags and
//! manifests cannot drift apart. The flags of `shoal run` are [`RunSettings`] (config/settings.rs),
//! the same struct the `--config` file is read into.

pub use crate::config::RunSettings;
use crate::health::report::Shown;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SHOAL_COMMIT"), ")"),
    about = "A portable layer-4 load balancer for Kubernetes"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load-balancer daemon.
    Run(Box<RunSettings>),
    /// Print the cluster-wide view, asking any one node.
    Status(StatusArgs),
    /// Print the rule table at the head, asking any one node.
    Table(NodeArgs),
    /// Print what one node's dataplane holds (read back from it, all pages of one read).
    Dataplane(DataplaneArgs),
    /// Create and manage the cluster's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Validate a rules file and print a summary.
    Check(CheckArgs),
    /// Start a local cluster (3 nodes unless --nodes says otherwise) on 127.0.0.1, with backends
    /// on 127.0.0.2-3, and walk through a publisher takeover.
    Demo(DemoArgs),
    /// Prepare a backend for tunnel mode (the init container of backend pods; needs NET_ADMIN).
    BackendInit(BackendInitArgs),
    /// The announce watchdog `shoal run` starts for itself (withdraws when shoal freezes or dies).
    #[command(hide = true)]
    AnnounceGuard(GuardArgs),
    /// Write the sysctls `shoal run --dataplane ipvs` needs into this network namespace (the
    /// privileged init container of LB pods: /proc/sys is read-only in unprivileged ones).
    Sysctls(SysctlsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Static,
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    Memory,
    Ipvs,
}

/// Who may create IPVS services in this node's network namespace (`--ipvs-table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpvsTable {
    /// Others may too (kube-proxy in IPVS mode, an operator): before removing everything with
    /// one flush, Shoal lists the kernel's services and flushes only if all are its own.
    Shared,
    /// Shoal alone (its own network namespace, a dedicated LB node): removing everything is
    /// one bare flush, which would also take a service someone else created since the last
    /// full read.
    Exclusive,
}

impl From<IpvsTable> for shoal_dataplane::TableOwnership {
    fn from(t: IpvsTable) -> Self {
        match t {
            IpvsTable::Shared => shoal_dataplane::TableOwnership::Shared,
            IpvsTable::Exclusive => shoal_dataplane::TableOwnership::Exclusive,
        }
    }
}

/// Where source ranges (`loadBalancerSourceRanges`, `source_ranges`) are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFilterKind {
    /// A table `inet shoal` in this node's network namespace (needs CAP_NET_ADMIN).
    Nftables,
    /// Kept in memory only: nothing is enforced (tests, the memory dataplane).
    Memory,
}

/// How this node brings client traffic to itself (see docs/announce.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceKind {
    /// Announce nothing (the network is set up by other means).
    None,
    /// Host routes over BGP through BIRD 2 (`[bgp]` in the config file).
    Bgp,
    /// Answer ARP/NDP for the VIPs this node owns on `--interface`.
    L2,
}

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Admin address of any node, host:port (its --admin, not its gossip --listen).
    #[arg(long, default_value = "127.0.0.1:9100", value_parser = parse_admin_node)]
    pub node: String,
    /// File holding the admin API's bearer token (when the nodes run with --admin-token-file).
    #[arg(long, env = "SHOAL_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Which health-checked backends to list: those down or that some checker does not report
    /// up (`problems`), every one (`all`: a line each, over 100 MB of JSON at 300,000), or
    /// none; the counts come with each.
    #[arg(long, value_enum, default_value_t = Shown::Problems)]
    pub health: Shown,
    /// The health report of this service only (its name as `shoal table` shows it).
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DataplaneArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA and node certificates in DIR.
    Init(CertsInitArgs),
    /// Issue node certificates from an existing CA (new nodes, renewals, CA rotation).
    Issue(CertsIssueArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CertsInitArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = shoal_gossip::DEFAULT_CLUSTER_ID)]
    pub cluster: String,
    /// Comma-separated node ids to issue certificates for.
    #[arg(long, value_delimiter = ',', default_value = "shoal")]
    pub nodes: Vec<String>,
    /// Validity of the CA, in days.
    #[arg(long, default_value_t = shoal_gossip::certs::CA_DAYS_DEFAULT)]
    pub ca_days: u32,
    /// Validity of the node certificates, in days.
    #[arg(long, default_value_t = shoal_gossip::certs::NODE_DAYS_DEFAULT)]
    pub node_days: u32,
}

#[derive(Debug, Clone, Args)]
pub struct CertsIssueArgs {
    /// Folder holding the issuing CA's ca.pem and ca.key.
    #[arg(long)]
    pub ca_dir: PathBuf,
    /// Comma-separated node ids; each gets OUT/<id>/{ca.pem,node.pem,node.key}.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    #[arg(long)]
    pub out: PathBuf,
    /// Validity of the node certificates, in days.
    #[arg(long, default_value_t = shoal_gossip::certs::NODE_DAYS_DEFAULT)]
    pub node_days: u32,
    /// More CA certificates the nodes trust besides the issuing CA (the other CA during a
    /// rotation); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    pub also_trust: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[arg(long)]
    pub rules: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Number of nodes, 2 to 9.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// First port. The demo uses ports up to 80 above it on 127.0.0.1: gossip from the first
    /// port, admin APIs from 40 above, and its backends' service 80 above (on 127.0.0.2-3).
    #[arg(long, default_value_t = 17900)]
    pub base_port: u16,
    /// Exit after the walkthrough instead of running until Ctrl-C.
    #[arg(long)]
    pub exit_after: bool,
}

#[derive(Debug, Clone, Args)]
// One of the two at least; without the group clap named only --vip as missing.
#[command(group(clap::ArgGroup::new("serves").args(["vip", "pool"]).required(true).multiple(true)))]
pub struct BackendInitArgs {
    /// VIPs this backend serves (comma-separated or repeated), each put on tunl0.
    #[arg(long, value_delimiter = ',')]
    pub vip: Vec<std::net::IpAddr>,
    /// VIP pools (CIDR, comma-separated or repeated): every address of each pool is accepted
    /// through a local route on lo, so VIPs allocated after the pod started work too.
    #[arg(long, value_delimiter = ',')]
    pub pool: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Args)]
pub struct SysctlsArgs {
    /// Only compare: print what differs and exit non-zero if anything does; write nothing.
    #[arg(long)]
    pub check: bool,
    /// Also the ARP settings L2 mode needs on this interface (`shoal run --announce l2
    /// --interface IF`): arp_ignore=1, arp_announce=2.
    #[arg(long)]
    pub interface: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    #[arg(long)]
    pub deadline_ms: u64,
    /// Routing table whose Shoal routes to delete.
    #[arg(long)]
    pub table: Option<u32>,
    /// Interface whose L2 VIPs to remove.
    #[arg(long)]
    pub interface: Option<String>,
}

/// `--node`: an admin API's `host:port`. A pasted `http://` and one trailing `/` are dropped;
/// anything else that is not `host:port` is refused before any request is made (it used to
/// become `http://http://...`).
pub fn parse_admin_node(given: &str) -> Result<String, String> {
    let trimmed = given.trim();
    let scheme = trimmed
        .split_once("://")
        .map(|(scheme, rest)| (scheme.to_ascii_lowercase(), rest));
    let bare = match scheme {
        None => trimmed,
        Some((scheme, rest)) if scheme == "http" => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{given:?}: the admin API speaks plain HTTP, not {scheme}; give host:port \
                 (e.g. 127.0.0.1:9100)"
            ))
        }
    };
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.contains('/') {
        return Err(format!(
            "{given:?} has a path; give the admin address as host:port (e.g. 127.0.0.1:9100)"
        ));
    }
    crate::config::check_seed(bare)?;
    Ok(bare.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seeds_split_on_commas() {
        let cli = Cli::try_parse_from([
            "shoal",
            "run",
            "--seeds",
            "a:1,b:2",
            "--listen",
            "127.0.0.1:7946",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.seeds.unwrap(), vec!["a:1", "b:2"]);
    }

    #[test]
    fn backend_init_takes_vips_or_pools_and_names_both_when_neither_is_given() {
        assert!(Cli::try_parse_from(["shoal", "backend-init", "--pool", "203.0.113.0/28"]).is_ok());
        assert!(Cli::try_parse_from(["shoal", "backend-init", "--vip", "203.0.113.1"]).is_ok());
        let err = Cli::try_parse_from(["shoal", "backend-init"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--vip") && err.contains("--pool"), "{err}");
    }

    #[test]
    fn admin_node_addresses_are_host_port_and_pasted_urls_are_forgiven() {
        for (given, want) in [
            ("127.0.0.1:9100", "127.0.0.1:9100"),
            ("http://127.0.0.1:21201", "127.0.0.1:21201"),
            ("HTTP://shoal-0.shoal:9100/", "shoal-0.shoal:9100"),
            (" [::1]:9100 ", "[::1]:9100"),
        ] {
            assert_eq!(parse_admin_node(given).as_deref(), Ok(want), "{given}");
        }
        for (given, why) in [
            ("https://127.0.0.1:9100", "plain HTTP"),
            ("http://127.0.0.1:9100/v1/cluster", "has a path"),
            ("127.0.0.1", "host:port"),
            ("127.0.0.1:0", "outside 1-65535"),
            ("::1:9100", "ambiguous"),
            ("", "host:port"),
        ] {
            let err = parse_admin_node(given).expect_err(given);
            assert!(err.contains(why), "{given}: {err}");
        }
    }
}
