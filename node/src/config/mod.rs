//! The daemon's settings: flags merged over an optional TOML file, checked, with defaults.

use crate::announce::decide::Mode;
use crate::announce::settings::{bgp_settings, AnnounceSettings, BgpFile};
use crate::cli::{AnnounceKind, DataplaneKind, RunArgs, SourceKind};
use serde::Deserialize;
use std::net::SocketAddr;
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
    #[error("missing setting `{0}` (give --{flag} or set it in the config file)", flag = .0.replace('_', "-"))]
    Missing(&'static str),
    #[error("setting `{field}`: {message}")]
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

/// The same settings as [`RunArgs`], as they may appear in a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    node_id: Option<String>,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    seeds: Option<Vec<String>>,
    cluster: Option<String>,
    tls_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    insecure: Option<bool>,
    cluster_identity_only: Option<bool>,
    single_node: Option<bool>,
    source: Option<SourceKind>,
    rules: Option<PathBuf>,
    dataplane: Option<DataplaneKind>,
    cleanup_on_exit: Option<bool>,
    resync_interval_s: Option<u64>,
    drain_s: Option<u64>,
    health_checkers: Option<usize>,
    lb_class: Option<String>,
    vip_pools: Option<Vec<String>>,
    namespace: Option<String>,
    kubeconfig: Option<PathBuf>,
    vip_interface: Option<String>,
    announce: Option<AnnounceKind>,
    interface: Option<String>,
    shutdown_drain_s: Option<u64>,
    withdraw_when_no_backends: Option<bool>,
    freeze_withdraw_ms: Option<u64>,
    bgp: Option<BgpFile>,
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum Source {
    Static { rules: PathBuf },
    Kubernetes(KubernetesSettings),
}

#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    pub lb_class: String,
    /// Only with `namespace` (cluster-wide installs read ShoalPool objects).
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
    /// Where the epoch file lives (see `RunArgs::state_dir`).
    pub state_dir: Option<PathBuf>,
    /// Trust any cluster certificate for any node id (shared-certificate mode).
    pub cluster_identity_only: bool,
    /// May run alone when no seed answers.
    pub single_node: bool,
    pub source: Source,
    pub dataplane: DataplaneKind,
    pub cleanup_on_exit: bool,
    pub resync_interval: Duration,
    pub drain: Duration,
    pub health_checkers: usize,
    pub vip_interface: String,
    pub announce: AnnounceSettings,
    /// Bearer token required on the admin API's `/v1/*` (read from `--admin-token-file`).
    pub admin_token: Option<String>,
}

/// Bounds of the numeric settings, checked at start-up so that no later arithmetic on them
/// can overflow (a huge `--resync-interval-s` used to panic inside the reconcile task).
pub const RESYNC_INTERVAL_S: std::ops::RangeInclusive<u64> = 1..=86_400;
pub const DRAIN_S: std::ops::RangeInclusive<u64> = 0..=86_400;
pub const HEALTH_CHECKERS: std::ops::RangeInclusive<usize> = 1..=16;
pub const MAX_SEEDS: usize = 1_000;
/// The `--config` file (a few settings and a `[bgp]` table; 1 MiB leaves room for comments).
pub const CONFIG_FILE_CAP_BYTES: u64 = shoal_gossip::small_file::SETTINGS_FILE_CAP_BYTES;
/// Admin tokens: long enough to resist guessing, short enough to be a token and not a file.
pub const ADMIN_TOKEN_LEN: std::ops::RangeInclusive<usize> = 16..=4_096;

fn bounded<T: PartialOrd + std::fmt::Display>(
    field: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            field,
            message: format!("{value} is outside {}-{}", range.start(), range.end()),
        })
    }
}

