//! UDP fan-out in as few system calls as possible (RFC 3550 §11: one RTP packet per UDP
//! datagram, unchanged).
//!
//! Specifications: RFC 3550 §11 (RTP over UDP); RFC 768 (UDP). Segmentation offload (UDP_SEGMENT)
//! is Linux's, not a protocol's: the receiver sees the same datagrams.
//!
//! A push's packets for every unicast client of a stream leave from the same socket, so on Linux
//! they are collected in a [`Batch`] and go in one `sendmmsg` per 1024 messages, each with its
//! own destination. Packet by packet, 1000 clients of a 4 Mbit/s stream cost ~370,000 `sendto` a
//! second, each a kernel entry and exit at which the sender is likely to be preempted by the
//! receivers it just woke. [`send_burst`] does the same for one destination (a multicast group).
//! Elsewhere, one `send_to` per packet.
//!
//! UDP GSO (Linux >= 4.18): in a batch, a run of consecutive datagrams to one destination that
//! are all as long as the batch's longest (a frame's full-size fragments), with at most one
//! shorter datagram at its end, is one message with a `UDP_SEGMENT` control message
//! (`gso_runs`, within [`MAX_SEGMENTS`] and [`MAX_GSO_BYTES`]): the kernel builds and routes one
//! buffer and cuts it into the same datagrams at the device, so its send path runs once per run
//! instead of once per packet. Each [`UdpSender`] asks the kernel once whether it has
//! `UDP_SEGMENT`, and falls back to datagrams one by one for good, logged once, where a GSO send
//! is refused as such (EINVAL, EIO, ENOPROTOOPT, EMSGSIZE, EOPNOTSUPP: a path or device that
//! cannot take it); a datagram refused for itself (a full buffer, an unreachable destination)
//! is only counted.
//!
//! rtspserversink's fan-out sends on the producer's thread, rtspclientsink2's publication on the
//! streaming thread or its network thread, both from a [`UdpSender`] (a std socket). A datagram
//! the kernel refuses (a full buffer on a non-blocking socket) is counted, never waited for.

use std::net::{SocketAddr, UdpSocket};

/// A UDP socket the functions here send from, without blocking on a full buffer where the
/// socket is non-blocking.
pub trait SendSocket {
    fn send_one(&self, data: &[u8], to: SocketAddr) -> std::io::Result<usize>;
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd;
}

impl SendSocket for UdpSocket {
    fn send_one(&self, data: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.send_to(data, to)
    }
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

impl SendSocket for tokio::net::UdpSocket {
    fn send_one(&self, data: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.try_send_to(data, to)
    }
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}
use std::sync::atomic::{AtomicU8, AtomicU64};

use bytes::Bytes;

/// The RTP socket of a stream with what the kernel said about UDP segmentation offload on it:
/// unknown until the first burst, then on, or off for good (a kernel without `UDP_SEGMENT`, a
/// path that refused it). Batches ([`Batch::flush`]) are sent from it.
pub struct UdpSender {
    socket: UdpSocket,
    gso: AtomicU8,
}

/// [`UdpSender::gso`] states.
const GSO_UNKNOWN: u8 = 0;
const GSO_ON: u8 = 1;
const GSO_OFF: u8 = 2;

impl UdpSender {
    pub fn new(socket: UdpSocket) -> Self {
        UdpSender {
            socket,
            gso: AtomicU8::new(GSO_UNKNOWN),
        }
    }

    /// Whether runs of full-size datagrams go as one UDP GSO send; asks the kernel the first
    /// time.
    pub fn gso(&self) -> bool {
        match self.gso.load(std::sync::atomic::Ordering::Relaxed) {
            GSO_ON => true,
            GSO_OFF => false,
            _ => {
                let on = self.probe_gso();
                self.gso.store(
                    if on { GSO_ON } else { GSO_OFF },
                    std::sync::atomic::Ordering::Relaxed,
                );
                on
            }
        }
    }

