//! A blocking netlink connection that sends many requests per syscall and matches every
//! answer to its request by sequence number. Shared by the IPVS and rtnetlink code.

use crate::error::DataplaneError;
use crate::ipvs::wire::{error_code, split_messages, NLMSG_DONE, NLMSG_ERROR};
use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;

/// Requests per `send`. Each one is answered by an ACK that sits in the socket's receive
/// buffer until read; 200 stays well inside the default buffer (the kernel drops ACKs that
/// do not fit, and we would wait for them forever).
pub const BATCH_MAX: usize = 200;
const RECV_BUF_BYTES: usize = 1 << 20;

pub struct NlConn {
    sock: NlSocket,
    pid: u32,
    seq: u32,
    buf: Vec<u8>,
    what: &'static str,
}

impl NlConn {
    pub fn open(family: NlFamily, what: &'static str) -> Result<Self, DataplaneError> {
        let sock = NlSocket::connect(family, None, Groups::empty())
            .map_err(|e| DataplaneError::io(format!("open {what} netlink socket"), e))?;
        sock.block()
            .map_err(|e| DataplaneError::io(format!("configure {what} socket"), e))?;
        // Best effort: a bigger buffer is capped by net.core.rmem_max anyway.
        let _ = sock.set_recv_buffer_size(RECV_BUF_BYTES);
        let pid = sock
            .pid()
            .map_err(|e| DataplaneError::io(format!("read {what} socket address"), e))?;
        Ok(NlConn {
            sock,
            pid,
            seq: 1,
            buf: vec![0; RECV_BUF_BYTES],
            what,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), DataplaneError> {
        self.sock
            .send(bytes, Msg::empty())
            .map_err(|e| DataplaneError::io(format!("send to {}", self.what), e))?;
        Ok(())
    }

    fn recv(&mut self) -> Result<usize, DataplaneError> {
        let (n, _) = self
            .sock
            .recv(&mut self.buf[..], Msg::empty())
            .map_err(|e| DataplaneError::io(format!("receive from {}", self.what), e))?;
        Ok(n)
    }

    /// Send requests that each want one ACK; returns one result per request: 0 or the errno.
    /// `requests` are `(seq, bytes)` with distinct, increasing sequence numbers.
    pub fn transact(&mut self, requests: &[(u32, Vec<u8>)]) -> Result<Vec<i32>, DataplaneError> {
        let mut results = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(BATCH_MAX) {
            let mut bytes = Vec::with_capacity(chunk.iter().map(|(_, b)| b.len()).sum());
            for (_, b) in chunk {
                bytes.extend_from_slice(b);
            }
            self.send(&bytes)?;
            let first = chunk[0].0;
            let mut got: Vec<Option<i32>> = vec![None; chunk.len()];
            let mut missing = chunk.len();
            while missing > 0 {
                let n = self.recv()?;
                let msgs = split_messages(&self.buf[..n])?;
                for m in msgs {
                    if m.ty != NLMSG_ERROR {
                        continue;
                    }
                    let idx = m.seq.wrapping_sub(first) as usize;
                    if idx < got.len() && got[idx].is_none() {
                        got[idx] = Some(error_code(&m)?);
                        missing -= 1;
                    }
                }
            }
            results.extend(got.into_iter().map(|r| r.unwrap_or(0)));
        }
        Ok(results)
    }

    /// Send one dump request and collect the payload of every reply message.
    /// A kernel error ends the dump with `Err(errno)`.
    pub fn dump(
        &mut self,
        seq: u32,
        request: &[u8],
    ) -> Result<Result<Vec<Vec<u8>>, i32>, DataplaneError> {
        let mut out = Vec::new();
        let done = self.dump_each(seq, request, |p| {
            out.push(p.to_vec());
            Ok(())
        })?;
        Ok(done.map(|()| out))
    }

    /// Send one dump request and hand the payload of every reply message to `each`, in place
    /// (no copy). A kernel error ends the dump with `Err(errno)`; an error from `each` stops
    /// reading and is returned (what is left of the dump is skipped by later reads: its
    /// sequence number is not theirs).
    pub fn dump_each(
        &mut self,
        seq: u32,
        request: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), DataplaneError>,
    ) -> Result<Result<(), i32>, DataplaneError> {
        self.send(request)?;
        loop {
            let n = self.recv()?;
            let msgs = split_messages(&self.buf[..n])?;
            for m in msgs {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(Ok(())),
                    NLMSG_ERROR => {
                        let code = error_code(&m)?;
                        if code != 0 {
                            return Ok(Err(code));
                        }
                        return Ok(Ok(()));
                    }
                    _ => each(m.payload)?,
                }
            }
        }
    }
}

/// Serialize one netlink message with neli's types.
pub fn encode<T, P>(
    ty: T,
    flags: neli::consts::nl::NlmF,
    seq: u32,
    pid: u32,
    payload: P,
) -> Result<Vec<u8>, DataplaneError>
where
    T: neli::consts::nl::NlType,
    P: neli::Size + neli::ToBytes,
{
    use neli::nl::{NlPayload, NlmsghdrBuilder};
    use neli::{Size, ToBytes};
    let msg = NlmsghdrBuilder::default()
        .nl_type(ty)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_pid(pid)
        .nl_payload(NlPayload::Payload(payload))
        .build()
        .map_err(|e| DataplaneError::Malformed {
            op: "encode".into(),
            detail: e.to_string(),
        })?;
    let mut buf = std::io::Cursor::new(vec![0u8; msg.padded_size()]);
    msg.to_bytes(&mut buf)
        .map_err(|e| DataplaneError::Malformed {
            op: "encode".into(),
            detail: e.to_string(),
        })?;
    Ok(buf.into_inner())
}
