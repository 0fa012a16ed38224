//! Gossip on one ordered stream per connection and direction, each message encoded against
//! what was already sent on that stream. Pure: bytes in, bytes out, no I/O.
//!
//! Why: at 100 nodes chitchat's digests were 40 of the 45 KB/s each node sent
//! (docs/benchmarks.md). Every SYN and SYN-ACK lists every member, about 50 bytes each: its id
//! (node id, generation, address), heartbeat, last GC version and max version. Compressing each
//! message alone cannot remove the ids (each appears once per message) nor the heartbeats
//! (counters). Here both ends of a stream keep the same table: an id is sent once per stream,
//! then as its position in the table; the three counters as the difference from the values last
//! sent for that id on the stream (a heartbeat moves by a few, the versions mostly by nothing),
//! in columns so that zstd squeezes them (`codec.rs`). The receiver rebuilds chitchat's exact
//! bytes, so chitchat and the identity check (`identity.rs`) see what was sent.
//!
//! This needs order and no loss, which a QUIC stream gives; a message whose write fails ends the
//! stream (the next one starts afresh with empty tables). Messages this module cannot parse (not
//! a SYN or SYN-ACK, or a digest it does not read) go as they are.
//!
//! A lying peer: every frame is checked while it is read, and decoding fails with a
//! [`SessionError`] naming what was wrong (the transport then stops the stream). The tables are
//! bounded ([`MAX_IDS`] ids of at most [`MAX_ID_BYTES`] each) and the rebuilt message is capped
//! before anything is allocated for it.

use super::codec;
use chitchat::{ChitchatId, Deserializable};
use std::collections::HashMap;

/// First byte of a session stream. A stream starting with `codec`'s flags (0 raw, 1 zstd)
/// carries one message, as every stream did before sessions.
pub(crate) const SESSION_STREAM: u8 = 2;
/// Ids one stream's table holds at most; the encoder starts a new table (a reset) before it
/// would pass this.
pub(crate) const MAX_IDS: usize = 4_096;
/// A serialized chitchat id longer than this is not put in the table (its message goes as it
/// is). Node ids are at most 253 bytes (`certs.rs`): an id is then at most 282 bytes.
pub(crate) const MAX_ID_BYTES: usize = 512;

/// Frame kinds (low bits of the first byte of a decompressed frame).
const OPAQUE: u8 = 0;
const DIGEST: u8 = 1;
/// Set on the first frame after the encoder emptied its table: the decoder empties its own.
const RESET: u8 = 0x80;
/// Reference codes: the id after the last one referenced (in table order), a new id (its bytes
/// follow the references), or a jump (zigzag of the distance from "the next", plus `JUMP`).
const NEXT: u64 = 0;
const NEW: u64 = 1;
const JUMP: u64 = 2;
/// Frames shorter than this go uncompressed (zstd's frame header would eat the gain).
const COMPRESS_FROM_BYTES: usize = 64;
/// Chitchat message types whose body starts with a digest (byte 3 of every message).
const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
/// Magic (2 bytes), protocol version, message type.
const HEADER_BYTES: usize = 4;
/// Heartbeat, last GC version, max version: u64 little-endian each.
const COUNTERS: usize = 3;

/// Why a session frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SessionError {
    #[error("session frame is malformed or over the cap once decompressed")]
    Framing,
    #[error("session frame ends inside its {0}")]
    Truncated(&'static str),
    #[error("session frame has unknown kind {0:#04x}")]
    UnknownKind(u8),
    #[error("session frame lists {0} digest entries, more than a chitchat digest holds")]
    TooManyEntries(u64),
    #[error("session frame refers to id {index}, but the stream's table holds {known}")]
    UnknownId { index: i64, known: usize },
    #[error("session frame adds an id of {0} bytes (at most {MAX_ID_BYTES})")]
    IdTooLong(usize),
    #[error("session frame would grow the stream's id table past {MAX_IDS} ids")]
    TableFull,
    #[error("session frame's {0} hold a run of zeros past the entry count")]
    ZeroRun(&'static str),
    #[error("session frame rebuilds a message of more than {0} bytes")]
    TooLarge(usize),
}

/// The sending end of a stream.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    index: HashMap<Box<[u8]>, u32>,
    /// The table in order (the keys of `index` by position): a digest lists its members in the
    /// same order every time, so each entry is looked for first where the previous one's
    /// successor sits, one comparison instead of hashing the id (at 100 nodes the hashing was
    /// a tenth of the mesh's CPU: docs/benchmarks.md).
    ids: Vec<Box<[u8]>>,
    last: Vec<[u64; COUNTERS]>,
    /// The next frame carries [`RESET`].
    reset: bool,
}

