//! The daemon's settings: [`RunSettings`] from the command line layered over the same struct
//! read from the `--config` file, then checked once, with defaults, into a [`NodeConfig`].
//!
//! Each default comes from the crate or module that owns the setting (the mesh's from
//! `shoal-gossip`, the VIP interface from `shoal-dataplane`, the announce settings from
//! `announce::settings`, health and reconcile from their modules); every bound is checked here
//! at start-up, and an error names the setting as a config key and as a flag.

mod settings;
#[cfg(test)]
mod tests;

pub use settings::RunSettings;

use crate::announce::decide::Mode;
use crate::announce::settings::{self as announce_settings, bgp_settings, AnnounceSettings};
use crate::cli::{AnnounceKind, DataplaneKind, SourceFilterKind, SourceKind};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("missing setting `{0}` (give {flag} or set `{0}` in the config file)", flag = RunSettings::flag_of(.0))]
    Missing(&'static str),
    #[error("setting `{field}` ({flag}): {message}", flag = RunSettings::flag_of(.field))]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Announce(#[from] crate::announce::settings::SettingError),
    #[error(
        "no TLS material: give --tls-dir (made by `shoal certs init`), or --insecure to run without peer authentication"
    )]
    NoTls,
}

#[derive(Debug, Clone)]
pub enum Source {
    Static { rules: PathBuf },
    Kubernetes(KubernetesSettings),
}

#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    pub lb_class: String,
    /// Only with `namespace` (cluster-wide installs read ShoalPool objects); checked at start-up.
    pub vip_pools: Vec<String>,
    /// Watch only this namespace (an install with a namespaced Role).
    pub namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
}

impl KubernetesSettings {
    pub fn to_source_config(&self) -> crate::source::kubernetes::KubernetesConfig {
        crate::source::kubernetes::KubernetesConfig {
            load_balancer_class: self.lb_class.clone(),
            namespace: self.namespace.clone(),
            vip_pools: self.vip_pools.clone(),
            kubeconfig: self.kubeconfig.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub seeds: Vec<String>,
    pub cluster: String,
    /// `None` only when running `--insecure`.
    pub tls_dir: Option<PathBuf>,
    /// Where the epoch file lives (see `RunSettings::state_dir`).
    pub state_dir: Option<PathBuf>,
    /// Trust any cluster certificate for any node id (shared-certificate mode).
    pub cluster_identity_only: bool,
    /// May run alone when no seed answers.
    pub single_node: bool,
    pub source: Source,
    pub dataplane: DataplaneKind,
    pub source_filter: SourceFilterKind,
    pub cleanup_on_exit: bool,
    pub resync_interval: Duration,
    /// Whether Shoal alone creates IPVS services here (`--ipvs-table`, default shared).
    pub ipvs_table: shoal_dataplane::TableOwnership,
    pub drain: Duration,
    pub health_checkers: usize,
    pub vip_interface: String,
    pub announce: AnnounceSettings,
    /// Bearer token required on the admin API's `/v1/*` (read from `--admin-token-file`).
    pub admin_token: Option<String>,
    /// Where `admin_token` was read from (read again while the node runs).
    pub admin_token_file: Option<PathBuf>,
}

/// Bounds of the numeric settings, checked at start-up so that no later arithmetic on them
/// can overflow (a huge `--resync-interval-s` used to panic inside the reconcile task).
pub const RESYNC_INTERVAL_S: RangeInclusive<u64> = 1..=86_400;
pub const DRAIN_S: RangeInclusive<u64> = 0..=86_400;
pub const HEALTH_CHECKERS: RangeInclusive<usize> = 1..=16;
pub const MAX_SEEDS: usize = 1_000;
/// loadBalancerClasses: a DNS name's length (cluster ids: `shoal_gossip::certs::check_cluster_id`).
pub const NAME_LEN: RangeInclusive<usize> = 1..=253;
/// Linux interface names (IFNAMSIZ is 16 with the terminating NUL).
pub const INTERFACE_NAME_LEN: RangeInclusive<usize> = 1..=15;
/// The `--config` file (a few settings and a `[bgp]` table; 1 MiB leaves room for comments).
pub const CONFIG_FILE_CAP_BYTES: u64 = shoal_gossip::small_file::SETTINGS_FILE_CAP_BYTES;
/// Admin tokens: long enough to resist guessing, short enough to be a token and not a file.
pub const ADMIN_TOKEN_LEN: RangeInclusive<usize> = 16..=4_096;

/// A removed backend's connections are kept this long by default: none with the static source
/// (its operator removes backends on purpose), Kubernetes' default termination grace with the
/// kubernetes source (a terminating pod still serves).
const DEFAULT_DRAIN_S_STATIC: u64 = 0;
const DEFAULT_DRAIN_S_KUBERNETES: u64 = 30;

fn bounded<T: PartialOrd + std::fmt::Display>(
    field: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("{value} is outside {}-{}", range.start(), range.end()),
        ))
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// A name without spaces or control characters, of a length in `len`.
fn name(
    field: &'static str,
    value: String,
    len: RangeInclusive<usize>,
) -> Result<String, ConfigError> {
    if !len.contains(&value.len()) || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!(
                "{value:?} must be {}-{} characters without spaces",
                len.start(),
                len.end()
            ),
        ));
    }
    Ok(value)
}

