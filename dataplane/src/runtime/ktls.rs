//! Kernel TLS: whether this kernel can take over a connection's record layer
//! (`setsockopt(TCP_ULP, "tls")`), the `TLS_TX` / `TLS_RX` crypto state built from the
//! secrets rustls extracts after a handshake, and the two calls a kernel-TLS connection needs
//! besides `read`/`sendfile`: [`recv_record`] (`recvmsg` with a control buffer, which tells
//! application data from alerts and post-handshake messages) and [`send_close_notify`]; and the
//! [`KernelTls`] transport a connection uses once the kernel has its keys.
//!
//! When the hand-over is safe is decided in `http::connection::handover`; `runtime::tls`
//! carries it out (extracts the keys, installs them with [`set_crypto`]).
//! The crypto state building is pure and unit-tested here, including the TLS 1.2 AES-GCM nonce
//! rule below, which is easy to get wrong; the syscalls are exercised by `cargo xtask vmtest`
//! (a kernel with the `tls` module under qemu).
//!
//! Kernel conventions (`include/uapi/linux/tls.h`, `net/tls/`): the 12-byte AEAD nonce of
//! AES-GCM is `salt (4) || iv (8)`; ChaCha20-Poly1305 has no salt and a 12-byte `iv`;
//! `rec_seq` is the next record's sequence number, big-endian. For TLS 1.3 and ChaCha20 the
//! kernel XORs the sequence number into the nonce, exactly as rustls does. For TLS 1.2 AES-GCM
//! it sends `iv` as the record's explicit nonce and *adds one* per record, whereas rustls used
//! `iv XOR seq`; see [`tls12_gcm_explicit_nonce`] for how a reused nonce is avoided.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use std::rc::Rc;
use std::sync::Arc;

use glommio::net::TcpStream as GlommioStream;
use rustls::crypto::cipher::NONCE_LEN;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

use super::core::Core;
use super::transport::{send_all, sendfile_body, End, Transport};
use crate::catalog::OpenObject;
use crate::metrics::{KtlsClose, Metrics};

/// `SOL_TLS` (not exported by every libc version).
const SOL_TLS: libc::c_int = 282;

/// Asks the kernel once whether it accepts `TCP_ULP "tls"`, on a connected loopback TCP pair
/// made for the purpose. `Err` carries the reason (`ENOENT`: no `tls` module; `ENOPROTOOPT`:
/// kernel built without it), or the error that kept the probe from running at all.
pub(crate) fn probe() -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    enable_ulp(client.as_raw_fd())
}

/// Attaches the kernel's `tls` upper-layer protocol to a connected TCP socket.
pub(crate) fn enable_ulp(fd: RawFd) -> io::Result<()> {
    const NAME: &[u8] = b"tls";
    // SAFETY: setsockopt reads NAME.len() bytes from a valid static slice; `fd` is a socket the
    // caller owns for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            NAME.as_ptr().cast(),
            NAME.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `TLS_SET_RECORD_TYPE` / `TLS_GET_RECORD_TYPE` control messages (`include/uapi/linux/tls.h`).
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;
/// TLS record content types.
pub(crate) const CONTENT_ALERT: u8 = 21;
pub(crate) const CONTENT_HANDSHAKE: u8 = 22;
pub(crate) const CONTENT_APPLICATION_DATA: u8 = 23;

/// What one [`recv_record`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// `n` bytes of application data (0: end of stream).
    Data(usize),
    /// A record of another content type, with `n` bytes of its plaintext in the buffer.
    Control(u8, usize),
}

/// Reads from a kernel-TLS socket without blocking (`EAGAIN` when nothing is there). Uses
/// `recvmsg` with room for a `TLS_GET_RECORD_TYPE` control message: a plain `read` fails with
/// `EIO` when the next record is not application data, and leaves it unread.
pub(crate) fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s: aligned for `cmsghdr`; 32 bytes hold CMSG_SPACE(1) (24 on 64-bit).
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is a valid empty one; the fields set point at live locals that
    // outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: `msg` describes `buf` and `control`, both writable for the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // `msg_controllen`; CMSG_DATA of a TLS_GET_RECORD_TYPE message holds one byte.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                let kind = *libc::CMSG_DATA(cmsg);
                if kind != CONTENT_APPLICATION_DATA {
                    return Ok(Received::Control(kind, n));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received::Data(n))
}