impl NodeConfig {
    /// Merges flags over the config file (flags win) and checks the result.
    pub fn resolve(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let node_id = match args.node_id.clone().or(file.node_id.clone()) {
            Some(id) => id,
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .ok_or(ConfigError::Missing("node_id"))?,
        };
        if node_id.is_empty() || node_id.len() > 253 || node_id.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                field: "node_id",
                message: format!("{node_id:?} must be 1-253 characters without spaces"),
            });
        }
        let announce = announce_settings(args, &file, &node_id)?;
        let listen = args
            .listen
            .or(file.listen)
            .ok_or(ConfigError::Missing("listen"))?;
        let admin = args
            .admin
            .or(file.admin)
            .ok_or(ConfigError::Missing("admin"))?;
        let seeds = args.seeds.clone().or(file.seeds).unwrap_or_default();
        if seeds.len() > MAX_SEEDS {
            return Err(ConfigError::Invalid {
                field: "seeds",
                message: format!("{} seeds is over {MAX_SEEDS}", seeds.len()),
            });
        }
        for seed in &seeds {
            if seed
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(ConfigError::Invalid {
                    field: "seeds",
                    message: format!("{seed:?} is not host:port"),
                });
            }
        }
        let cluster = args
            .cluster
            .clone()
            .or(file.cluster)
            .unwrap_or_else(|| "shoal".to_string());
        let insecure = args.insecure || file.insecure.unwrap_or(false);
        let tls_dir = args.tls_dir.clone().or(file.tls_dir);
        if tls_dir.is_none() && !insecure {
            return Err(ConfigError::NoTls);
        }
        let source_kind = args.source.or(file.source).unwrap_or(SourceKind::Static);
        let source = match source_kind {
            SourceKind::Static => Source::Static {
                rules: args
                    .rules
                    .clone()
                    .or(file.rules)
                    .ok_or(ConfigError::Missing("rules"))?,
            },
            SourceKind::Kubernetes => Source::Kubernetes(KubernetesSettings {
                lb_class: args
                    .lb_class
                    .clone()
                    .or(file.lb_class)
                    .unwrap_or_else(|| "shoal.io/lb".to_string()),
                vip_pools: args
                    .vip_pools
                    .clone()
                    .or(file.vip_pools)
                    .unwrap_or_default(),
                namespace: args.namespace.clone().or(file.namespace),
                kubeconfig: args.kubeconfig.clone().or(file.kubeconfig),
            }),
        };
        if let Source::Kubernetes(k) = &source {
            k.to_source_config()
                .check()
                .map_err(|message| ConfigError::Invalid {
                    field: "kubernetes source",
                    message,
                })?;
        }
        // Kubernetes gives a terminating pod 30 s by default: keep its connections that long.
        let default_drain_s = match &source {
            Source::Kubernetes(_) => 30,
            Source::Static { .. } => 0,
        };
        let health_checkers = bounded(
            "health_checkers",
            args.health_checkers.or(file.health_checkers).unwrap_or(2),
            HEALTH_CHECKERS,
        )?;
        let resync_interval_s = bounded(
            "resync_interval_s",
            args.resync_interval_s
                .or(file.resync_interval_s)
                .unwrap_or(10),
            RESYNC_INTERVAL_S,
        )?;
        let drain_s = bounded(
            "drain_s",
            args.drain_s.or(file.drain_s).unwrap_or(default_drain_s),
            DRAIN_S,
        )?;
        let admin_token = match args.admin_token_file.clone().or(file.admin_token_file) {
            Some(path) => Some(read_token(&path)?),
            None => None,
        };
        Ok(NodeConfig {
            node_id,
            listen,
            admin,
            seeds,
            cluster,
            tls_dir: if insecure { None } else { tls_dir },
            state_dir: args.state_dir.clone().or(file.state_dir),
            cluster_identity_only: args.cluster_identity_only
                || file.cluster_identity_only.unwrap_or(false),
            single_node: args.single_node || file.single_node.unwrap_or(false),
            source,
            dataplane: args
                .dataplane
                .or(file.dataplane)
                .unwrap_or(DataplaneKind::Memory),
            cleanup_on_exit: args.cleanup_on_exit || file.cleanup_on_exit.unwrap_or(false),
            resync_interval: Duration::from_secs(resync_interval_s),
            drain: Duration::from_secs(drain_s),
            health_checkers,
            vip_interface: args
                .vip_interface
                .clone()
                .or(file.vip_interface)
                .unwrap_or_else(|| "shoal0".to_string()),
            announce,
            admin_token,
        })
    }
}