fn interface_name(field: &'static str, value: String) -> Result<String, ConfigError> {
    check_interface_name(&value).map_err(|why| invalid(field, why))?;
    Ok(value)
}

/// A Linux interface name as the kernel's `dev_valid_name` accepts it: 1-15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace (`eth0:1` is an old alias label, not an interface: the
/// kernel refuses it, and Shoal would fail only when it first adds a VIP). Bytes, not
/// characters, as the kernel counts and tests them (its `isspace` includes 0xa0). NUL is
/// refused too: it would end the name early in the kernel's C string.
pub fn check_interface_name(value: &str) -> Result<(), String> {
    let kernel_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0);
    if !INTERFACE_NAME_LEN.contains(&value.len()) {
        return Err(format!(
            "{value:?} must be {}-{} bytes (a Linux interface name)",
            INTERFACE_NAME_LEN.start(),
            INTERFACE_NAME_LEN.end()
        ));
    }
    if value == "." || value == ".." {
        return Err(format!("{value:?} is not an interface name"));
    }
    if value
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || kernel_space(b))
    {
        return Err(format!(
            "{value:?} is not an interface name: Linux refuses '/', ':', spaces and NUL in one \
             (an alias label such as eth0:1 is not an interface: give eth0)"
        ));
    }
    Ok(())
}

/// One seed: `IPv4:port`, `[IPv6]:port` or `hostname:port` (an RFC 1123 DNS name), port
/// 1-65535. Anything else passed the old check (a port after the last `:`) and then failed
/// DNS at every attempt, and a node whose seeds never answer may found a cluster of its own
/// and publish beside the real one. A hostname that does not resolve yet is fine: the pods of a
/// StatefulSet get their names later.
pub fn check_seed(seed: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = seed.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once("]:") else {
            return Err(format!("{seed:?} is not [IPv6]:port"));
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{seed:?}: {ip:?} is not an IPv6 address"));
        }
        (None, port)
    } else {
        let Some((host, port)) = seed.rsplit_once(':') else {
            return Err(format!(
                "{seed:?} is not host:port (IPv4:port, [IPv6]:port or hostname:port)"
            ));
        };
        let ipv6_like = |h: &str| {
            h.bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        };
        if host.contains(':') && ipv6_like(host) {
            // IPv6 without brackets: `2001:db8::1:7946` reads as an address and a port or as
            // one address; refuse rather than guess.
            return Err(match host.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => format!(
                    "{seed:?} is ambiguous (an IPv6 address with or without a port?): write \
                     [{ip}]:{port}"
                ),
                Err(_) => format!("{seed:?}: an IPv6 address is written [address]:port"),
            });
        }
        (Some(host), port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{seed:?}: port {port:?} is not a number"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{seed:?}: port {port} is outside 1-65535")),
    }
    match host {
        None => Ok(()),
        Some(h) if h.parse::<std::net::Ipv4Addr>().is_ok() => Ok(()),
        Some(h) => check_hostname(h).map_err(|why| format!("{seed:?}: {why}")),
    }
}

