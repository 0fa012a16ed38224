//! The one-shot CLI commands: status, table, certs init, check, backend-init.

use crate::cli::{
    BackendInitArgs, CertsInitArgs, CertsIssueArgs, CheckArgs, NodeArgs, OutputFormat, StatusArgs,
    SysctlsArgs,
};
use crate::rules;
use crate::status::ClusterStatus;
use anyhow::Context;
use std::time::Duration;

/// Fetches a JSON document from a node's admin API.
pub async fn get_json(node: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    get_json_with(node, path, None).await
}

/// [`get_json`] with the admin API's bearer token, when the nodes require one.
pub async fn get_json_with(
    node: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{node}{path}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} did not answer with JSON"))?;
    if !status.is_success() {
        anyhow::bail!(
            "{url}: {status}: {}",
            body["error"].as_str().unwrap_or("no detail")
        );
    }
    Ok(body)
}

/// The token of `--token-file` / `SHOAL_ADMIN_TOKEN_FILE`, if given.
fn token(args: &NodeArgs) -> anyhow::Result<Option<String>> {
    args.token_file
        .as_deref()
        .map(crate::config::read_token)
        .transpose()
        .map_err(anyhow::Error::from)
}

pub async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let token = token(&args.node)?;
    let body = get_json_with(&args.node.node, "/v1/cluster", token.as_deref()).await?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        OutputFormat::Table => {
            let status: ClusterStatus = serde_json::from_value(body)
                .context("the node answered with an unexpected /v1/cluster document")?;
            print!("{}", status.render());
        }
    }
    Ok(())
}

pub async fn table(args: &NodeArgs) -> anyhow::Result<()> {
    let token = token(args)?;
    let body = get_json_with(&args.node, "/v1/table", token.as_deref()).await?;
    println!("{}", serde_json::to_string_pretty(&body)?);
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
        println!(
            "  {}/{node}/{{ca.pem,node.pem,node.key}}: valid {} days",
            args.out.display(),
            args.node_days
        );
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
    println!(
        "wrote the cluster CA ({0}/ca.pem, {0}/ca.key: keep the key offline) and certificates for {1}",
        args.out.display(),
        args.nodes.join(", ")
    );
    for node in &args.nodes {
        println!(
            "  {}/{node}/{{ca.pem,node.pem,node.key}}: give --tls-dir {}/{node}",
            args.out.display(),
            args.out.display()
        );
    }
    Ok(())
}

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let text = shoal_gossip::small_file::read_to_string(&args.rules, rules::MAX_FILE_BYTES)
        .with_context(|| format!("cannot read {}", args.rules.display()))?;
    let table =
        rules::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.rules.display()))?;
    let backends: usize = table.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok, {} services, {} backends",
        args.rules.display(),
        table.services.len(),
        backends
    );
    for s in &table.services {
        println!(
            "  {:<24} {}:{} {:?} {} {:?} {} backends{}",
            s.name,
            s.vip,
            s.port,
            s.protocol,
            s.scheduler,
            s.forwarding,
            s.backends.len(),
            if s.health.is_some() {
                ", health-checked"
            } else {
                ""
            }
        );
    }
    for w in rules::warnings(&table) {
        println!("warning: {w}");
    }
    Ok(())
}

pub fn backend_init(args: &BackendInitArgs) -> anyhow::Result<()> {
    let accept = shoal_dataplane::backend_init::Accept {
        vips: args.vip.clone(),
        pools: args.pool.clone(),
    };
    let report = shoal_dataplane::backend_init::prepare(&accept)
        .context("preparing this host as a tunnel-mode backend")?;
    if report.changed.is_empty() {
        println!("already prepared: nothing to change");
    }
    for change in report.changed {
        println!("{change}");
    }
    for check in report.checks {
        println!("check: {check}");
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
                println!("{key}={value} (ok)");
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
            Some(c) => println!("{c}"),
            None => println!("{key}={value} (already)"),
        }
    }
    Ok(())
}