    /// A kernel without `UDP_SEGMENT` (before 4.18) ignores the control message and would send
    /// a run as one big datagram: ask for the socket option first (ENOPROTOOPT there).
    #[cfg(target_os = "linux")]
    fn probe_gso(&self) -> bool {
        match nix::sys::socket::getsockopt(&self.socket, nix::sys::socket::sockopt::UdpGsoSegment) {
            Ok(_) => true,
            Err(e) => {
                log::debug!(
                    "UDP socket {}: no UDP GSO from this kernel ({e}): datagrams go one by one",
                    self.local_addr_text()
                );
                false
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn probe_gso(&self) -> bool {
        false
    }

    /// The kernel refused a GSO send with `errno`: everything from this socket goes datagram by
    /// datagram from now on (logged once).
    #[cfg(target_os = "linux")]
    fn gso_refused(&self, errno: nix::errno::Errno, to: SocketAddr) {
        let was = self.gso.swap(GSO_OFF, std::sync::atomic::Ordering::Relaxed);
        if was != GSO_OFF {
            log::debug!(
                "UDP socket {}: the kernel refused a UDP GSO send to {to} ({errno}): datagrams go \
                 one by one from now on",
                self.local_addr_text()
            );
        }
    }

    #[cfg(target_os = "linux")]
    fn local_addr_text(&self) -> String {
        self.socket
            .local_addr()
            .map_or_else(|_| "(unbound)".into(), |a| a.to_string())
    }
}

impl std::ops::Deref for UdpSender {
    type Target = UdpSocket;
    fn deref(&self) -> &UdpSocket {
        &self.socket
    }
}

impl SendSocket for UdpSender {
    fn send_one(&self, data: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.socket.send_to(data, to)
    }
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }
}

/// The kernel's limits for one UDP GSO send: `UDP_MAX_SEGMENTS` (64 since Linux 4.18; later
/// kernels take more), and what the 16-bit IPv4 total length leaves for the UDP payload
/// (65535 - 20 - 8).
pub const MAX_SEGMENTS: usize = 64;
pub const MAX_GSO_BYTES: usize = 65_507;

/// Splits datagrams (destination, length), in order, into the messages of a GSO send with
/// segment size `seg`: a run of consecutive datagrams to one destination, all `seg` long but
/// the last, which may be shorter (the kernel cuts a buffer into `seg`-sized datagrams, the
/// remainder last), at most `max_segments` of them and [`MAX_GSO_BYTES`] in all. Any other
/// datagram is a message of its own.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn gso_runs<T, K: PartialEq>(
    datagrams: &[T],
    dest_and_len: impl Fn(&T) -> (K, usize),
    seg: usize,
    max_segments: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::with_capacity(datagrams.len());
    let mut i = 0;
    while i < datagrams.len() {
        let start = i;
        let (to, _) = dest_and_len(&datagrams[start]);
        let mut bytes = 0;
        loop {
            let (_, len) = dest_and_len(&datagrams[i]);
            bytes += len;
            i += 1;
            if len != seg || i >= datagrams.len() || i - start >= max_segments {
                break;
            }
            let (next_to, next_len) = dest_and_len(&datagrams[i]);
            if next_to != to || next_len > seg || bytes + next_len > MAX_GSO_BYTES {
                break;
            }
        }
        runs.push(start..i);
    }
    runs
}

/// Datagrams for many destinations, to be sent from one socket by [`Batch::flush`], in the
/// order they were added.
#[derive(Default)]
pub struct Batch<'a> {
    msgs: Vec<Msg<'a>>,
}

struct Msg<'a> {
    to: SocketAddr,
    data: &'a [u8],
    /// Counts this datagram if the kernel refuses it.
    refused: &'a AtomicU64,
}

impl<'a> Batch<'a> {
    pub fn add(&mut self, to: SocketAddr, packets: &'a [Bytes], refused: &'a AtomicU64) {
        self.msgs.extend(packets.iter().map(|p| Msg {
            to,
            data: p,
            refused,
        }));
    }

