//! The one-shot CLI commands: status, table, dataplane, certs init, check, backend-init.

use crate::cli::{
    BackendInitArgs, CertsInitArgs, CertsIssueArgs, CheckArgs, NodeArgs, OutputFormat, StatusArgs,
    SysctlsArgs,
};
use crate::rules;
use crate::status::ClusterStatus;
use anyhow::Context;
use std::time::Duration;

mod dataplane;
pub use dataplane::dataplane;

/// The most a command reads of an admin API answer, but `/v1/table`'s: the cap keeps a wrong
/// or hostile `--node` from filling the memory (unbounded, a 100 MiB answer took 2.8 GB).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The most `shoal table` reads. A table's JSON is 1.5 to 2.5 times its rules file (16,000
/// services x 10 backends: 7.9 MB of rules, 11.5 MB from `/v1/table`; 313,262 services of one
/// backend: 31 MiB of rules, 76.7 MB), so the 64 MiB of [`MAX_ANSWER_BYTES`] refused tables that
/// `shoal check` and `shoal run` accept (an operator's probe); 256 MiB fits a rules file at its
/// 32 MiB cap with room. The answer is read into the table's own types, not a generic JSON
/// value, which is what made 100 MiB cost 2.8 GB.
pub const MAX_TABLE_ANSWER_BYTES: usize = 256 << 20;

/// The body of a successful answer from a node's admin API (at most [`MAX_ANSWER_BYTES`]),
/// with the bearer token when the nodes require one; checked to be JSON.
pub async fn get_bytes(node: &str, path: &str, token: Option<&str>) -> anyhow::Result<Vec<u8>> {
    get_at_most(node, path, token, MAX_ANSWER_BYTES).await
}