/// An RFC 1123 host name: labels of 1-63 letters, digits and hyphens, not starting or ending
/// with a hyphen, joined by dots, at most 253 in all. A last label of digits only would be a
/// mistyped IPv4 address (`10.0.0.256`), not a name.
fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("no host before the port".into());
    }
    if host.len() > 253 {
        return Err(format!(
            "the host name is {} characters, over 253",
            host.len()
        ));
    }
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not an IPv4 address or a host name (labels of 1-63 letters, \
                 digits and '-', not starting or ending with '-', joined by dots)"
            ));
        }
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{host:?} is not an IPv4 address"));
    }
    Ok(())
}

/// A listening address: port 0 would bind a random port that nobody is told (the admin port
/// is never logged, and peers are told `--listen` as this node's address).
fn fixed_port(field: &'static str, addr: SocketAddr) -> Result<SocketAddr, ConfigError> {
    if addr.port() == 0 {
        return Err(invalid(
            field,
            format!("{addr}: port 0 would be a random port nobody is told; give a port"),
        ));
    }
    Ok(addr)
}

/// A path setting: an empty one would silently mean the current directory (`state_dir = ""`
/// wrote the epoch file wherever shoal was started).
fn path(field: &'static str, value: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    match value {
        Some(p) if p.as_os_str().is_empty() => Err(invalid(
            field,
            "is empty (that would be the current directory): give a path or leave it out",
        )),
        other => Ok(other),
    }
}

