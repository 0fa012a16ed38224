//! [`RunSettings`]: the one input type of `shoal run`. Each setting is both a flag
//! (`--resync-interval-s`) and a key of the `--config` TOML file (`resync_interval_s`), declared
//! once here; the file and the command line are parsed into this same struct and layered with
//! [`RunSettings::over`] (a flag wins over the file). Defaults and bounds are applied after the
//! layering, once, by [`super::NodeConfig::from_settings`]: no setting has a default here.

use crate::announce::settings::BgpFile;
use crate::cli::{AnnounceKind, DataplaneKind, IpvsTable, SourceFilterKind, SourceKind};
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How one layer's value combines with a lower layer's: an `Option` given in the upper layer
/// wins; a switch (`--insecure`) is on if either layer turns it on. So a flag cannot turn off
/// a switch the file set to true (a flag switch has no "off" form): the configmap comment and
/// docs/kubernetes.md say so.
trait Layer {
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

impl Layer for bool {
    fn over(self, lower: Self) -> Self {
        self || lower
    }
}

/// Declares the settings struct and, from the same field list, the layering and the list of
/// names, so a new setting cannot be forgotten in either.
macro_rules! layered_settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Every setting's name (the config key; the flag is the same with `-` for `_`).
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// `self` layered over `lower`: what `self` sets wins, the rest comes from `lower`.
            pub fn over(self, lower: Self) -> Self {
                $name { $( $field: Layer::over(self.$field, lower.$field), )* }
            }
        }
    };
}