    /// Sends every datagram; a refused one (full send buffer, unreachable destination, ...) is
    /// counted on its destination and the rest still go.
    pub fn flush(&mut self, socket: &UdpSender) {
        if self.msgs.is_empty() {
            return;
        }
        #[cfg(target_os = "linux")]
        linux::send_batch(socket, &self.msgs);
        #[cfg(not(target_os = "linux"))]
        for m in &self.msgs {
            if socket.send_one(m.data, m.to).is_err() {
                m.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.msgs.clear();
    }
}

/// Sends `packets` to `to` in order; returns how many the kernel refused (a full send buffer
/// on a non-blocking socket, an unreachable destination, ...). UDP is lossy by nature: a refused
/// packet is counted and the rest still go.
pub fn send_burst(socket: &impl SendSocket, to: SocketAddr, packets: &[Bytes]) -> u64 {
    #[cfg(target_os = "linux")]
    if packets.len() > 1 {
        return linux::send_burst(socket, to, packets);
    }
    one_by_one(socket, to, packets)
}

fn one_by_one(socket: &impl SendSocket, to: SocketAddr, packets: &[Bytes]) -> u64 {
    packets
        .iter()
        .filter(|p| socket.send_one(p, to).is_err())
        .count() as u64
}

#[cfg(target_os = "linux")]
mod linux {
    use std::cell::RefCell;
    use std::io::IoSlice;
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;

    use bytes::Bytes;
    use nix::errno::Errno;
    use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

    use super::{MAX_GSO_BYTES, MAX_SEGMENTS, Msg, SendSocket, UdpSender, gso_runs};

    /// Datagrams per `sendmmsg` of one burst (a keyframe of a few hundred kB takes a few calls).
    const BATCH: usize = 64;
    /// Messages per `sendmmsg` of a batch: the kernel's limit (UIO_MAXIOV).
    const MANY: usize = 1024;

    thread_local! {
        /// The message headers `sendmmsg` fills, kept per sending thread (the producer's).
        static HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> =
            const { RefCell::new(None) };
        static MANY_HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> =
            const { RefCell::new(None) };
        /// The same with room for one UDP_SEGMENT control message per message.
        static GSO_HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> =
            const { RefCell::new(None) };
    }

    pub(super) fn send_batch(socket: &UdpSender, msgs: &[Msg<'_>]) {
        let bursts = msgs.windows(2).any(|w| w[0].to == w[1].to);
        if bursts && socket.gso() {
            send_gso(socket, msgs, MAX_SEGMENTS);
        } else {
            send_plain(socket, msgs);
        }
    }

    /// Whether the kernel refused a GSO send as such (segmentation offload unsupported here, a
    /// device or path that cannot take it, a segment over the path's MTU) rather than the
    /// datagrams in it (a full buffer, an unreachable destination): the datagrams would go one
    /// by one.
    fn refuses_gso(errno: Errno) -> bool {
        matches!(
            errno,
            Errno::EINVAL | Errno::EIO | Errno::ENOPROTOOPT | Errno::EMSGSIZE | Errno::EOPNOTSUPP
        )
    }

    /// Consecutive datagrams to one destination that are all as long as the batch's longest
    /// (the full fragments of a frame) go as one UDP GSO send (UDP_SEGMENT, see
    /// [`gso_runs`]): the kernel builds and routes one buffer and cuts it into the same
    /// datagrams at the device. Several such messages (and the datagrams that go on their own)
    /// share a `sendmmsg`, with the same segment size: one that is shorter than it is not cut.
    /// Where the kernel refuses GSO as such, the socket falls back to datagrams one by one for
    /// good ([`UdpSender::gso_refused`]).
    pub(super) fn send_gso(socket: &UdpSender, msgs: &[Msg<'_>], max_segments: usize) {
        let seg = msgs.iter().map(|m| m.data.len()).max().unwrap_or(0);
        let Ok(seg16) = u16::try_from(seg) else {
            return send_plain(socket, msgs);
        };
        if seg == 0 || seg > MAX_GSO_BYTES / 2 {
            return send_plain(socket, msgs);
        }
        let runs = gso_runs(msgs, |m| (m.to, m.data.len()), seg, max_segments);
        let iovs: Vec<IoSlice<'_>> = msgs.iter().map(|m| IoSlice::new(m.data)).collect();
        let fd = socket.raw_fd();
        let fallback = GSO_HEADERS.with(|headers| {
            let mut headers = headers.borrow_mut();
            let headers = headers.get_or_insert_with(|| {
                MultiHeaders::preallocate(MANY, Some(nix::cmsg_space!(u16)))
            });
            let mut rest = &runs[..];
            while !rest.is_empty() {
                let n = rest.len().min(MANY);
                let slices: Vec<&[IoSlice<'_>]> =
                    rest[..n].iter().map(|g| &iovs[g.clone()]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = rest[..n]
                    .iter()
                    .map(|g| Some(SockaddrStorage::from(msgs[g.start].to)))
                    .collect();
                let cmsgs = [ControlMessage::UdpGsoSegments(&seg16)];
                let result = sendmmsg(fd, headers, &slices, &addrs, cmsgs, MsgFlags::empty())
                    .map(Iterator::count);
                match result {
                    Ok(sent) if sent > 0 => {
                        // The kernel stops at the first message it refuses without saying why:
                        // the next call starts with it, and tells.
                        rest = &rest[sent.min(n)..];
                        continue;
                    }
                    Ok(_) => {}
                    Err(errno) => {
                        let run = rest[0].clone();
                        if run.len() > 1 && refuses_gso(errno) {
                            socket.gso_refused(errno, msgs[run.start].to);
                            return Some(run.start);
                        }
                    }
                }
                for m in &msgs[rest[0].clone()] {
                    m.refused.fetch_add(1, Ordering::Relaxed);
                }
                rest = &rest[1..];
            }
            None
        });
        if let Some(from) = fallback {
            send_plain(socket, &msgs[from..]);
        }
    }

    pub(super) fn send_plain(socket: &impl SendSocket, msgs: &[Msg<'_>]) {
        let fd = socket.raw_fd();
        MANY_HEADERS.with(|headers| {
            let mut headers = headers.borrow_mut();
            let headers = headers.get_or_insert_with(|| MultiHeaders::preallocate(MANY, None));
            let mut rest = msgs;
            while !rest.is_empty() {
                let n = rest.len().min(MANY);
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    rest[..n].iter().map(|m| [IoSlice::new(m.data)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = rest[..n]
                    .iter()
                    .map(|m| Some(SockaddrStorage::from(m.to)))
                    .collect();
                let cmsgs: [ControlMessage<'_>; 0] = [];
                let sent = sendmmsg(fd, headers, &iovs, &addrs, cmsgs, MsgFlags::empty())
                    .map_or(0, Iterator::count);
                // The kernel stops at the first datagram it refuses: count it, go on after it.
                if sent < n {
                    rest[sent].refused.fetch_add(1, Ordering::Relaxed);
                    rest = &rest[sent + 1..];
                } else {
                    rest = &rest[n..];
                }
            }
        });
    }

    pub fn send_burst(socket: &impl SendSocket, to: SocketAddr, packets: &[Bytes]) -> u64 {
        let fd = socket.raw_fd();
        let addrs = [Some(SockaddrStorage::from(to)); BATCH];
        HEADERS.with(|headers| {
            let mut headers = headers.borrow_mut();
            let headers = headers.get_or_insert_with(|| MultiHeaders::preallocate(BATCH, None));
            let mut refused = 0;
            let mut rest = packets;
            while !rest.is_empty() {
                let n = rest.len().min(BATCH);
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    rest[..n].iter().map(|p| [IoSlice::new(p)]).collect();
                let cmsgs: [ControlMessage<'_>; 0] = [];
                match sendmmsg(fd, headers, &iovs, &addrs[..n], cmsgs, MsgFlags::empty()) {
                    Ok(results) => {
                        let sent = results.count();
                        // The kernel stops at the first packet it refuses: count it, go on.
                        let skip = if sent < n { sent + 1 } else { sent };
                        refused += (skip - sent) as u64;
                        rest = &rest[skip.max(1)..];
                    }
                    Err(_) => {
                        refused += 1;
                        rest = &rest[1..];
                    }
                }
            }
            refused
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A receiver with room for every datagram a test sends (the default buffer holds ~200).
    fn receiver() -> UdpSocket {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(4 << 20);
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        rx
    }

    fn sender() -> UdpSender {
        UdpSender::new(UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    /// Datagrams of `sizes` bytes, each opening with its index.
    fn datagrams(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let mut p = (i as u32).to_be_bytes().to_vec();
                p.resize(len.max(4), i as u8);
                Bytes::from(p)
            })
            .collect()
    }

    fn runs(sizes: &[usize], seg: usize) -> Vec<std::ops::Range<usize>> {
        gso_runs(sizes, |&len| (0, len), seg, MAX_SEGMENTS)
    }

    #[test]
    fn runs_are_full_size_datagrams_and_at_most_one_shorter_last() {
        // A frame as a payloader cuts it: small NAL units on their own, the full-size
        // fragments with the shorter last one, the next slice's the same way.
        assert_eq!(
            runs(&[20, 8, 1400, 1400, 1400, 277, 1400, 1400, 739], 1400),
            [0..1, 1..2, 2..6, 6..9]
        );
        // Two shorter ones in a row: the second is on its own.
        assert_eq!(runs(&[1400, 900, 900, 1400], 1400), [0..2, 2..3, 3..4]);
        // A shorter datagram first, or only full ones.
        assert_eq!(runs(&[700, 1400, 1400], 1400), [0..1, 1..3]);
        assert_eq!(runs(&[1400; 3], 1400), vec![0..3]);
        assert_eq!(runs(&[1400], 1400), vec![0..1]);
        assert!(runs(&[], 1400).is_empty());
        // A datagram longer than the segment size never joins a run.
        assert_eq!(runs(&[100, 100, 200], 100), [0..2, 2..3]);
        // Another destination starts a run of its own.
        let to = [(1u8, 1400), (1, 1400), (2, 1400), (2, 10), (1, 1400)];
        assert_eq!(
            gso_runs(&to, |&d| d, 1400, MAX_SEGMENTS),
            [0..2, 2..4, 4..5]
        );
    }

    #[test]
    fn runs_keep_to_the_kernels_limits() {
        // At most MAX_SEGMENTS datagrams...
        assert_eq!(runs(&[100; 130], 100), [0..64, 64..128, 128..130]);
        // ... and MAX_GSO_BYTES: 46 of 1400 bytes (64,400), not 47 (65,800).
        assert_eq!(runs(&[1400; 70], 1400), [0..46, 46..70]);
        // A shorter last one joins where it fits...
        let mut sizes = vec![1400; 46];
        sizes.push(1107);
        assert_eq!(runs(&sizes, 1400), vec![0..47]);
        assert_eq!(46 * 1400 + 1107, MAX_GSO_BYTES);
        // ... and not a byte more.
        *sizes.last_mut().unwrap() = 1108;
        assert_eq!(runs(&sizes, 1400), [0..46, 46..47]);
        for sizes in [vec![1400; 200], vec![1000; 200], vec![64; 500]] {
            let seg = sizes[0];
            for r in runs(&sizes, seg) {
                assert!(r.len() <= MAX_SEGMENTS);
                assert!(sizes[r].iter().sum::<usize>() <= MAX_GSO_BYTES);
            }
        }
    }

    /// Receives `packets` on `rx` in order, byte for byte.
    fn assert_received(rx: &UdpSocket, packets: &[Bytes]) {
        let mut buf = [0u8; 65536];
        for (i, p) in packets.iter().enumerate() {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..], "datagram {i}");
        }
    }

    #[test]
    fn a_frame_sent_with_gso_arrives_as_the_same_datagrams_in_order() {
        // Two slices of full-size fragments with shorter last ones, small NAL units, runs past
        // the segment and byte limits: one flush.
        let mut sizes = vec![30, 12];
        sizes.extend([1400, 1400, 1400, 277, 1400, 1400, 739]);
        sizes.extend(std::iter::repeat_n(1400, 100));
        sizes.push(5);
        let packets = datagrams(&sizes);
        let rx = receiver();
        let tx = sender();
        let refused = AtomicU64::new(0);
        let mut batch = Batch::default();
        batch.add(rx.local_addr().unwrap(), &packets, &refused);
        batch.flush(&tx);
        assert_eq!(refused.load(Ordering::Relaxed), 0);
        #[cfg(target_os = "linux")]
        assert!(tx.gso(), "GSO was refused by this kernel");
        assert_received(&rx, &packets);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_socket_the_kernel_refuses_gso_on_sends_one_by_one_from_then_on() {
        // More segments in one send than the kernel takes (UDP_MAX_SEGMENTS: 64, 128 on newer
        // kernels): EINVAL, as a kernel or path without GSO answers. 200 small ones, as
        // a receive buffer of the default size (rmem_max) holds them all.
        let packets = datagrams(&[100; 200]);
        let rx = receiver();
        let tx = sender();
        let other = sender();
        let refused = AtomicU64::new(0);
        let to = rx.local_addr().unwrap();
        let msgs: Vec<Msg<'_>> = packets
            .iter()
            .map(|p| Msg {
                to,
                data: p,
                refused: &refused,
            })
            .collect();
        assert!(tx.gso());
        linux::send_gso(&tx, &msgs, 200);
        assert_eq!(refused.load(Ordering::Relaxed), 0);
        assert!(!tx.gso(), "GSO is off for this socket");
        assert_received(&rx, &packets);
        // For this socket only, and the next flush goes one by one.
        assert!(other.gso());
        let mut batch = Batch::default();
        batch.add(to, &packets[..10], &refused);
        batch.flush(&tx);
        assert_received(&rx, &packets[..10]);
        assert!(!tx.gso());
    }

    #[test]
    fn a_burst_arrives_whole_and_in_order() {
        let rx = receiver();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // More than one sendmmsg batch, of varied sizes.
        let packets: Vec<Bytes> = (0..100u16)
            .map(|i| {
                let mut p = i.to_be_bytes().to_vec();
                p.resize(2 + usize::from(i) * 7 % 1400, 0xab);
                Bytes::from(p)
            })
            .collect();
        assert_eq!(send_burst(&tx, rx.local_addr().unwrap(), &packets), 0);
        let mut buf = [0u8; 2048];
        for p in &packets {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..]);
        }
    }

    #[test]
    fn a_batch_reaches_every_destination_in_order() {
        let rxs: Vec<UdpSocket> = (0..3).map(|_| receiver()).collect();
        let tx = sender();
        // More datagrams than one sendmmsg takes.
        let packets: Vec<Bytes> = (0..400u16)
            .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
            .collect();
        let refused = AtomicU64::new(0);
        let mut batch = Batch::default();
        for chunk in packets.chunks(100) {
            for rx in &rxs {
                batch.add(rx.local_addr().unwrap(), chunk, &refused);
            }
        }
        batch.flush(&tx);
        assert_eq!(refused.load(Ordering::Relaxed), 0);
        let mut buf = [0u8; 16];
        for rx in &rxs {
            for p in &packets {
                let n = rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &p[..]);
            }
        }
        // A refused datagram is counted on its own destination; the others still go.
        let bad = AtomicU64::new(0);
        let good = AtomicU64::new(0);
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        batch.add(rxs[0].local_addr().unwrap(), &packets[..1], &good);
        batch.add(v6, &packets[..2], &bad);
        batch.add(rxs[0].local_addr().unwrap(), &packets[1..2], &good);
        batch.flush(&tx);
        assert_eq!((good.into_inner(), bad.into_inner()), (0, 2));
        for p in &packets[..2] {
            let n = rxs[0].recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &p[..]);
        }
    }

    #[test]
    fn frames_to_many_clients_arrive_as_the_same_datagrams() {
        // A frame as a payloader cuts it: small NAL units, full-size fragments, a shorter last
        // one; then a frame of one full-size packet and one of more than 64 fragments.
        let frame = |first: u16, sizes: &[usize]| -> Vec<Bytes> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let mut p = (first + i as u16).to_be_bytes().to_vec();
                    p.resize(len, i as u8);
                    Bytes::from(p)
                })
                .collect()
        };
        let mut frames = vec![
            frame(0, &[20, 8, 600, 1400, 1400, 1400, 900]),
            frame(100, &[1400]),
        ];
        frames.push(frame(200, &[1400; 70]));
        frames.push(frame(300, &[1400, 1400, 1399, 1400]));
        let rxs: Vec<UdpSocket> = (0..3).map(|_| receiver()).collect();
        let tx = sender();
        let refused = AtomicU64::new(0);
        for f in &frames {
            let mut batch = Batch::default();
            for rx in &rxs {
                batch.add(rx.local_addr().unwrap(), f, &refused);
            }
            batch.flush(&tx);
        }
        assert_eq!(refused.load(Ordering::Relaxed), 0);
        #[cfg(target_os = "linux")]
        assert!(tx.gso(), "GSO was refused by this kernel");
        let mut buf = [0u8; 65536];
        for rx in &rxs {
            for p in frames.iter().flatten() {
                let n = rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &p[..]);
            }
        }
    }

    #[test]
    fn refused_packets_are_counted() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // An IPv6 destination from an IPv4 socket: every datagram is refused.
        let to: SocketAddr = "[::1]:9".parse().unwrap();
        let packets = vec![Bytes::from_static(b"x"); 3];
        assert_eq!(send_burst(&tx, to, &packets), 3);
    }
}