impl NodeConfig {
    /// The settings of `shoal run`: `flags` layered over the `--config` file they name (flags
    /// win), then checked with [`NodeConfig::from_settings`].
    pub fn resolve(flags: &RunSettings) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => relative_to(read_file(path)?, path.parent().unwrap_or(Path::new(""))),
            None => RunSettings::default(),
        };
        Self::from_settings(flags.clone().over(file))
    }

    /// Applies the defaults and checks every bound, once, whichever layer each setting came from.
    pub fn from_settings(s: RunSettings) -> Result<Self, ConfigError> {
        let node_id = match s.node_id.clone() {
            Some(id) => id,
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .ok_or(ConfigError::Missing("node_id"))?,
        };
        // Exactly the ids `shoal certs init` issues certificates for (its check, reused): any
        // other id could never get a certificate naming it.
        shoal_gossip::certs::check_node_id(&node_id).map_err(|e| {
            invalid(
                "node_id",
                format!("{e}: `shoal certs init` cannot issue a certificate for it"),
            )
        })?;
        let announce = announce_settings(&s, &node_id)?;
        let listen = fixed_port("listen", s.listen.ok_or(ConfigError::Missing("listen"))?)?;
        let admin = fixed_port("admin", s.admin.ok_or(ConfigError::Missing("admin"))?)?;
        let tls_dir = path("tls_dir", s.tls_dir.clone())?;
        let state_dir = path("state_dir", s.state_dir.clone())?;
        let rules = path("rules", s.rules.clone())?;
        let kubeconfig = path("kubeconfig", s.kubeconfig.clone())?;
        let admin_token_file = path("admin_token_file", s.admin_token_file.clone())?;
        let seeds = s.seeds.unwrap_or_default();
        if seeds.len() > MAX_SEEDS {
            return Err(invalid(
                "seeds",
                format!("{} seeds is over {MAX_SEEDS}", seeds.len()),
            ));
        }
        for seed in &seeds {
            check_seed(seed).map_err(|why| invalid("seeds", why))?;
        }
        let cluster = s
            .cluster
            .unwrap_or_else(|| shoal_gossip::DEFAULT_CLUSTER_ID.to_string());
        // The mesh owns what a cluster id may be (`shoal certs init` applies the same rule).
        shoal_gossip::certs::check_cluster_id(&cluster).map_err(|_| {
            invalid(
                "cluster",
                format!("{cluster:?} must be 1-253 characters without spaces"),
            )
        })?;
        if tls_dir.is_none() && !s.insecure {
            return Err(ConfigError::NoTls);
        }
        if tls_dir.is_some() && s.insecure {
            return Err(invalid(
                "tls_dir",
                "given with --insecure, which runs without TLS and would ignore it: give one \
                 of the two",
            ));
        }
        let source = match s.source.unwrap_or(SourceKind::Static) {
            SourceKind::Static => {
                // Refused rather than ignored: an operator who set them expects a Kubernetes
                // install (a forgotten `--source kubernetes`), and this node would instead
                // serve the rules file.
                let kubernetes_only = [
                    ("lb_class", s.lb_class.is_some()),
                    ("vip_pools", s.vip_pools.is_some()),
                    ("namespace", s.namespace.is_some()),
                    ("kubeconfig", s.kubeconfig.is_some()),
                ];
                if let Some(&(field, _)) = kubernetes_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        field,
                        "only the kubernetes source reads it, and the source is static: \
                         give --source kubernetes or leave it out",
                    ));
                }
                Source::Static {
                    rules: rules.ok_or(ConfigError::Missing("rules"))?,
                }
            }
            SourceKind::Kubernetes if rules.is_some() => {
                return Err(invalid(
                    "rules",
                    "only the static source reads it, and the source is kubernetes: leave it \
                     out (or give --source static)",
                ))
            }
            SourceKind::Kubernetes => Source::Kubernetes(KubernetesSettings {
                lb_class: name(
                    "lb_class",
                    s.lb_class.unwrap_or_else(|| {
                        crate::source::kubernetes::DEFAULT_LOAD_BALANCER_CLASS.to_string()
                    }),
                    NAME_LEN,
                )?,
                vip_pools: s.vip_pools.unwrap_or_default(),
                namespace: s.namespace,
                kubeconfig,
            }),
        };
        if let Source::Kubernetes(k) = &source {
            // The source's own check parses the pools and names the setting.
            k.to_source_config()
                .check()
                .map_err(|p| invalid(p.setting, p.message))?;
        }
        let default_drain_s = match &source {
            Source::Kubernetes(_) => DEFAULT_DRAIN_S_KUBERNETES,
            Source::Static { .. } => DEFAULT_DRAIN_S_STATIC,
        };
        let health_checkers = bounded(
            "health_checkers",
            s.health_checkers
                .unwrap_or(crate::health::HealthConfig::default().checkers_per_backend),
            HEALTH_CHECKERS,
        )?;
        let resync_interval_s = bounded(
            "resync_interval_s",
            s.resync_interval_s
                .unwrap_or(crate::reconcile::DEFAULT_RESYNC_INTERVAL_S),
            RESYNC_INTERVAL_S,
        )?;
        let drain_s = bounded("drain_s", s.drain_s.unwrap_or(default_drain_s), DRAIN_S)?;
        let vip_interface = interface_name(
            "vip_interface",
            s.vip_interface
                .clone()
                .unwrap_or_else(|| shoal_dataplane::IpvsOptions::default().interface),
        )?;
        let admin_token = match &admin_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        if seeds.is_empty() && !s.single_node {
            // A node with no seeds has nobody to hear, so nothing holds it back: it became
            // ready and published alone, a second publisher beside the cluster it was meant
            // to join. Only a configured cluster of one may run so. Checked last, so that a
            // mistake in another setting is named first.
            return Err(invalid(
                "seeds",
                "none given: a node without seeds would run as a cluster of its own and \
                 publish beside any other; give --seeds (the other nodes' gossip addresses; \
                 the first pod of a StatefulSet may name itself) or --single-node for a \
                 cluster of one",
            ));
        }
        let dataplane = s.dataplane.unwrap_or(DataplaneKind::Memory);
        // Refused rather than ignored, as the announcement's settings without an announcement:
        // the memory dataplane started without a word (an operator's probe).
        let ipvs_only = [
            ("ipvs_table", s.ipvs_table.is_some()),
            ("vip_interface", s.vip_interface.is_some()),
        ];
        if dataplane != DataplaneKind::Ipvs {
            if let Some(&(field, _)) = ipvs_only.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    field,
                    "only the ipvs dataplane uses it, and this node's is memory: give \
                     --dataplane ipvs or leave it out",
                ));
            }
        }
        Ok(NodeConfig {
            node_id,
            listen,
            admin,
            seeds,
            cluster,
            tls_dir: if s.insecure { None } else { tls_dir },
            state_dir,
            cluster_identity_only: s.cluster_identity_only,
            single_node: s.single_node,
            source,
            dataplane,
            source_filter: s.source_filter.unwrap_or(match dataplane {
                DataplaneKind::Ipvs => SourceFilterKind::Nftables,
                DataplaneKind::Memory => SourceFilterKind::Memory,
            }),
            cleanup_on_exit: s.cleanup_on_exit,
            resync_interval: Duration::from_secs(resync_interval_s),
            ipvs_table: s.ipvs_table.map(Into::into).unwrap_or_default(),
            drain: Duration::from_secs(drain_s),
            health_checkers,
            vip_interface,
            announce,
            admin_token,
            admin_token_file,
        })
    }
}