layered_settings! {
    /// Settings of `shoal run`. Each may also be set in the TOML file given by `--config`
    /// (same names with `_` for `-`); a flag on the command line wins over the file.
    #[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RunSettings {
        /// TOML file with any of these settings.
        #[arg(long)]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// This node's id in the mesh (default: the hostname): ASCII letters, digits, `-`, `_`,
        /// `.`, as `shoal certs init` accepts. Ids order numerically-aware
        /// (`shoal-2` before `shoal-10`); when the publisher is gone, the lowest live id takes over.
        #[arg(long)]
        pub node_id: Option<String>,
        /// QUIC peer endpoint, IP:port (not port 0; an address, not a host name); also the
        /// address peers reach this node at.
        #[arg(long, value_parser = ip_and_port)]
        pub listen: Option<SocketAddr>,
        /// Admin HTTP API, IP:port (not port 0; an address, not a host name).
        #[arg(long, value_parser = ip_and_port)]
        pub admin: Option<SocketAddr>,
        /// Comma-separated peers to join through: IPv4:port, [IPv6]:port or hostname:port (port
        /// 1-65535); DNS names are re-resolved. Required unless --single-node. A node must hear
        /// a seed that resolves to another address before it is ready or publishes; seeds that
        /// name only this node (its --listen address) or do not resolve yet (the first pod of a
        /// StatefulSet) let it start the cluster alone.
        #[arg(long, value_delimiter = ',')]
        pub seeds: Option<Vec<String>>,
        /// Cluster id; nodes of other clusters are ignored (default: shoal).
        #[arg(long)]
        pub cluster: Option<String>,
        /// Folder holding ca.pem, node.pem and node.key.
        #[arg(long)]
        pub tls_dir: Option<PathBuf>,
        /// Folder for what must survive a restart: an epoch reserved above every epoch this
        /// node stamped (file `epoch`), so a restarted publisher never stamps a version twice,
        /// and its last generation (file `generation`). Without it a warning is logged.
        #[arg(long)]
        pub state_dir: Option<PathBuf>,
        /// Run without TLS material (throwaway certificates, no peer authentication).
        #[arg(long)]
        #[serde(default)]
        pub insecure: bool,
        /// Trust any cluster certificate for any node id (one certificate shared by all nodes).
        /// Without it a peer may only speak for the node id its certificate names (docs/security.md).
        #[arg(long)]
        #[serde(default)]
        pub cluster_identity_only: bool,
        /// Run as a cluster of its own: --seeds may be left out, and when none of the seeds
        /// answers the node is ready and publishes alone after the startup patience. Without it
        /// a node needs --seeds, and one whose seeds resolve to other addresses but never answer
        /// stays not ready and never publishes until it hears the cluster.
        #[arg(long)]
        #[serde(default)]
        pub single_node: bool,
        /// Where the publisher reads the rule table from (default: static).
        #[arg(long, value_enum)]
        pub source: Option<SourceKind>,
        /// The rules file of the static source.
        #[arg(long)]
        pub rules: Option<PathBuf>,
        /// Where rules are programmed (default: memory).
        #[arg(long, value_enum)]
        pub dataplane: Option<DataplaneKind>,
        /// Where source ranges are enforced (default: nftables with the ipvs dataplane, memory
        /// with the memory dataplane).
        #[arg(long, value_enum)]
        pub source_filter: Option<SourceFilterKind>,
        /// Remove this node's VIPs and services on exit (default: leave them in place).
        #[arg(long)]
        #[serde(default)]
        pub cleanup_on_exit: bool,
        /// Seconds between full resyncs that repair drift in the dataplane (default 10, 1-86400).
        #[arg(long)]
        pub resync_interval_s: Option<u64>,
        /// Who may create IPVS services in this network namespace: shared (default; Shoal
        /// lists the services before a flush) or exclusive (Shoal alone: removing everything
        /// is one bare flush). The overlays run with hostNetwork, next to kube-proxy: shared.
        #[arg(long, value_enum)]
        pub ipvs_table: Option<IpvsTable>,
        /// Seconds a removed backend or service stays at weight 0 before it is deleted
        /// (default 0: at once, 30 with the kubernetes source; at most 86400). A backend
        /// removed from a UDP service goes at once whatever this says.
        #[arg(long)]
        pub drain_s: Option<u64>,
        /// How many nodes probe each backend (default 2, 1-16).
        #[arg(long)]
        pub health_checkers: Option<usize>,
        /// loadBalancerClass of the Services this cluster serves (kubernetes source; default
        /// shoal.io/lb).
        #[arg(long)]
        pub lb_class: Option<String>,
        /// Comma-separated CIDRs of the VIPs of an install limited to one namespace (kubernetes
        /// source with --namespace); a cluster-wide install reads ShoalPool objects instead.
        #[arg(long, value_delimiter = ',')]
        pub vip_pools: Option<Vec<String>>,
        /// Watch only this namespace, with a namespaced Role (kubernetes source).
        #[arg(long)]
        pub namespace: Option<String>,
        /// Kubeconfig file (default: in-cluster config, then $KUBECONFIG).
        #[arg(long)]
        pub kubeconfig: Option<PathBuf>,
        /// Name of the dummy interface that holds the VIPs (ipvs dataplane; default shoal0).
        #[arg(long)]
        pub vip_interface: Option<String>,
        /// How to bring client traffic here: none, bgp (needs `[bgp]` in --config) or l2.
        #[arg(long, value_enum)]
        pub announce: Option<AnnounceKind>,
        /// L2 mode: the interface clients reach this node on (ARP/NDP are answered there).
        #[arg(long)]
        pub interface: Option<String>,
        /// On SIGTERM: withdraw first, keep the rules this many seconds for flows in flight, exit
        /// (default 5, at most 3600).
        #[arg(long)]
        pub shutdown_drain_s: Option<u64>,
        /// Withdraw a VIP none of whose services has a healthy backend (default true).
        #[arg(long)]
        pub withdraw_when_no_backends: Option<bool>,
        /// The watchdog withdraws this node's announcements when shoal misses its announce step
        /// for this long (a frozen process; default 1000, 200-60000).
        #[arg(long)]
        pub freeze_withdraw_ms: Option<u64>,
        /// File holding a bearer token that the admin API's /v1/* requires (/healthz, /readyz
        /// and /metrics stay open for probes and Prometheus).
        #[arg(long)]
        pub admin_token_file: Option<PathBuf>,
        /// The `[bgp]` table (config file only: peers do not fit on a command line).
        #[arg(skip)]
        pub bgp: Option<BgpFile>,
    }
}

impl RunSettings {
    /// Settings with no flag, only a table in the `--config` file.
    pub const FILE_ONLY: &'static [&'static str] = &["bgp"];

    /// How to give `name`, for errors: its flag (`resync_interval_s` -> `--resync-interval-s`),
    /// or for a file-only setting the table of the config file (there is no `--bgp`).
    pub fn flag_of(name: &str) -> String {
        if Self::FILE_ONLY.contains(&name) {
            format!("the [{name}] table of the --config file")
        } else {
            format!("--{}", name.replace('_', "-"))
        }
    }
}

/// `--listen` and `--admin`: an address to bind, so an IP and a port. clap's own parser said
/// only "invalid socket address syntax" to `localhost:7946` (a probe).
fn ip_and_port(given: &str) -> Result<SocketAddr, String> {
    given.parse().map_err(|_| {
        format!(
            "{given:?} is not IP:port; give an address and a port such as 127.0.0.1:7946 or \
             [::1]:7946 (a host name is not accepted here)"
        )
    })
}
