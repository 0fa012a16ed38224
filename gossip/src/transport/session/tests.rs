//! The session codec's tests: round trips (steady digests, joins and restarts, arbitrary streams),
//! the table bound and the size cap, and frames a lying peer could send.

use super::*;
use chitchat::Serializable;
use proptest::prelude::*;

const CAP: usize = 128 << 10;

/// A chitchat message of `kind` (SYN or SYN-ACK) listing `members` as (index, generation,
/// heartbeat, max version), then `tail`.
fn digest_message(kind: u8, members: &[(u16, u64, u64, u64)], tail: &[u8]) -> Vec<u8> {
    let mut buf = 45_139u16.to_le_bytes().to_vec();
    buf.extend([0u8, kind]);
    (members.len() as u16).serialize(&mut buf);
    for &(i, generation, heartbeat, max_version) in members {
        let addr = std::net::SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 7946));
        ChitchatId::new(format!("shoal-{i}"), generation, addr).serialize(&mut buf);
        heartbeat.serialize(&mut buf);
        0u64.serialize(&mut buf);
        max_version.serialize(&mut buf);
    }
    buf.extend_from_slice(tail);
    buf
}

/// Encodes every message on one stream and decodes it on the other end.
fn through(encoder: &mut Encoder, decoder: &mut Decoder, message: &[u8]) -> Vec<u8> {
    let frame = encoder.encode(message);
    decoder
        .decode(&frame, CAP)
        .expect("a frame the encoder made decodes")
}

#[test]
fn a_steady_digest_of_100_members_is_a_fraction_of_its_compressed_size() {
    let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
    let mut sizes = (0, 0);
    for round in 0..20u64 {
        let members: Vec<_> = (0..100u16)
            .map(|i| {
                let gen = 1_764_800_000_000 + u64::from(i) * 37;
                (
                    i,
                    gen,
                    1_000 + round * 16 + u64::from(i % 5),
                    12 + u64::from(i % 3),
                )
            })
            .collect();
        let message = digest_message(SYN, &members, b"\x05\x00shoal");
        let frame = encoder.encode(&message);
        assert_eq!(decoder.decode(&frame, CAP), Ok(message.clone()));
        if round > 0 {
            sizes.0 += frame.len();
            sizes.1 += codec::encode(&message).len();
        }
    }
    let (session, alone) = sizes;
    assert!(
        session * 4 < alone,
        "session frames {session} bytes against {alone} compressed alone"
    );
}

#[test]
fn members_joining_leaving_and_restarting_round_trip() {
    let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
    let mut members: Vec<(u16, u64, u64, u64)> = (0..10).map(|i| (i, 1, 5, 0)).collect();
    for round in 0..200u64 {
        for m in &mut members {
            m.2 += 1 + round % 3;
        }
        match round % 7 {
            0 => members.push((10 + round as u16, 1, 0, 0)),
            3 if members.len() > 3 => {
                members.remove((round as usize) % members.len());
            }
            5 => members[0].1 += 1, // a restart: a new generation, so a new id
            6 => members[1].3 += 4,
            _ => {}
        }
        let mut sorted = members.clone();
        sorted.sort_by_key(|m| format!("shoal-{}", m.0));
        let kind = if round % 2 == 0 { SYN } else { SYN_ACK };
        let message = digest_message(kind, &sorted, &[round as u8; 9]);
        assert_eq!(through(&mut encoder, &mut decoder, &message), message);
    }
}

#[test]
fn other_messages_go_as_they_are() {
    let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
    let ack = [0xd3, 0xb0, 0, 2, 0xff, 1, 2, 3];
    let bad_cluster = [0xd3, 0xb0, 0, 3];
    let torn = &digest_message(SYN, &[(1, 1, 1, 1), (2, 1, 1, 1)], b"")[..40];
    for message in [&ack[..], &bad_cluster, torn, &[], &[9; 3000]] {
        assert_eq!(through(&mut encoder, &mut decoder, message), message);
    }
}

