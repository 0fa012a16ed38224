//! Certificate and key files (`gossip/src/certs.rs`): PEM parsing, the node id in the URI SAN,
//! the validity window, the TLS configurations built from them, and `ca.key` for `certs issue`.

pub fn run(data: &[u8]) {
    shoal_gossip::fuzzing::cert_pem(data);
}

pub fn seeds() -> Vec<Vec<u8>> {
    shoal_gossip::fuzzing::cert_pem_seeds()
}