/// [`get_bytes`] with another cap.
async fn get_at_most(
    node: &str,
    path: &str,
    token: Option<&str>,
    cap: usize,
) -> anyhow::Result<Vec<u8>> {
    let url = format!("http://{node}{path}");
    // Bounds on each wait, not on the whole answer: a node that stops answering is given up
    // after 5 s, while a large table (tens of MB) may take longer than that to come over a
    // slow link.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(5))
        .build()?;
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        // The gossip port is UDP, so pointing --node at it is refused like a closed port.
        Err(e) if e.is_connect() => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot reach the admin API at {url}: is the node running, and is that its \
                 --admin address? (--node takes the admin address, not the gossip --listen one)"
            )))
        }
        // Connected, then nothing: a frozen or starved node (an SRE's probe read a bare
        // "operation timed out" as a network problem).
        Err(e) if e.is_timeout() => {
            return Err(anyhow::Error::new(e).context(format!(
                "the admin API at {url} took the connection but did not answer within 5 s \
                 (the node may be frozen or overloaded)"
            )))
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot reach the admin API at {url}"))
            )
        }
    };
    let status = response.status();
    let too_large = || format!("{url} answered with more than {cap} bytes");
    if response.content_length().is_some_and(|n| n > cap as u64) {
        anyhow::bail!(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading the answer of {url}"))?
    {
        if body.len() + chunk.len() > cap {
            anyhow::bail!(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        #[derive(serde::Deserialize)]
        struct Failure {
            error: String,
        }
        match serde_json::from_slice::<Failure>(&body) {
            Ok(failure) => anyhow::bail!("{url}: {status}: {}", failure.error),
            Err(_) => anyhow::bail!(
                "{url}: {status}, without a Shoal error (is --node a Shoal node's admin address?)"
            ),
        }
    }
    // Checked without building it: a `Value` of a hostile answer is many times its size.
    serde_json::from_slice::<serde::de::IgnoredAny>(&body)
        .with_context(|| format!("{url} did not answer with JSON"))?;
    Ok(body)
}

/// The token of `--token-file` / `SHOAL_ADMIN_TOKEN_FILE`, if given.
fn token(args: &NodeArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    match crate::config::read_token(path) {
        Ok(token) => Ok(Some(token)),
        Err(crate::config::ConfigError::Invalid { message, .. }) => {
            anyhow::bail!("--token-file: {message}")
        }
        Err(e) => Err(e.into()),
    }
}

/// Re-indents a JSON answer for people, once it has been read as `T` (so an answer of the wrong
/// shape is an error, not printed as if it were right).
fn pretty<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> anyhow::Result<String> {
    serde_json::from_slice::<T>(body)
        .with_context(|| format!("the node answered with an unexpected {what} document"))?;
    let value: serde_json::Value = serde_json::from_slice(body)?;
    Ok(serde_json::to_string_pretty(&value)?)
}

pub async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let token = token(&args.node)?;
    let mut query = vec![("health", args.health.name())];
    if let Some(service) = &args.service {
        query.push(("service", service));
    }
    // Only for its encoding of the query: the host part is not used.
    let url = reqwest::Url::parse_with_params("http://node/v1/cluster", &query)
        .context("the --service name cannot be put in a query")?;
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let body = get_bytes(&args.node.node, &path, token.as_deref()).await?;
    match args.output {
        OutputFormat::Json => outln!("{}", pretty::<ClusterStatus>(&body, "/v1/cluster")?)?,
        OutputFormat::Table => {
            let status: ClusterStatus = serde_json::from_slice(&body)
                .context("the node answered with an unexpected /v1/cluster document")?;
            out!("{}", status.render())?;
            let none_checked = status.health_summary.is_some_and(|s| s.backends == 0);
            if let Some(service) = args.service.as_deref().filter(|_| none_checked) {
                outln!(
                    "\nno health-checked backend in a service named {service:?} (`shoal table` \
                     names the services; those without a health check are always up)"
                )?;
            }
        }
    }
    Ok(())
}

/// What `/v1/table` answers (`admin.rs`): read into these types, which checks it, and printed
/// from them (the same fields in the same order).
#[derive(serde::Deserialize, serde::Serialize)]
struct TableAnswer {
    version: crate::status::VersionRef,
    digest: String,
    size_bytes: u64,
    table: crate::table::RuleTable,
}

pub async fn table(args: &NodeArgs) -> anyhow::Result<()> {
    let token = token(args)?;
    let body = get_at_most(
        &args.node,
        "/v1/table",
        token.as_deref(),
        MAX_TABLE_ANSWER_BYTES,
    )
    .await?;
    let answer: TableAnswer = serde_json::from_slice(&body)
        .context("the node answered with an unexpected /v1/table document")?;
    drop(body);
    outln!("{}", serde_json::to_string_pretty(&answer)?)?;
    Ok(())
}

pub fn certs_issue(args: &CertsIssueArgs) -> anyhow::Result<()> {
    shoal_gossip::certs::issue_into(
        &args.ca_dir,
        &args.nodes,
        &args.out,
        args.node_days,
        &args.also_trust,
    )
    .with_context(|| {
        format!(
            "issuing certificates from {} into {}",
            args.ca_dir.display(),
            args.out.display()
        )
    })?;
    for node in &args.nodes {
        outln!(
            "  {}/{node}/{{ca.pem,node.pem,node.key}}: valid {} days",
            args.out.display(),
            args.node_days
        )?;
    }
    Ok(())
}

pub fn certs_init(args: &CertsInitArgs) -> anyhow::Result<()> {
    let validity = shoal_gossip::certs::Validity {
        ca_days: args.ca_days,
        node_days: args.node_days,
    };
    // `--nodes ''` makes only a CA (the first step of a CA rotation).
    let nodes: Vec<String> = args
        .nodes
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    shoal_gossip::certs::write_cluster_dir_with(&args.out, &args.cluster, &nodes, validity)
        .with_context(|| format!("writing certificates to {}", args.out.display()))?;
    if nodes.is_empty() {
        outln!(
            "wrote the cluster CA ({0}/ca.pem, {0}/ca.key: keep the key offline), no node \
             certificates (issue them with `shoal certs issue --ca-dir {0} --nodes ...`)",
            args.out.display()
        )?;
        return Ok(());
    }
    outln!(
        "wrote the cluster CA ({0}/ca.pem, {0}/ca.key: keep the key offline) and certificates for {1}",
        args.out.display(),
        nodes.join(", ")
    )?;
    for node in &nodes {
        outln!(
            "  {}/{node}/{{ca.pem,node.pem,node.key}}: give --tls-dir {}/{node}",
            args.out.display(),
            args.out.display()
        )?;
    }
    Ok(())
}

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let path = args.rules.display();
    let table = rules::load_file(&args.rules).map_err(|e| match e {
        rules::LoadError::Read(e) => anyhow::Error::new(e).context(format!("cannot read {path}")),
        rules::LoadError::Rules(e) => anyhow::anyhow!("{path}: {e}"),
    })?;
    let backends: usize = table.services.iter().map(|s| s.backends.len()).sum();
    outln!(
        "{}: ok, {} services, {} backends",
        args.rules.display(),
        table.services.len(),
        backends
    )?;
    for s in &table.services {
        outln!(
            "  {:<24} {} {} {} {} {} backends{}",
            s.name,
            // Brackets an IPv6 VIP: `[2001:db8::1]:80`, not `2001:db8::1:80`.
            std::net::SocketAddr::new(s.vip, s.port),
            s.protocol,
            s.scheduler,
            s.forwarding,
            s.backends.len(),
            if s.health.is_some() {
                ", health-checked"
            } else {
                ""
            }
        )?;
    }
    for w in rules::warnings(&table) {
        outln!("warning: {w}")?;
    }
    Ok(())
}

pub fn backend_init(args: &BackendInitArgs) -> anyhow::Result<()> {
    // Before anything changes: an address on tunl0 or a local route cannot be half-applied
    // and then found wrong by the final check.
    for vip in &args.vip {
        if let Some(why) = crate::validate::not_unicast(*vip) {
            anyhow::bail!("--vip {vip}: not a unicast address a VIP can be ({why})");
        }
    }
    for pool in &args.pool {
        if let Some(why) = crate::validate::not_a_vip_pool(*pool) {
            anyhow::bail!("--pool {why}");
        }
    }
    let accept = shoal_dataplane::backend_init::Accept {
        vips: args.vip.clone(),
        pools: args.pool.clone(),
    };
    let report = shoal_dataplane::backend_init::prepare(&accept)
        .context("preparing this host as a tunnel-mode backend")?;
    if report.changed.is_empty() {
        outln!("already prepared: nothing to change")?;
    }
    for change in report.changed {
        outln!("{change}")?;
    }
    for check in report.checks {
        outln!("check: {check}")?;
    }
    Ok(())
}

/// `shoal sysctls`: the IPVS sysctls of `shoal run`, written (or, with `--check`, compared).
pub fn sysctls(args: &SysctlsArgs) -> anyhow::Result<()> {
    let mut wanted: Vec<(String, String)> = shoal_dataplane::IpvsOptions::default()
        .sysctls()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if let Some(interface) = &args.interface {
        // The name becomes a /proc/sys path: the same check as `shoal run --interface`.
        crate::config::check_interface_name(interface)
            .map_err(|why| anyhow::anyhow!("--interface: {why}"))?;
        wanted.extend(shoal_dataplane::sysctl::arp_owner_only(interface));
    }
    let pairs: Vec<(&str, &str)> = wanted
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sysctl = shoal_dataplane::sysctl::Sysctl::default();
    if args.check {
        let differing = sysctl.differing(&pairs);
        for (key, value) in &pairs {
            if !differing.iter().any(|d| d.starts_with(&format!("{key}="))) {
                outln!("{key}={value} (ok)")?;
            }
        }
        if !differing.is_empty() {
            anyhow::bail!("not set as `shoal run` needs: {}", differing.join(", "));
        }
        return Ok(());
    }
    let changed = sysctl
        .set_all(&pairs)
        .context("writing the sysctls `shoal run --dataplane ipvs` needs")?;
    for (key, value) in &pairs {
        match changed.iter().find(|c| c.starts_with(&format!("{key}="))) {
            Some(c) => outln!("{c}")?,
            None => outln!("{key}={value} (already)")?,
        }
    }
    Ok(())
}
