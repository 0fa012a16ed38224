//! Polls one node's admin API (`/v1/cluster`, `/v1/dataplane`, `/v1/table`) into a [`NodeObs`].

use crate::observation::{NodeObs, ParseError};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

pub struct Observer {
    client: reqwest::Client,
}

impl Observer {
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()?;
        Ok(Observer { client })
    }

    /// `Ok(None)` for a 404 (the table endpoint before any version).
    async fn get(&self, url: String) -> Result<Option<serde_json::Value>, PollError> {
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|source| PollError::Http {
                url: url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(PollError::Status { url, status });
        }
        let value = resp.json().await.map_err(|source| PollError::Http {
            url: url.clone(),
            source,
        })?;
        Ok(Some(value))
    }

    /// The ids `admin`'s `/v1/cluster` lists as alive (sorted): the steady runs' one question.
    pub async fn alive(&self, admin: &str) -> Result<Vec<String>, PollError> {
        let url = format!("http://{admin}/v1/cluster");
        let cluster = self
            .get(url.clone())
            .await?
            .ok_or(PollError::Status { url, status: 404 })?;
        let mut o = NodeObs::default();
        o.read_cluster(&cluster)?;
        Ok(o.alive)
    }

    /// Polls `admin` (host:port); the caller fills in time, node and incarnation.
    pub async fn poll(&self, admin: &str) -> Result<NodeObs, PollError> {
        let (cluster, dataplane, table) = tokio::join!(
            self.get(format!("http://{admin}/v1/cluster")),
            self.get(format!("http://{admin}/v1/dataplane")),
            self.get(format!("http://{admin}/v1/table")),
        );
        let mut o = NodeObs::default();
        let missing = |endpoint: &str| PollError::Status {
            url: format!("http://{admin}{endpoint}"),
            status: 404,
        };
        o.read_cluster(&cluster?.ok_or_else(|| missing("/v1/cluster"))?)?;
        o.read_dataplane(&dataplane?.ok_or_else(|| missing("/v1/dataplane"))?)?;
        o.read_table(table?.as_ref())?;
        Ok(o)
    }
}
