//! The NBD wire protocol, client side: fixed-newstyle handshake with
//! NBD_OPT_GO, and the simple-reply transmission phase.
//! Reference: the NBD protocol document (doc/proto.md in the nbd project).

use std::io::{Read, Write};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

pub const OPT_ABORT: u32 = 2;
pub const OPT_GO: u32 = 7;
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERROR_BIT: u32 = 1 << 31;
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const TRANS_READ_ONLY: u16 = 1 << 1;
pub const TRANS_SEND_FLUSH: u16 = 1 << 2;
pub const TRANS_SEND_TRIM: u16 = 1 << 5;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;

pub const REQUEST_LEN: usize = 28;
pub const REPLY_LEN: usize = 16;

/// What NBD_OPT_GO told us about the export.
#[derive(Debug, Clone, Copy)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    /// Largest payload the server takes in one request (NBD_INFO_BLOCK_SIZE; the
    /// protocol's default is 32 MiB).
    pub max_block: u32,
}

/// The largest payload a client may send a server that names no maximum.
pub const DEFAULT_MAX_BLOCK: u32 = 32 << 20;

/// A handshake failure: either a protocol problem or a refusal of the export.
pub enum HandshakeError {
    Protocol(String),
    Refused(String),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HandshakeError::Protocol("server closed the connection during the handshake".into())
        } else if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            HandshakeError::Protocol(
                "the server did not answer in time (is it busy with another client? qemu-nbd serves one unless started with -e N)"
                    .into(),
            )
        } else {
            HandshakeError::Protocol(format!("I/O error during the handshake: {e}"))
        }
    }
}

fn read_u16(r: &mut impl Read) -> std::io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// Option reply error codes, for messages.
fn rep_error_name(code: u32) -> &'static str {
    match code & !REP_ERROR_BIT {
        1 => "NBD_REP_ERR_UNSUP (option not supported)",
        2 => "NBD_REP_ERR_POLICY (forbidden by server policy)",
        3 => "NBD_REP_ERR_INVALID (invalid request)",
        4 => "NBD_REP_ERR_PLATFORM (not supported on this platform)",
        5 => "NBD_REP_ERR_TLS_REQD (server requires TLS)",
        6 => "NBD_REP_ERR_UNKNOWN (no such export)",
        7 => "NBD_REP_ERR_SHUTDOWN (server shutting down)",
        8 => "NBD_REP_ERR_BLOCK_SIZE_REQD (block size negotiation required)",
        9 => "NBD_REP_ERR_TOO_BIG (request too big)",
        _ => "unknown error",
    }
}

/// Errno values the protocol defines, for messages.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown",
    }
}

/// Fixed-newstyle handshake ending in NBD_OPT_GO for `export`.
pub fn handshake<S: Read + Write>(s: &mut S, export: &str) -> Result<ExportInfo, HandshakeError> {
    let proto = |m: String| HandshakeError::Protocol(m);
    if read_u64(s)? != NBDMAGIC {
        return Err(proto("the peer is not an NBD server (no NBDMAGIC)".into()));
    }
    match read_u64(s)? {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => {
            return Err(proto(
                "the server speaks the oldstyle protocol; only fixed newstyle is supported".into(),
            ))
        }
        other => return Err(proto(format!("unexpected handshake magic {other:#x}"))),
    }
    let server_flags = read_u16(s)?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto(
            "the server does not support fixed newstyle negotiation".into(),
        ));
    }
    let mut client_flags = CLIENT_FIXED_NEWSTYLE;
    if server_flags & FLAG_NO_ZEROES != 0 {
        client_flags |= CLIENT_NO_ZEROES;
    }
    s.write_all(&client_flags.to_be_bytes())?;

    let name = export.as_bytes();
    let name_len = u32::try_from(name.len()).map_err(|_| proto("export name too long".into()))?;
    let infos = [INFO_EXPORT, INFO_BLOCK_SIZE];
    let mut opt = Vec::with_capacity(16 + 4 + name.len() + 2 + 2 * infos.len());
    opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&(4 + name_len + 2 + 2 * infos.len() as u32).to_be_bytes());
    opt.extend_from_slice(&name_len.to_be_bytes());
    opt.extend_from_slice(name);
    opt.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for info in infos {
        opt.extend_from_slice(&info.to_be_bytes());
    }
    s.write_all(&opt)?;
    s.flush()?;

    let mut export_info: Option<ExportInfo> = None;
    let (mut min_block, mut max_block) = (1, DEFAULT_MAX_BLOCK);
    loop {
        if read_u64(s)? != OPTION_REPLY_MAGIC {
            return Err(proto("bad option reply magic".into()));
        }
        let option = read_u32(s)?;
        let kind = read_u32(s)?;
        let len = read_u32(s)?;
        if len > 64 * 1024 {
            return Err(proto(format!(
                "option reply of {len} bytes is implausibly long"
            )));
        }
        let mut data = vec![0; len as usize];
        s.read_exact(&mut data)?;
        if option != OPT_GO {
            return Err(proto(format!(
                "reply to option {option} while waiting for NBD_OPT_GO"
            )));
        }
        if kind & REP_ERROR_BIT != 0 {
            let text = String::from_utf8_lossy(&data);
            let reason = if text.is_empty() {
                rep_error_name(kind).to_string()
            } else {
                format!("{} - server says: {}", rep_error_name(kind), text.trim())
            };
            // End the negotiation politely so the server does not log a broken client.
            let mut abort = IHAVEOPT.to_be_bytes().to_vec();
            abort.extend_from_slice(&OPT_ABORT.to_be_bytes());
            abort.extend_from_slice(&0u32.to_be_bytes());
            let _ = s.write_all(&abort);
            return Err(HandshakeError::Refused(reason));
        }
        match kind {
            REP_ACK => break,
            REP_INFO if data.len() >= 2 => {
                let info = u16::from_be_bytes([data[0], data[1]]);
                if info == INFO_EXPORT && data.len() >= 12 {
                    let size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                    let flags = u16::from_be_bytes([data[10], data[11]]);
                    export_info = Some(ExportInfo {
                        size,
                        flags,
                        min_block: 1,
                        max_block: DEFAULT_MAX_BLOCK,
                    });
                } else if info == INFO_BLOCK_SIZE && data.len() >= 14 {
                    min_block = u32::from_be_bytes(data[2..6].try_into().expect("4 bytes"));
                    max_block = u32::from_be_bytes(data[10..14].try_into().expect("4 bytes"));
                }
            }
            _ => {} // informational replies we did not ask for: ignore
        }
    }
    let mut info = export_info.ok_or_else(|| {
        proto("the server acknowledged NBD_OPT_GO without NBD_INFO_EXPORT".into())
    })?;
    info.min_block = min_block;
    info.max_block = max_block;
    Ok(info)
}

/// Encode a transmission request header.
pub fn request(kind: u16, handle: u64, offset: u64, length: u32) -> [u8; REQUEST_LEN] {
    let mut r = [0u8; REQUEST_LEN];
    r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    // bytes 4..6: command flags, none used
    r[6..8].copy_from_slice(&kind.to_be_bytes());
    r[8..16].copy_from_slice(&handle.to_be_bytes());
    r[16..24].copy_from_slice(&offset.to_be_bytes());
    r[24..28].copy_from_slice(&length.to_be_bytes());
    r
}

/// A decoded simple reply header: (magic, error, handle).
pub fn parse_reply(b: &[u8; REPLY_LEN]) -> (u32, u32, u64) {
    let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
    let error = u32::from_be_bytes(b[4..8].try_into().expect("4 bytes"));
    let handle = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    (magic, error, handle)
}
