//! BIRD's control-socket replies (`node/src/announce/birdctl.rs`): `show protocols` and
//! `show route count`, read from the BIRD child Shoal runs.

use shoal_node::announce::birdctl::{parse_protocols, parse_route_count};

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for session in parse_protocols(&text) {
        assert!(!session.name.is_empty(), "a session without a name");
    }
    let _ = parse_route_count(&text);
}

pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        b"0001 BIRD 2.15 ready.\n2002-Name       Proto      Table      State  Since         Info\n1002-device1    Device     ---        up     10:00:00.000  \n peer1      BGP        ---        up     10:00:01.000  Established   \n peer2      BGP        ---        start  10:00:01.000  Active        Socket: Connection refused\n0000 \n".to_vec(),
        b"0014-2 of 2 routes for 2 networks in table master4\n0014-1 of 1 routes for 1 networks in table master6\n0000 \n".to_vec(),
    ]
}