/// Sends a close_notify alert on a kernel-TLS socket, if the socket takes it now (it never
/// waits: a client that does not read must not hold the connection open).
pub(crate) fn send_close_notify(fd: RawFd) -> io::Result<()> {
    // level warning (1), description close_notify (0)
    let payload = [1u8, 0];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: as in `recv_record`; the one control message is written inside `control`
    // (CMSG_SPACE(1) <= 32 bytes) before the call, and the kernel only reads `payload`.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(1) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = CONTENT_ALERT;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Which half of the connection a crypto state is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// What we send (`TLS_TX`).
    Tx,
    /// What we receive (`TLS_RX`).
    Rx,
}

/// Hands one direction's crypto state to the kernel (after [`enable_ulp`]).
pub(crate) fn set_crypto(fd: RawFd, direction: Direction, info: &CryptoInfo) -> io::Result<()> {
    let name = match direction {
        Direction::Tx => libc::TLS_TX,
        Direction::Rx => libc::TLS_RX,
    };
    let bytes = info.as_bytes();
    // SAFETY: setsockopt reads `bytes.len()` bytes from a live `repr(C)` struct of the layout
    // the kernel expects for this cipher; `fd` is a socket the caller owns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_TLS,
            name,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why secrets cannot be handed to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsupported {
    /// Only TLS 1.2 and 1.3 have kernel record layers.
    #[error("protocol version {0:?} has no kernel TLS support")]
    Version(ProtocolVersion),
    /// A cipher the kernel path does not take (the server never negotiates one).
    #[error("cipher has no kernel TLS support")]
    Cipher,
    /// A key or IV of the wrong length.
    #[error("{0} has the wrong length")]
    Length(&'static str),
    /// TLS 1.2 AES-GCM after 2^63 records: no explicit nonce is left that rustls has not used.
    #[error("no unused TLS 1.2 explicit nonce left")]
    NonceSpace,
}

/// One direction's kernel crypto state (`struct tls12_crypto_info_*`). Key bytes are zeroed
/// when it is dropped.
pub(crate) enum CryptoInfo {
    /// `TLS_CIPHER_AES_GCM_128`
    AesGcm128(libc::tls12_crypto_info_aes_gcm_128),
    /// `TLS_CIPHER_AES_GCM_256`
    AesGcm256(libc::tls12_crypto_info_aes_gcm_256),
    /// `TLS_CIPHER_CHACHA20_POLY1305`
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl std::fmt::Debug for CryptoInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        let (name, info) = match self {
            CryptoInfo::AesGcm128(c) => ("AesGcm128", c.info),
            CryptoInfo::AesGcm256(c) => ("AesGcm256", c.info),
            CryptoInfo::Chacha20Poly1305(c) => ("Chacha20Poly1305", c.info),
        };
        write!(
            f,
            "CryptoInfo::{name} {{ version: {:#06x}, cipher_type: {} }}",
            info.version, info.cipher_type
        )
    }
}

impl CryptoInfo {
    /// Builds the kernel state for one direction from what
    /// `rustls::ServerConnection::dangerous_extract_secrets` returns for it: the sequence number
    /// of the next record and the traffic secrets.
    pub(crate) fn from_rustls(
        version: ProtocolVersion,
        (seq, secrets): &(u64, ConnectionTrafficSecrets),
    ) -> Result<CryptoInfo, Unsupported> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (Cipher::AesGcm128, key.as_ref(), iv.as_ref())
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (Cipher::AesGcm256, key.as_ref(), iv.as_ref())
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key.as_ref(), iv.as_ref())
            }
            _ => return Err(Unsupported::Cipher),
        };
        let iv: &[u8; NONCE_LEN] = iv.try_into().map_err(|_| Unsupported::Length("iv"))?;
        CryptoInfo::new(version, cipher, key, iv, *seq)
    }

    /// Builds the kernel state from raw parts: `iv` is the 12-byte nonce base as rustls keeps it
    /// (for AES-GCM: the 4-byte salt, then 8 bytes), `seq` the next record's sequence number.
    pub(crate) fn new(
        version: ProtocolVersion,
        cipher: Cipher,
        key: &[u8],
        iv: &[u8; NONCE_LEN],
        seq: u64,
    ) -> Result<CryptoInfo, Unsupported> {
        let tls12 = match version {
            ProtocolVersion::TLSv1_2 => true,
            ProtocolVersion::TLSv1_3 => false,
            other => return Err(Unsupported::Version(other)),
        };
        let info = libc::tls_crypto_info {
            version: if tls12 {
                libc::TLS_1_2_VERSION
            } else {
                libc::TLS_1_3_VERSION
            },
            cipher_type: cipher.kernel_id(),
        };
        let rec_seq = seq.to_be_bytes();
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&iv[..4]);
        let mut explicit = [0u8; 8];
        explicit.copy_from_slice(&iv[4..]);
        if tls12 && cipher != Cipher::Chacha20Poly1305 {
            explicit = tls12_gcm_explicit_nonce(explicit, seq)?;
        }
        Ok(match cipher {
            Cipher::AesGcm128 => CryptoInfo::AesGcm128(libc::tls12_crypto_info_aes_gcm_128 {
                info,
                iv: explicit,
                key: key.try_into().map_err(|_| Unsupported::Length("key"))?,
                salt,
                rec_seq,
            }),
            Cipher::AesGcm256 => CryptoInfo::AesGcm256(libc::tls12_crypto_info_aes_gcm_256 {
                info,
                iv: explicit,
                key: key.try_into().map_err(|_| Unsupported::Length("key"))?,
                salt,
                rec_seq,
            }),
            Cipher::Chacha20Poly1305 => {
                CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info,
                    iv: *iv,
                    key: key.try_into().map_err(|_| Unsupported::Length("key"))?,
                    salt: [],
                    rec_seq,
                })
            }
        })
    }

    /// The struct as the bytes `setsockopt` takes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        fn bytes<T>(v: &T) -> &[u8] {
            // SAFETY: the libc crypto-info structs are `repr(C)` byte arrays after two u16s,
            // with no padding (sizes checked in the tests), so every byte is initialized.
            unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
        }
        match self {
            CryptoInfo::AesGcm128(c) => bytes(c),
            CryptoInfo::AesGcm256(c) => bytes(c),
            CryptoInfo::Chacha20Poly1305(c) => bytes(c),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        let key: &mut [u8] = match self {
            CryptoInfo::AesGcm128(c) => &mut c.key,
            CryptoInfo::AesGcm256(c) => &mut c.key,
            CryptoInfo::Chacha20Poly1305(c) => &mut c.key,
        };
        for b in key.iter_mut() {
            // SAFETY: a valid, aligned `&mut u8`; volatile so the wipe is not optimized away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// The AEADs kernel TLS takes (and the only ones the server negotiates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cipher {
    /// AES-128-GCM
    AesGcm128,
    /// AES-256-GCM
    AesGcm256,
    /// ChaCha20-Poly1305
    Chacha20Poly1305,
}

impl Cipher {
    fn kernel_id(self) -> u16 {
        match self {
            Cipher::AesGcm128 => libc::TLS_CIPHER_AES_GCM_128,
            Cipher::AesGcm256 => libc::TLS_CIPHER_AES_GCM_256,
            Cipher::Chacha20Poly1305 => libc::TLS_CIPHER_CHACHA20_POLY1305,
        }
    }
}

/// The first explicit nonce the kernel may use for TLS 1.2 AES-GCM records.
///
/// rustls sent records `0..seq` with explicit nonces `base XOR j`; the kernel will send
/// `start, start + 1, start + 2, ...` (it adds one per record, `tls_advance_record_sn`). Passing
/// `base` itself, as the sequence-number-free reading of the extracted IV suggests, would make
/// the kernel's first record reuse the nonce of rustls's first record (the Finished message):
/// a GCM nonce reused under the same key leaks the authentication key. Every `base XOR j` with
/// `j < seq` lies in the aligned block of `2^m` values around `base` (`2^m >= seq`), so starting
/// just past that block is safe until the kernel's counter wraps, 2^64 - 2^m records later.
pub(crate) fn tls12_gcm_explicit_nonce(base: [u8; 8], seq: u64) -> Result<[u8; 8], Unsupported> {
    let base = u64::from_be_bytes(base);
    if seq == 0 {
        return Ok(base.to_be_bytes());
    }
    let bits = u64::BITS - (seq - 1).leading_zeros();
    if bits >= 63 {
        return Err(Unsupported::NonceSpace);
    }
    let block = (1u64 << bits) - 1;
    Ok((base | block).wrapping_add(1).to_be_bytes())
}

/// An HTTPS connection after the hand-over: the kernel encrypts and decrypts, so bodies go out
/// with the same `sendfile` path as plain HTTP. Reads use `recvmsg` to see each record's type:
/// close_notify or any alert ends the connection, and so does a post-handshake message (a
/// TLS 1.3 KeyUpdate: the kernel cannot take new keys, so the connection closes cleanly and the
/// client reconnects), each counted in `edgeplane_tls_ktls_closed_total`.
pub(crate) struct KernelTls {
    stream: GlommioStream,
    fd: RawFd,
    /// Plaintext rustls decrypted before the hand-over (a request sent right after Finished).
    early: Vec<u8>,
    early_at: usize,
    metrics: Arc<Metrics>,
    core: usize,
}

impl KernelTls {
    /// A connection whose keys were just installed on `fd`; `early`: plaintext rustls had
    /// already decrypted. `metrics` and `core`: where closes are counted.
    pub(crate) fn new(
        stream: GlommioStream,
        fd: RawFd,
        early: Vec<u8>,
        metrics: Arc<Metrics>,
        core: usize,
    ) -> KernelTls {
        KernelTls {
            stream,
            fd,
            early,
            early_at: 0,
            metrics,
            core,
        }
    }
}

impl Transport for KernelTls {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, End> {
        if self.early_at < self.early.len() {
            let n = buf.len().min(self.early.len() - self.early_at);
            buf[..n].copy_from_slice(&self.early[self.early_at..self.early_at + n]);
            self.early_at += n;
            if self.early_at == self.early.len() {
                self.early = Vec::new();
                self.early_at = 0;
            }
            return Ok(n);
        }
        loop {
            let why = match recv_record(self.fd, buf) {
                Ok(Received::Data(n)) => return Ok(n),
                Ok(Received::Control(CONTENT_ALERT, n)) => {
                    if n >= 2 && buf[1] == 0 {
                        KtlsClose::CloseNotify
                    } else {
                        KtlsClose::Alert
                    }
                }
                Ok(Received::Control(CONTENT_HANDSHAKE, n)) => {
                    // Handshake message type 24: KeyUpdate.
                    if n >= 1 && buf[0] == 24 {
                        KtlsClose::KeyUpdate
                    } else {
                        KtlsClose::Handshake
                    }
                }
                Ok(Received::Control(..)) => KtlsClose::BadRecord,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Wait until something is readable (a peek through glommio's reactor; it
                    // fails with EIO when the next record is not data, which is readable too).
                    match self.stream.peek(&mut [0u8; 1]).await {
                        Ok(0) => return Ok(0),
                        Ok(_) => continue,
                        Err(e) if e.raw_os_error() == Some(libc::EIO) => continue,
                        Err(_) => return Err(End::Client),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EBADMSG | libc::EMSGSIZE | libc::EIO | libc::EINVAL) => {
                        KtlsClose::BadRecord
                    }
                    _ => return Err(End::Client),
                },
            };
            self.metrics.core(self.core).ktls_closed(why);
            tracing::debug!(
                "kernel TLS connection ended by the client: {}",
                why.as_str()
            );
            // The end of the request stream: the loop closes (close_notify, FIN).
            return Ok(0);
        }
    }

    async fn send_head(&mut self, bytes: &[u8], more: bool) -> Result<(), End> {
        send_all(&mut self.stream, self.fd, bytes, more).await
    }

    async fn send_body(
        &mut self,
        core: &Core,
        obj: &Rc<OpenObject>,
        start: u64,
        len: u64,
    ) -> Result<(), End> {
        sendfile_body(&mut self.stream, self.fd, core, obj, start, len).await
    }

    async fn close(&mut self, clean: bool) {
        if clean {
            let _ = send_close_notify(self.fd);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};
    use std::io::{Read as _, Write as _};

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        // include/uapi/linux/tls.h: 4-byte header, then iv, key, salt, rec_seq; no padding.
        assert_eq!(
            size_of::<libc::tls12_crypto_info_aes_gcm_128>(),
            4 + 8 + 16 + 4 + 8
        );
        assert_eq!(
            size_of::<libc::tls12_crypto_info_aes_gcm_256>(),
            4 + 8 + 32 + 4 + 8
        );
        assert_eq!(
            size_of::<libc::tls12_crypto_info_chacha20_poly1305>(),
            4 + 12 + 32 + 8
        );
    }

    fn iv12() -> [u8; 12] {
        std::array::from_fn(|i| 0xa0 + i as u8)
    }

    #[test]
    fn tls13_aes_gcm_128_layout() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let info = CryptoInfo::new(
            ProtocolVersion::TLSv1_3,
            Cipher::AesGcm128,
            &key,
            &iv12(),
            0x0102_0304_0506_0708,
        )
        .unwrap();
        let b = info.as_bytes();
        assert_eq!(b.len(), 40);
        // version 0x0304 and cipher 51, native-endian u16s.
        assert_eq!(&b[0..2], &0x0304u16.to_ne_bytes());
        assert_eq!(&b[2..4], &51u16.to_ne_bytes());
        // iv: the last 8 bytes of the nonce base; key; salt: the first 4; rec_seq big-endian.
        assert_eq!(&b[4..12], &iv12()[4..]);
        assert_eq!(&b[12..28], &key);
        assert_eq!(&b[28..32], &iv12()[..4]);
        assert_eq!(&b[32..40], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(format!("{info:?}").contains("AesGcm128"));
        assert!(!format!("{info:?}").contains("key"));
    }

    #[test]
    fn from_rustls_secrets() {
        let key = [7u8; 32];
        let secrets = (
            5,
            ConnectionTrafficSecrets::Aes256Gcm {
                key: AeadKey::from(key),
                iv: Iv::from(iv12()),
            },
        );
        let info = CryptoInfo::from_rustls(ProtocolVersion::TLSv1_3, &secrets).unwrap();
        let CryptoInfo::AesGcm256(c) = &info else {
            panic!("{info:?}")
        };
        assert_eq!((c.info.version, c.info.cipher_type), (0x0304, 52));
        assert_eq!(c.key, key);
        assert_eq!(c.salt, iv12()[..4]);
        assert_eq!(c.iv, iv12()[4..]);
        assert_eq!(c.rec_seq, 5u64.to_be_bytes());

        let secrets = (
            1,
            ConnectionTrafficSecrets::Chacha20Poly1305 {
                key: AeadKey::from(key),
                iv: Iv::from(iv12()),
            },
        );
        for version in [ProtocolVersion::TLSv1_2, ProtocolVersion::TLSv1_3] {
            let info = CryptoInfo::from_rustls(version, &secrets).unwrap();
            let CryptoInfo::Chacha20Poly1305(c) = &info else {
                panic!("{info:?}")
            };
            assert_eq!(c.info.cipher_type, 54);
            // ChaCha20: no salt, the whole 12-byte base, XORed with the sequence by the kernel
            // as by rustls, in both versions.
            assert_eq!(c.iv, iv12());
            assert_eq!(c.rec_seq, 1u64.to_be_bytes());
            assert_eq!(info.as_bytes().len(), 56);
        }
        assert_eq!(
            CryptoInfo::from_rustls(ProtocolVersion::TLSv1_1, &secrets).unwrap_err(),
            Unsupported::Version(ProtocolVersion::TLSv1_1)
        );
        // A 32-byte key offered as AES-128 is refused, not truncated.
        assert_eq!(
            CryptoInfo::new(
                ProtocolVersion::TLSv1_3,
                Cipher::AesGcm128,
                &key,
                &iv12(),
                0
            )
            .unwrap_err(),
            Unsupported::Length("key")
        );
    }

    #[test]
    fn tls12_gcm_moves_the_explicit_nonce_past_every_one_rustls_used() {
        let info = CryptoInfo::new(
            ProtocolVersion::TLSv1_2,
            Cipher::AesGcm128,
            &[0u8; 16],
            &iv12(),
            1,
        )
        .unwrap();
        let CryptoInfo::AesGcm128(c) = &info else {
            panic!()
        };
        assert_eq!(c.info.version, 0x0303);
        assert_eq!(c.salt, iv12()[..4]);
        assert_ne!(c.iv, iv12()[4..], "would reuse the Finished record's nonce");

        // Exhaustively for small counts and a few bases: the kernel's next nonces never meet
        // one rustls used.
        for base in [0u64, 1, 0xff, 0x8000_0000_0000_0000, u64::MAX - 3, u64::MAX] {
            for seq in 0..70u64 {
                let start =
                    u64::from_be_bytes(tls12_gcm_explicit_nonce(base.to_be_bytes(), seq).unwrap());
                let used: Vec<u64> = (0..seq).map(|j| base ^ j).collect();
                for k in 0..1000u64 {
                    let kernel = start.wrapping_add(k);
                    assert!(
                        !used.contains(&kernel),
                        "base {base:#x} seq {seq}: kernel record {k} reuses nonce {kernel:#x}"
                    );
                }
            }
        }
        assert_eq!(
            tls12_gcm_explicit_nonce([0; 8], 1 << 63).unwrap_err(),
            Unsupported::NonceSpace
        );
    }

    #[test]
    fn probe_answers_on_this_kernel() {
        // Either the kernel has the `tls` module, or it says why not in a recognisable way.
        match probe() {
            Ok(()) => {}
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOPROTOOPT)),
                "unexpected probe error: {e}"
            ),
        }
    }

    /// Plays the kernel's part: parses the `setsockopt` bytes by the kernel's layout and seals
    /// and opens records the way `net/tls` does, so the struct building is checked against a
    /// real rustls peer without a kernel that has the `tls` module.
    struct KernelModel {
        tls12: bool,
        aead: ring::aead::LessSafeKey,
        chacha: bool,
        /// AES-GCM: salt (4) || iv (8); ChaCha20: iv (12).
        nonce_base: [u8; 12],
        rec_seq: u64,
    }

    impl KernelModel {
        fn new(info: &CryptoInfo) -> KernelModel {
            let b = info.as_bytes();
            let version = u16::from_ne_bytes([b[0], b[1]]);
            let cipher = u16::from_ne_bytes([b[2], b[3]]);
            let seq = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
            let mut nonce_base = [0u8; 12];
            let (alg, key, rec_seq) = match cipher {
                51 => {
                    nonce_base[..4].copy_from_slice(&b[28..32]);
                    nonce_base[4..].copy_from_slice(&b[4..12]);
                    (&ring::aead::AES_128_GCM, &b[12..28], seq(32))
                }
                52 => {
                    nonce_base[..4].copy_from_slice(&b[44..48]);
                    nonce_base[4..].copy_from_slice(&b[4..12]);
                    (&ring::aead::AES_256_GCM, &b[12..44], seq(48))
                }
                54 => {
                    nonce_base.copy_from_slice(&b[4..16]);
                    (&ring::aead::CHACHA20_POLY1305, &b[16..48], seq(48))
                }
                other => panic!("cipher {other}"),
            };
            KernelModel {
                tls12: version == 0x0303,
                aead: ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, key).unwrap()),
                chacha: cipher == 54,
                nonce_base,
                rec_seq,
            }
        }

        /// TLS 1.3 and ChaCha20: base XOR sequence number. TLS 1.2 AES-GCM: salt || explicit,
        /// the explicit part being the kernel's running counter (TX) or the wire's (RX).
        fn nonce(&self, explicit: Option<[u8; 8]>) -> ring::aead::Nonce {
            let mut n = self.nonce_base;
            match explicit {
                Some(e) => n[4..].copy_from_slice(&e),
                None => {
                    for (b, s) in n[4..].iter_mut().zip(self.rec_seq.to_be_bytes()) {
                        *b ^= s;
                    }
                }
            }
            ring::aead::Nonce::assume_unique_for_key(n)
        }

        fn explicit_nonces(&self) -> bool {
            self.tls12 && !self.chacha
        }

        /// One application-data record, as `TLS_TX` would send it.
        fn seal(&mut self, data: &[u8]) -> Vec<u8> {
            let mut body = data.to_vec();
            let (nonce, aad, explicit) = if self.tls12 {
                let mut aad = self.rec_seq.to_be_bytes().to_vec();
                aad.extend_from_slice(&[0x17, 3, 3]);
                aad.extend_from_slice(&(data.len() as u16).to_be_bytes());
                if self.explicit_nonces() {
                    let e: [u8; 8] = self.nonce_base[4..].try_into().unwrap();
                    (self.nonce(Some(e)), aad, Some(e))
                } else {
                    (self.nonce(None), aad, None)
                }
            } else {
                body.push(0x17);
                let len = (body.len() + 16) as u16;
                let mut aad = vec![0x17, 3, 3];
                aad.extend_from_slice(&len.to_be_bytes());
                (self.nonce(None), aad, None)
            };
            self.aead
                .seal_in_place_append_tag(nonce, ring::aead::Aad::from(&aad), &mut body)
                .unwrap();
            let mut payload = explicit.map(|e| e.to_vec()).unwrap_or_default();
            payload.extend_from_slice(&body);
            let mut record = vec![0x17, 3, 3];
            record.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            record.extend_from_slice(&payload);
            self.rec_seq += 1;
            if self.explicit_nonces() {
                // tls_advance_record_sn: the explicit nonce counts up by one per record.
                let next = u64::from_be_bytes(self.nonce_base[4..].try_into().unwrap());
                self.nonce_base[4..].copy_from_slice(&next.wrapping_add(1).to_be_bytes());
            }
            record
        }

        /// One application-data record received, as `TLS_RX` would decrypt it.
        fn open(&mut self, record: &[u8]) -> Vec<u8> {
            assert_eq!(record[0], 0x17, "application data");
            let mut payload = record[5..].to_vec();
            let (nonce, aad) = if self.tls12 {
                let (nonce, rest) = if self.explicit_nonces() {
                    let e: [u8; 8] = payload[..8].try_into().unwrap();
                    (self.nonce(Some(e)), payload.split_off(8))
                } else {
                    (self.nonce(None), payload)
                };
                payload = rest;
                let mut aad = self.rec_seq.to_be_bytes().to_vec();
                aad.extend_from_slice(&[0x17, 3, 3]);
                aad.extend_from_slice(&((payload.len() - 16) as u16).to_be_bytes());
                (nonce, aad)
            } else {
                (self.nonce(None), record[..5].to_vec())
            };
            let plain = self
                .aead
                .open_in_place(nonce, ring::aead::Aad::from(&aad), &mut payload)
                .expect("the kernel model cannot open the record")
                .to_vec();
            self.rec_seq += 1;
            if self.tls12 {
                plain
            } else {
                let mut plain = plain;
                assert_eq!(plain.pop(), Some(0x17), "inner content type");
                plain
            }
        }
    }

    #[derive(Debug)]
    struct OneKey(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for OneKey {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// Moves every pending record from one side to the other.
    fn transfer(
        from: &mut impl DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
        to: &mut impl DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    ) {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    use edgeplane_test_support::tls::TrustAnyCert;
    use std::ops::DerefMut;
    use std::sync::Arc;

    /// The six suites the server negotiates, with their protocol version.
    const SUITES: [(
        rustls::SupportedCipherSuite,
        &rustls::SupportedProtocolVersion,
    ); 6] = {
        use rustls::crypto::ring::cipher_suite as cs;
        use rustls::version::{TLS12, TLS13};
        [
            (cs::TLS13_AES_128_GCM_SHA256, &TLS13),
            (cs::TLS13_AES_256_GCM_SHA384, &TLS13),
            (cs::TLS13_CHACHA20_POLY1305_SHA256, &TLS13),
            (cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, &TLS12),
            (cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, &TLS12),
            (cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, &TLS12),
        ]
    };

    /// A server configuration as in production (secret extraction on) and a client, both
    /// limited to one suite. The key is fresh; the certificate is two bytes, which only a client
    /// that checks nothing ([`TrustAnyCert::without_signature_checks`]) accepts.
    fn configs(
        suite: rustls::SupportedCipherSuite,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let key = rustls::crypto::ring::sign::any_supported_type(
            &rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8.as_ref().to_vec().into()),
        )
        .unwrap();
        let certified = Arc::new(rustls::sign::CertifiedKey::new(
            vec![rustls::pki_types::CertificateDer::from(vec![0x30, 0x00])],
            key,
        ));
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![suite],
            ..crate::tls::provider()
        });
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneKey(certified)));
        server_config.enable_secret_extraction = true;
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnyCert::without_signature_checks()))
            .with_no_client_auth();
        (Arc::new(server_config), Arc::new(client_config))
    }

    /// On a kernel with the `tls` module: a rustls handshake over loopback TCP, then the
    /// server's side handed to the kernel; a rustls client must read what the server writes
    /// in plain text and with `sendfile`, and the kernel must decrypt what the client writes.
    /// Skips (with a message) where the kernel has no TLS, as on the development machine; for
    /// developers on a kernel with the module. `cargo xtask vmtest` covers the same six suites
    /// end to end with the server itself, on Debian's 6.1 kernel.
    #[test]
    fn kernel_takes_over_a_rustls_session_where_available() {
        if let Err(e) = probe() {
            eprintln!("skipped: kernel TLS unavailable (TCP_ULP tls: {e})");
            return;
        }
        let mut file = tempfile::tempfile().unwrap();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all(&body).unwrap();
        for (suite, version) in SUITES {
            let what = format!("{:?}", suite.suite());
            let (server_config, client_config) = configs(suite, version);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let expect: Vec<u8> = b"hello from the kernel"
                .iter()
                .chain(&body)
                .copied()
                .collect();
            let client = std::thread::spawn(move || {
                let sock = TcpStream::connect(addr).unwrap();
                sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                let conn = rustls::ClientConnection::new(
                    client_config,
                    "edgeplane.test".try_into().unwrap(),
                )
                .unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut got = vec![0u8; expect.len()];
                tls.read_exact(&mut got).unwrap();
                assert!(got == expect, "the client read something else");
                tls.write_all(b"hello kernel").unwrap();
                tls.flush().unwrap();
            });
            let (mut sock, _) = listener.accept().unwrap();
            let mut server = rustls::ServerConnection::new(server_config).unwrap();
            while server.is_handshaking() {
                server.complete_io(&mut sock).unwrap();
            }
            while server.wants_write() {
                server.write_tls(&mut sock).unwrap();
            }
            let v = server.protocol_version().unwrap();
            let secrets = server.dangerous_extract_secrets().unwrap();
            let fd = sock.as_raw_fd();
            enable_ulp(fd).unwrap();
            let tx = CryptoInfo::from_rustls(v, &secrets.tx).unwrap();
            set_crypto(fd, Direction::Tx, &tx).unwrap_or_else(|e| panic!("{what}: TLS_TX: {e}"));
            let rx = CryptoInfo::from_rustls(v, &secrets.rx).unwrap();
            set_crypto(fd, Direction::Rx, &rx).unwrap_or_else(|e| panic!("{what}: TLS_RX: {e}"));
            sock.write_all(b"hello from the kernel").unwrap();
            let mut off = 0u64;
            while off < body.len() as u64 {
                let left = body.len() - off as usize;
                super::super::sys::sendfile(fd, &file, &mut off, left).unwrap();
            }
            let mut got = [0u8; 12];
            sock.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello kernel", "{what}");
            client.join().unwrap();
        }
    }

    /// A handshake in memory with the server's production settings (suites, versions, secret
    /// extraction), then the server's secrets handed to [`KernelModel`]s: records they seal
    /// must open in the rustls client, and records the client seals must open in them, over
    /// several records (sequence numbers, and the TLS 1.2 explicit nonce counter).
    #[test]
    fn kernel_crypto_state_interoperates_with_rustls() {
        for (suite, version) in SUITES {
            let what = format!("{:?}", suite.suite());
            let (server_config, client_config) = configs(suite, version);
            let mut server = rustls::ServerConnection::new(server_config).unwrap();
            let mut client =
                rustls::ClientConnection::new(client_config, "edgeplane.test".try_into().unwrap())
                    .unwrap();
            while server.is_handshaking() || client.is_handshaking() || server.wants_write() {
                transfer(&mut client, &mut server);
                transfer(&mut server, &mut client);
            }
            // Some traffic through rustls first, so the sequence numbers are not where they
            // started.
            server.writer().write_all(b"from rustls").unwrap();
            transfer(&mut server, &mut client);
            let mut got = vec![0u8; 64];
            let n = client.reader().read(&mut got).unwrap();
            assert_eq!(&got[..n], b"from rustls", "{what}");
            client.writer().write_all(b"hello rustls").unwrap();
            transfer(&mut client, &mut server);
            let n = server.reader().read(&mut got).unwrap();
            assert_eq!(&got[..n], b"hello rustls", "{what}");

            let v = server.protocol_version().unwrap();
            let secrets = server.dangerous_extract_secrets().unwrap();
            assert!(secrets.tx.0 > 0, "{what}: tx sequence {}", secrets.tx.0);
            let mut tx = KernelModel::new(&CryptoInfo::from_rustls(v, &secrets.tx).unwrap());
            let mut rx = KernelModel::new(&CryptoInfo::from_rustls(v, &secrets.rx).unwrap());
            for i in 0..3 {
                let msg = format!("kernel record {i} of {what}");
                let record = tx.seal(msg.as_bytes());
                let mut rd = &record[..];
                client.read_tls(&mut rd).unwrap();
                client
                    .process_new_packets()
                    .unwrap_or_else(|e| panic!("{what}: record {i}: {e}"));
                let n = client.reader().read(&mut got).unwrap();
                assert_eq!(&got[..n], msg.as_bytes(), "{what}");

                let msg = format!("client record {i} of {what}");
                client.writer().write_all(msg.as_bytes()).unwrap();
                let mut record = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut record).unwrap();
                }
                assert_eq!(rx.open(&record), msg.as_bytes(), "{what}");
            }
        }
    }
}