fn announce_settings(
    args: &RunArgs,
    file: &FileSettings,
    node_id: &str,
) -> Result<AnnounceSettings, ConfigError> {
    let defaults = AnnounceSettings::default();
    let mode = match args
        .announce
        .or(file.announce)
        .unwrap_or(AnnounceKind::None)
    {
        AnnounceKind::None => None,
        AnnounceKind::Bgp => Some(Mode::Bgp),
        AnnounceKind::L2 => Some(Mode::L2),
    };
    let interface = args.interface.clone().or(file.interface.clone());
    if mode == Some(Mode::L2) && interface.is_none() {
        return Err(ConfigError::Missing("interface"));
    }
    let bgp = match (&file.bgp, mode) {
        (Some(b), _) => Some(bgp_settings(b, node_id)?),
        (None, Some(Mode::Bgp)) => {
            return Err(ConfigError::Invalid {
                field: "bgp",
                message: "`--announce bgp` needs a [bgp] table in the --config file".into(),
            })
        }
        (None, _) => None,
    };
    let freeze_withdraw_ms = args
        .freeze_withdraw_ms
        .or(file.freeze_withdraw_ms)
        .unwrap_or(defaults.freeze_withdraw.as_millis() as u64);
    if !(200..=60_000).contains(&freeze_withdraw_ms) {
        return Err(ConfigError::Invalid {
            field: "freeze_withdraw_ms",
            message: format!("{freeze_withdraw_ms} must be 200-60000"),
        });
    }
    let shutdown_drain_s = args.shutdown_drain_s.or(file.shutdown_drain_s);
    if shutdown_drain_s.is_some_and(|s| s > 3600) {
        return Err(ConfigError::Invalid {
            field: "shutdown_drain_s",
            message: "must be at most 3600".into(),
        });
    }
    Ok(AnnounceSettings {
        mode,
        interface,
        withdraw_when_no_backends: args
            .withdraw_when_no_backends
            .or(file.withdraw_when_no_backends)
            .unwrap_or(defaults.withdraw_when_no_backends),
        shutdown_drain: shutdown_drain_s
            .map(Duration::from_secs)
            .unwrap_or(defaults.shutdown_drain),
        freeze_withdraw: Duration::from_millis(freeze_withdraw_ms),
        bgp,
    })
}

/// The admin token: the file's content without surrounding whitespace (a Kubernetes Secret
/// mounted as a file, or `openssl rand -hex 32 > token`).
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        field: "admin_token_file",
        message,
    };
    let text = read_capped(path, *ADMIN_TOKEN_LEN.end() as u64 + 64)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if !ADMIN_TOKEN_LEN.contains(&token.len()) || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "the token in {} must be {}-{} printable ASCII characters",
            path.display(),
            ADMIN_TOKEN_LEN.start(),
            ADMIN_TOKEN_LEN.end()
        )));
    }
    Ok(token.to_string())
}