/// The receiving end of a stream.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    ids: Vec<Box<[u8]>>,
    last: Vec<[u64; COUNTERS]>,
}

/// One digest entry as chitchat wrote it.
struct Entry<'a> {
    id: &'a [u8],
    counters: [u64; COUNTERS],
}

/// A SYN or SYN-ACK split at its digest: the 4 header bytes, the entries, and the bytes after
/// the digest (the cluster id or the delta), which go as they are.
struct Split<'a> {
    header: &'a [u8],
    entries: Vec<Entry<'a>>,
    tail: &'a [u8],
}

fn split(message: &[u8]) -> Option<Split<'_>> {
    let header = message.get(..HEADER_BYTES)?;
    if header[3] != SYN && header[3] != SYN_ACK {
        return None;
    }
    let mut rest = message.get(HEADER_BYTES..)?;
    let count = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
    rest = &rest[2..];
    let mut entries = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let before = rest;
        let mut cursor = rest;
        ChitchatId::deserialize(&mut cursor).ok()?;
        let id = &before[..before.len() - cursor.len()];
        let mut counters = [0u64; COUNTERS];
        for counter in &mut counters {
            *counter = u64::from_le_bytes(cursor.get(..8)?.try_into().ok()?);
            cursor = &cursor[8..];
        }
        entries.push(Entry { id, counters });
        rest = cursor;
    }
    Some(Split {
        header,
        entries,
        tail: rest,
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Reads a LEB128 varint of at most 10 bytes.
fn take_varint(buf: &mut &[u8], what: &'static str) -> Result<u64, SessionError> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(SessionError::Truncated(what))?;
        *buf = rest;
        if shift == 63 && byte > 1 {
            return Err(SessionError::Truncated(what));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(SessionError::Truncated(what))
}

/// Writes a column of values: each as a varint, except that a run of zeros is a 0 byte then the
/// run's length less one (most references are "the next id", most version deltas nothing).
fn put_column(out: &mut Vec<u8>, values: &[u64]) {
    let mut i = 0;
    while i < values.len() {
        if values[i] != 0 {
            put_varint(out, values[i]);
            i += 1;
            continue;
        }
        let run = values[i..].iter().take_while(|&&v| v == 0).count();
        out.push(0);
        put_varint(out, run as u64 - 1);
        i += run;
    }
}

/// Reads a column of `count` values written by [`put_column`].
fn take_column(
    buf: &mut &[u8],
    count: usize,
    what: &'static str,
) -> Result<Vec<u64>, SessionError> {
    // At most the frame's size plus one run: a run of zeros longer than the frame would have to
    // be stated in a varint the frame holds.
    let mut values = Vec::with_capacity(count.min(buf.len()));
    while values.len() < count {
        let value = take_varint(buf, what)?;
        if value != 0 {
            values.push(value);
            continue;
        }
        let run = take_varint(buf, what)?;
        if run >= (count - values.len()) as u64 {
            return Err(SessionError::ZeroRun(what));
        }
        values.resize(values.len() + run as usize + 1, 0);
    }
    Ok(values)
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], SessionError> {
    if buf.len() < n {
        return Err(SessionError::Truncated(what));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Appends `frame` to `out` as the stream carries it: a varint length, then the frame.
pub(crate) fn put_frame(out: &mut Vec<u8>, frame: &[u8]) {
    put_varint(out, frame.len() as u64);
    out.extend_from_slice(frame);
}

impl Encoder {
    /// Encodes one chitchat message as the next frame of this stream (without its length).
    /// The decoder must see every frame this returns, in order.
    pub(crate) fn encode(&mut self, message: &[u8]) -> Vec<u8> {
        let inner = match split(message) {
            Some(split) if split.entries.iter().all(|e| e.id.len() <= MAX_ID_BYTES) => {
                self.digest_frame(&split)
            }
            _ => {
                let mut inner = Vec::with_capacity(message.len() + 1);
                inner.push(self.flags(OPAQUE));
                inner.extend_from_slice(message);
                inner
            }
        };
        codec::encode_from(&inner, COMPRESS_FROM_BYTES)
    }

    fn flags(&mut self, kind: u8) -> u8 {
        if std::mem::take(&mut self.reset) {
            kind | RESET
        } else {
            kind
        }
    }

    /// The position of `id` in the table, looked for first at `expected`.
    fn find(&self, id: &[u8], expected: usize) -> Option<u32> {
        match self.ids.get(expected) {
            Some(at) if **at == *id => Some(expected as u32),
            _ => self.index.get(id).copied(),
        }
    }

    fn digest_frame(&mut self, split: &Split<'_>) -> Vec<u8> {
        let entries = &split.entries;
        let mut found = Vec::with_capacity(entries.len());
        let mut expected = 0;
        for entry in entries {
            let index = self.find(entry.id, expected);
            // After a new id the next is most likely new too: past the table, so looked up.
            expected = index.map_or(usize::MAX, |i| i as usize + 1);
            found.push(index);
        }
        let new_ids = found.iter().filter(|i| i.is_none()).count();
        if self.index.len() + new_ids > MAX_IDS {
            self.index.clear();
            self.ids.clear();
            self.last.clear();
            self.reset = true;
            found.iter_mut().for_each(|i| *i = None);
        }
        let mut refs = Vec::with_capacity(entries.len());
        let mut added = Vec::new();
        let mut columns: [Vec<u64>; COUNTERS] = Default::default();
        let mut expected = 0i64;
        for (entry, found) in entries.iter().zip(found) {
            // An id not in the table before this message may have come earlier in it.
            let index = match found.or_else(|| self.index.get(entry.id).copied()) {
                Some(index) => {
                    let jump = i64::from(index) - expected;
                    refs.push(if jump == 0 { NEXT } else { zigzag(jump) + JUMP });
                    index
                }
                None => {
                    // More new ids than a table holds (only after a reset above): the decoder
                    // would refuse them, so send this message as it is.
                    if self.last.len() >= MAX_IDS {
                        return self.opaque_after_reset(split);
                    }
                    let index = self.last.len() as u32;
                    self.index.insert(entry.id.into(), index);
                    self.ids.push(entry.id.into());
                    self.last.push([0; COUNTERS]);
                    refs.push(NEW);
                    put_varint(&mut added, entry.id.len() as u64);
                    added.extend_from_slice(entry.id);
                    index
                }
            };
            let last = &mut self.last[index as usize];
            for (k, column) in columns.iter_mut().enumerate() {
                column.push(zigzag(entry.counters[k].wrapping_sub(last[k]) as i64));
                last[k] = entry.counters[k];
            }
            expected = i64::from(index) + 1;
        }
        let mut inner = Vec::with_capacity(
            HEADER_BYTES + 8 + added.len() + 2 * entries.len() + split.tail.len(),
        );
        inner.push(self.flags(DIGEST));
        inner.extend_from_slice(split.header);
        put_varint(&mut inner, entries.len() as u64);
        put_column(&mut inner, &refs);
        inner.extend_from_slice(&added);
        for column in &columns {
            put_column(&mut inner, column);
        }
        inner.extend_from_slice(split.tail);
        inner
    }

    /// Empties the table and sends the message as it is (with [`RESET`]).
    fn opaque_after_reset(&mut self, split: &Split<'_>) -> Vec<u8> {
        self.index.clear();
        self.ids.clear();
        self.last.clear();
        self.reset = false;
        let mut inner = vec![OPAQUE | RESET];
        inner.extend_from_slice(split.header);
        inner.extend_from_slice(&(split.entries.len() as u16).to_le_bytes());
        for entry in &split.entries {
            inner.extend_from_slice(entry.id);
            for counter in entry.counters {
                inner.extend_from_slice(&counter.to_le_bytes());
            }
        }
        inner.extend_from_slice(split.tail);
        inner
    }
}

impl Decoder {
    /// Ids in the table.
    pub(crate) fn table_len(&self) -> usize {
        self.ids.len()
    }

    /// Decodes the next frame of this stream into chitchat's bytes, at most `max_bytes`.
    /// After an error the stream must not be read further (the tables may be half updated).
    pub(crate) fn decode(
        &mut self,
        frame: &[u8],
        max_bytes: usize,
    ) -> Result<Vec<u8>, SessionError> {
        let inner =
            codec::decode(frame, max_frame_bytes(max_bytes)).ok_or(SessionError::Framing)?;
        let (&flags, mut body) = inner.split_first().ok_or(SessionError::Truncated("kind"))?;
        if flags & RESET != 0 {
            self.ids.clear();
            self.last.clear();
        }
        match flags & !RESET {
            OPAQUE if body.len() <= max_bytes => Ok(body.to_vec()),
            OPAQUE => Err(SessionError::TooLarge(max_bytes)),
            DIGEST => self.digest(&mut body, max_bytes),
            other => Err(SessionError::UnknownKind(other)),
        }
    }

    fn digest(&mut self, body: &mut &[u8], max_bytes: usize) -> Result<Vec<u8>, SessionError> {
        let header = take(body, HEADER_BYTES, "header")?;
        let count = take_varint(body, "entry count")?;
        if count > u64::from(u16::MAX) {
            return Err(SessionError::TooManyEntries(count));
        }
        let count = count as usize;
        // Resolve every reference first; new ids are numbered in the order they come.
        let codes = take_column(body, count, "references")?;
        let mut refs = Vec::with_capacity(count);
        let mut expected = 0i64;
        let mut known = self.ids.len();
        for code in codes {
            let index = if code == NEW {
                if known >= MAX_IDS {
                    return Err(SessionError::TableFull);
                }
                known += 1;
                known - 1
            } else {
                let jump = if code == NEXT {
                    0
                } else {
                    unzigzag(code - JUMP)
                };
                let index = expected.wrapping_add(jump);
                if index < 0 || index as usize >= known {
                    return Err(SessionError::UnknownId { index, known });
                }
                index as usize
            };
            refs.push(index);
            expected = index as i64 + 1;
        }
        for _ in self.ids.len()..known {
            let len = take_varint(body, "new id length")?;
            if len > MAX_ID_BYTES as u64 {
                return Err(SessionError::IdTooLong(len as usize));
            }
            let id = take(body, len as usize, "new id")?;
            self.ids.push(id.into());
            self.last.push([0; COUNTERS]);
        }
        let size = HEADER_BYTES
            + 2
            + refs
                .iter()
                .map(|&i| self.ids[i].len() + 8 * COUNTERS)
                .sum::<usize>();
        if size > max_bytes {
            return Err(SessionError::TooLarge(max_bytes));
        }
        let mut columns: [Vec<u64>; COUNTERS] = Default::default();
        for column in &mut columns {
            *column = take_column(body, count, "counters")?;
        }
        let tail = *body;
        let size = size + tail.len();
        if size > max_bytes {
            return Err(SessionError::TooLarge(max_bytes));
        }
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(header);
        out.extend_from_slice(&(count as u16).to_le_bytes());
        for (n, &index) in refs.iter().enumerate() {
            out.extend_from_slice(&self.ids[index]);
            let last = &mut self.last[index];
            for (k, column) in columns.iter().enumerate() {
                last[k] = last[k].wrapping_add(unzigzag(column[n]) as u64);
                out.extend_from_slice(&last[k].to_le_bytes());
            }
        }
        out.extend_from_slice(tail);
        Ok(out)
    }
}

/// The largest frame that can carry a message of `max_message` bytes: a digest frame exceeds its
/// message only by its varints (at most about 12 bytes per entry of at least 41), an opaque one
/// by a byte.
pub(crate) fn max_frame_bytes(max_message: usize) -> usize {
    max_message.saturating_mul(2).saturating_add(64)
}

/// Splits the next frame off the front of `buf`: `Ok(None)` when `buf` holds no whole frame
/// yet, an error when the announced length passes `max_frame_bytes`.
pub(crate) fn next_frame(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(usize, std::ops::Range<usize>)>, SessionError> {
    let mut cursor = buf;
    let len = match take_varint(&mut cursor, "frame length") {
        Ok(len) => len,
        Err(_) if buf.len() < 10 => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > max_frame_bytes as u64 {
        return Err(SessionError::TooLarge(max_frame_bytes));
    }
    let start = buf.len() - cursor.len();
    let end = start + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((end, start..end)))
}

#[cfg(test)]
mod tests;