fn announce_settings(s: &RunSettings, node_id: &str) -> Result<AnnounceSettings, ConfigError> {
    let defaults = AnnounceSettings::default();
    let mode = match s.announce.unwrap_or(AnnounceKind::None) {
        AnnounceKind::None => None,
        AnnounceKind::Bgp => Some(Mode::Bgp),
        AnnounceKind::L2 => Some(Mode::L2),
    };
    let interface = s
        .interface
        .clone()
        .map(|i| interface_name("interface", i))
        .transpose()?;
    if mode == Some(Mode::L2) && interface.is_none() {
        return Err(ConfigError::Missing("interface"));
    }
    // Refused rather than ignored, as the Kubernetes-only settings with a static source: an
    // operator who set one expects what it does (a drain at shutdown, an ARP owner on an
    // interface), and this node would silently not do it.
    let for_one_mode = [
        ("interface", s.interface.is_some(), Mode::L2, "l2"),
        ("bgp", s.bgp.is_some(), Mode::Bgp, "bgp"),
    ];
    for (field, set, wanted, flag) in for_one_mode {
        if set && mode != Some(wanted) {
            return Err(invalid(
                field,
                format!(
                    "only `--announce {flag}` uses it, and this node announces {}: give \
                     --announce {flag} or leave it out",
                    match mode {
                        None => "nothing",
                        Some(Mode::Bgp) => "by BGP",
                        Some(Mode::L2) => "by ARP/NDP (l2)",
                    }
                ),
            ));
        }
    }
    let for_any_mode = [
        ("shutdown_drain_s", s.shutdown_drain_s.is_some()),
        ("freeze_withdraw_ms", s.freeze_withdraw_ms.is_some()),
        (
            "withdraw_when_no_backends",
            s.withdraw_when_no_backends.is_some(),
        ),
    ];
    if mode.is_none() {
        if let Some(&(field, _)) = for_any_mode.iter().find(|(_, set)| *set) {
            return Err(invalid(
                field,
                "only an announcement uses it, and this node announces nothing: give \
                 --announce bgp or l2, or leave it out",
            ));
        }
    }
    let bgp = match (&s.bgp, mode) {
        (Some(b), _) => Some(bgp_settings(b, node_id)?),
        (None, Some(Mode::Bgp)) => {
            return Err(invalid(
                "bgp",
                "missing: `--announce bgp` needs it (local_asn and the peers)",
            ))
        }
        (None, _) => None,
    };
    let freeze_withdraw_ms = bounded(
        "freeze_withdraw_ms",
        s.freeze_withdraw_ms
            .unwrap_or(defaults.freeze_withdraw.as_millis() as u64),
        announce_settings::FREEZE_WITHDRAW_MS,
    )?;
    let shutdown_drain_s = bounded(
        "shutdown_drain_s",
        s.shutdown_drain_s
            .unwrap_or(defaults.shutdown_drain.as_secs()),
        announce_settings::SHUTDOWN_DRAIN_S,
    )?;
    Ok(AnnounceSettings {
        mode,
        interface,
        withdraw_when_no_backends: s
            .withdraw_when_no_backends
            .unwrap_or(defaults.withdraw_when_no_backends),
        shutdown_drain: Duration::from_secs(shutdown_drain_s),
        freeze_withdraw: Duration::from_millis(freeze_withdraw_ms),
        bgp,
    })
}