#[test]
fn the_table_is_emptied_before_it_would_pass_its_bound() {
    let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
    // 1,000 new ids a message: the fifth would pass 4,096, so the encoder resets.
    for batch in 0..6u16 {
        let members: Vec<_> = (0..1_000).map(|i| (i, u64::from(batch), 1, 1)).collect();
        let message = digest_message(SYN, &members, b"");
        assert_eq!(through(&mut encoder, &mut decoder, &message), message);
        assert!(encoder.last.len() <= MAX_IDS && decoder.ids.len() <= MAX_IDS);
    }
    assert!(encoder.last.len() < 4_000, "{}", encoder.last.len());
    // More new ids in one message than a table holds: sent as it is.
    let many: Vec<_> = (0..5_000).map(|i| (i, 9, 1, 1)).collect();
    let message = digest_message(SYN, &many, b"");
    assert!(message.len() < CAP * 2);
    let frame = encoder.encode(&message);
    assert_eq!(decoder.decode(&frame, 1 << 20), Ok(message));
    let again = digest_message(SYN, &[(1, 9, 2, 1)], b"");
    assert_eq!(through(&mut encoder, &mut decoder, &again), again);
}

/// A frame built by hand: flags, then the body, framed by `codec`.
fn forged(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut inner = vec![flags];
    inner.extend_from_slice(body);
    codec::encode(&inner)
}

#[test]
fn lies_are_refused_with_what_was_wrong() {
    let header = [0xd3, 0xb0, 0, SYN];
    let with = |rest: &[u8]| [&header[..], rest].concat();
    let mut d = Decoder::default();
    assert_eq!(d.decode(&[], CAP), Err(SessionError::Framing));
    assert_eq!(
        d.decode(&forged(7, b""), CAP),
        Err(SessionError::UnknownKind(7))
    );
    // One entry, "the next id" (a zero run of 1), but the table is empty.
    assert_eq!(
        d.decode(&forged(DIGEST, &with(&[1, 0, 0])), CAP),
        Err(SessionError::UnknownId { index: 0, known: 0 })
    );
    assert_eq!(
        d.decode(&forged(DIGEST, &with(&[1, 0, 1])), CAP),
        Err(SessionError::ZeroRun("references"))
    );
    assert_eq!(
        d.decode(&forged(DIGEST, &with(&[0xff, 0xff, 0x04])), CAP),
        Err(SessionError::TooManyEntries(0x1_3fff))
    );
    assert_eq!(
        d.decode(&forged(DIGEST, &with(&[1, 1, 0x81, 0x04])), CAP),
        Err(SessionError::IdTooLong(513))
    );
    assert_eq!(
        d.decode(&forged(DIGEST, &with(&[1, 1, 3, 1, 2])), CAP),
        Err(SessionError::Truncated("new id"))
    );
    assert_eq!(
        d.decode(
            &forged(DIGEST, &with(&[2, 1, 1, 1, b'a', 1, b'b', 0, 1])),
            CAP
        ),
        Err(SessionError::Truncated("counters"))
    );
    assert_eq!(
        Decoder::default().decode(&forged(OPAQUE, &[0; 100]), 99),
        Err(SessionError::TooLarge(99))
    );
}

#[test]
fn the_rebuilt_size_is_capped_exactly() {
    // One id of 500 bytes referenced 200 times rebuilds 200 x 524 bytes from a small frame.
    let mut body = vec![0xd3, 0xb0, 0, SYN];
    put_varint(&mut body, 200);
    // A new id, then 199 times the same one again (a jump of -1 from "the next").
    let mut refs = vec![NEW];
    refs.extend(std::iter::repeat_n(zigzag(-1) + JUMP, 199));
    put_column(&mut body, &refs);
    put_varint(&mut body, 500);
    body.extend([b'x'; 500]);
    for _ in 0..COUNTERS {
        put_column(&mut body, &[0; 200]);
    }
    let frame = forged(DIGEST, &body);
    let size = 4 + 2 + 200 * (500 + 24);
    assert!(frame.len() < 2_000);
    assert_eq!(
        Decoder::default().decode(&frame, size - 1),
        Err(SessionError::TooLarge(size - 1))
    );
    assert_eq!(
        Decoder::default().decode(&frame, size).map(|m| m.len()),
        Ok(size)
    );
}