/// Every file `shoal run` reads at start-up goes through this: a regular file (symlinks
/// followed) of at most `cap_bytes`, else an error (`--config /dev/zero` used to hang).
pub fn read_capped(path: &Path, cap_bytes: u64) -> std::io::Result<String> {
    shoal_gossip::small_file::read_to_string(path, cap_bytes)
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = read_capped(path, CONFIG_FILE_CAP_BYTES).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args() -> RunArgs {
        RunArgs {
            listen: Some("127.0.0.1:7946".parse().unwrap()),
            admin: Some("127.0.0.1:9100".parse().unwrap()),
            rules: Some("rules.toml".into()),
            node_id: Some("a".into()),
            insecure: true,
            ..RunArgs::default()
        }
    }

    #[test]
    fn refuses_to_start_without_tls_unless_insecure() {
        let mut a = args();
        a.insecure = false;
        assert!(matches!(NodeConfig::resolve(&a), Err(ConfigError::NoTls)));
        assert!(NodeConfig::resolve(&args()).is_ok());
    }

    #[test]
    fn flags_win_over_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "cluster = \"from-file\"\nnode_id = \"file-node\"\nresync_interval_s = 3"
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file.path().to_path_buf());
        let cfg = NodeConfig::resolve(&a).unwrap();
        assert_eq!(cfg.node_id, "a");
        assert_eq!(cfg.cluster, "from-file");
        assert_eq!(cfg.resync_interval, Duration::from_secs(3));
    }

    #[test]
    fn unknown_file_settings_are_named() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "clustre = \"typo\"").unwrap();
        let mut a = args();
        a.config = Some(file.path().to_path_buf());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("clustre"), "{err}");
    }

    /// Issue #15, broken behaviour 5: huge `--resync-interval-s` / `--drain-s` panicked the
    /// reconcile task; they are now refused at start-up with the setting named.
    #[test]
    fn huge_durations_are_refused_naming_the_field() {
        let mut a = args();
        a.resync_interval_s = Some(u64::MAX);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains("resync_interval_s") && err.contains("outside 1-86400"),
            "{err}"
        );
        let mut a = args();
        a.drain_s = Some(u64::MAX / 1000);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("drain_s"), "{err}");
        let mut a = args();
        a.health_checkers = Some(usize::MAX);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("health_checkers"), "{err}");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "drain_s = 9999999").unwrap();
        let mut a = args();
        a.config = Some(file.path().to_path_buf());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("drain_s"), "{err}");
        let mut a = args();
        a.resync_interval_s = Some(86_400);
        a.drain_s = Some(86_400);
        assert!(NodeConfig::resolve(&a).is_ok());
    }

    #[test]
    fn admin_tokens_are_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let mut a = args();
        a.admin_token_file = Some(path.clone());
        let cfg = NodeConfig::resolve(&a).unwrap();
        assert_eq!(cfg.admin_token.as_deref(), Some("0123456789abcdef0123"));
        std::fs::write(&path, "short").unwrap();
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("admin_token_file"), "{err}");
        a.admin_token_file = Some("/dev/zero".into());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn announce_errors_name_the_setting() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "announce = \"bgp\"\n[bgp]\nlocal_asn = 64512\n[[bgp.peers]]\naddress = \"198.18.1.1\"\nasn = 64500\nhold_tme_s = 3"
        )
        .unwrap();
        let mut a = args();
        a.config = Some(file.path().to_path_buf());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("hold_tme_s"), "{err}");
        let mut a = args();
        a.announce = Some(AnnounceKind::Bgp);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("[bgp]"), "{err}");
        let mut a = args();
        a.announce = Some(AnnounceKind::L2);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("interface"), "{err}");
        let cfg = NodeConfig::resolve(&args()).unwrap();
        assert_eq!(cfg.announce.mode, None);
        assert_eq!(cfg.announce.shutdown_drain, Duration::from_secs(5));
    }

    #[test]
    fn bad_seed_is_named() {
        let mut a = args();
        a.seeds = Some(vec!["no-port".into()]);
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("no-port"), "{err}");
    }

    /// Issue #15: `--config /dev/zero` read forever. Devices, directories and FIFOs are refused
    /// without being opened, and so is a file over the cap, each with the path named.
    #[test]
    fn config_files_that_are_not_small_regular_files_are_refused_naming_the_path() {
        let mut a = args();
        a.config = Some("/dev/zero".into());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("not a regular file"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        a.config = Some(dir.path().to_path_buf());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("directory"), "{err}");
        let big = dir.path().join("big.toml");
        let line = "# padding padding padding padding padding padding padding padding\n";
        std::fs::write(
            &big,
            line.repeat(CONFIG_FILE_CAP_BYTES as usize / line.len() + 1),
        )
        .unwrap();
        a.config = Some(big.clone());
        let err = NodeConfig::resolve(&a).unwrap_err().to_string();
        assert!(
            err.contains(&big.display().to_string()) && err.contains("limit"),
            "{err}"
        );
    }
}