/// The admin token: the file's content without surrounding whitespace (a Kubernetes Secret
/// mounted as a file, or `openssl rand -hex 32 > token`).
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = read_capped(path, *ADMIN_TOKEN_LEN.end() as u64 + 64).map_err(|e| {
        invalid(
            "admin_token_file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let token = text.trim();
    if !ADMIN_TOKEN_LEN.contains(&token.len()) || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            "admin_token_file",
            format!(
                "the token in {} must be {}-{} ASCII characters from ! to ~ (no spaces)",
                path.display(),
                ADMIN_TOKEN_LEN.start(),
                ADMIN_TOKEN_LEN.end()
            ),
        ));
    }
    Ok(token.to_string())
}

/// Every file `shoal run` reads at start-up goes through this: a regular file (symlinks
/// followed) of at most `cap_bytes`, else an error (`--config /dev/zero` used to hang).
pub fn read_capped(path: &Path, cap_bytes: u64) -> std::io::Result<String> {
    shoal_gossip::small_file::read_to_string(path, cap_bytes)
}

/// The `--config` file, parsed into the same [`RunSettings`] as the flags.
/// The file's relative paths taken relative to the file's folder, as a reader of the file
/// expects (they were taken relative to the working directory: `cd /tmp && shoal run --config
/// /etc/shoal/node.toml` with `rules = "rules.toml"` looked for /tmp/rules.toml, and
/// `state_dir = "st"` created /tmp/st: an operator's probe). Flags keep the working directory's
/// meaning. `bgp.bird` is joined only when it holds a `/`: a bare name is looked up in PATH.
fn relative_to(mut file: RunSettings, folder: &Path) -> RunSettings {
    let join = |p: &mut Option<PathBuf>| {
        if let Some(path) = p {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = folder.join(&*path);
            }
        }
    };
    join(&mut file.tls_dir);
    join(&mut file.state_dir);
    join(&mut file.rules);
    join(&mut file.kubeconfig);
    join(&mut file.admin_token_file);
    if let Some(bgp) = &mut file.bgp {
        join(&mut bgp.state_dir);
        if bgp
            .bird
            .as_ref()
            .is_some_and(|b| b.components().count() > 1)
        {
            join(&mut bgp.bird);
        }
    }
    file
}

fn read_file(path: &Path) -> Result<RunSettings, ConfigError> {
    let text = read_capped(path, CONFIG_FILE_CAP_BYTES).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