#[test]
fn a_full_table_refuses_more_ids() {
    let mut d = Decoder::default();
    for i in 0..MAX_IDS {
        d.ids.push(i.to_le_bytes().into());
        d.last.push([0; COUNTERS]);
    }
    let body = [0xd3, 0xb0, 0, SYN, 1, 1, 1, b'a', 0, 0, 0, 0, 0, 0];
    assert_eq!(
        d.decode(&forged(DIGEST, &body), CAP),
        Err(SessionError::TableFull)
    );
    // A reset empties it first.
    assert!(d.decode(&forged(DIGEST | RESET, &body), CAP).is_ok());
    assert_eq!(d.ids.len(), 1);
}

#[test]
fn columns_round_trip_with_runs_of_zeros() {
    for values in [
        vec![],
        vec![0],
        vec![5, 0, 0, 0, 7, 0],
        vec![0; 300],
        vec![u64::MAX, 0, 1],
    ] {
        let mut out = Vec::new();
        put_column(&mut out, &values);
        let mut buf = &out[..];
        assert_eq!(
            take_column(&mut buf, values.len(), "test"),
            Ok(values.clone())
        );
        assert!(buf.is_empty());
    }
    let mut out = Vec::new();
    put_column(&mut out, &[0; 300]);
    assert_eq!(out.len(), 3, "a run of zeros is a 0 byte and its length");
}

#[test]
fn frames_are_split_off_a_byte_stream() {
    let mut stream = Vec::new();
    put_frame(&mut stream, &[1, 2, 3]);
    put_frame(&mut stream, &[7; 300]);
    assert_eq!(next_frame(&stream, 1_000), Ok(Some((4, 1..4))));
    assert_eq!(next_frame(&stream[4..], 1_000), Ok(Some((302, 2..302))));
    assert_eq!(next_frame(&stream[4..300], 1_000), Ok(None));
    assert_eq!(next_frame(&stream[4..5], 1_000), Ok(None));
    assert_eq!(next_frame(&[], 1_000), Ok(None));
    assert_eq!(
        next_frame(&stream[4..], 299),
        Err(SessionError::TooLarge(299))
    );
    assert!(next_frame(&[0xff; 11], usize::MAX).is_err());
}

fn arbitrary_message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (
            proptest::collection::vec((0u16..40, 0u64..3, any::<u64>(), 0u64..1_000), 0..30),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(mut members, ack, tail)| {
                members.sort_by_key(|m| (format!("shoal-{}", m.0), m.1));
                members.dedup_by_key(|m| (m.0, m.1));
                digest_message(if ack { SYN_ACK } else { SYN }, &members, &tail)
            }),
    ]
}

proptest! {
    /// Any sequence of messages comes out of one stream exactly as it went in.
    #[test]
    fn a_stream_round_trips(messages in proptest::collection::vec(arbitrary_message(), 1..40)) {
        let (mut encoder, mut decoder) = (Encoder::default(), Decoder::default());
        for message in &messages {
            prop_assert_eq!(&decoder.decode(&encoder.encode(message), CAP).unwrap(), message);
        }
    }

    #[test]
    fn garbage_never_panics(frames in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..200), 1..8)) {
        let mut decoder = Decoder::default();
        for frame in &frames {
            let _ = decoder.decode(frame, 1 << 16);
            let inner: Vec<u8> = [&[DIGEST][..], frame].concat();
            let _ = decoder.decode(&codec::encode(&inner), 1 << 16);
            let _ = next_frame(frame, 1 << 16);
        }
        prop_assert!(decoder.ids.len() <= MAX_IDS);
    }
}
