//! UDP fan-out in as few system calls as possible (RFC 3550 §11: one RTP packet per UDP
//! datagram, unchanged).
//!
//! Specifications: RFC 3550 §11 (RTP over UDP); RFC 768 (UDP). Segmentation offload (UDP_SEGMENT)
//! is Linux's, not a protocol's: the receiver sees the same datagrams.
//!
//! A push's packets for every unicast client of a stream leave from the same socket, so on Linux
//! they are collected in a [`Batch`] and go in one `sendmmsg` per 1024 datagrams, each with its
//! own destination. Packet by packet, 1000 clients of a 4 Mbit/s stream cost ~370,000 `sendto` a
//! second, each a kernel entry and exit at which the sender is likely to be preempted by the
//! receivers it just woke. [`send_burst`] does the same for one destination (a multicast group).
//! Elsewhere, one `send_to` per packet.
//!
//! rtspserversink's fan-out sends from std sockets on the producer's thread; rtspclientsink2's
//! publication from tokio sockets on its network thread ([`SendSocket`] takes either). A
//! datagram the kernel refuses (a full buffer on a non-blocking socket) is counted, never
//! waited for.

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
use std::sync::atomic::AtomicU64;

use bytes::Bytes;

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
    pub fn flush(&mut self, socket: &impl SendSocket) {
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
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

    use super::{Msg, SendSocket};

    /// Datagrams per `sendmmsg` of one burst (a keyframe of a few hundred kB takes a few calls).
    const BATCH: usize = 64;
    /// Datagrams per `sendmmsg` of a batch: the kernel's limit (UIO_MAXIOV).
    const MANY: usize = 1024;

    thread_local! {
        /// The message headers `sendmmsg` fills, kept per sending thread (the producer's).
        static HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> =
            const { RefCell::new(None) };
        static MANY_HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> =
            const { RefCell::new(None) };
        /// The same with room for one UDP_SEGMENT control message per datagram.
        static GSO_HEADERS: RefCell<Option<MultiHeaders<SockaddrStorage>>> =
            const { RefCell::new(None) };
    }

    /// Set when a GSO send failed where plain datagrams went (old kernel, a device or path that
    /// cannot take it): from then on every datagram goes on its own.
    static GSO_OFF: AtomicBool = AtomicBool::new(false);
    /// The kernel's limits for one GSO send (UDP_MAX_SEGMENTS, and the UDP length field).
    const MAX_SEGMENTS: usize = 64;
    const MAX_GSO_BYTES: usize = 65_000;

    #[cfg(test)]
    pub(super) fn gso_off() -> bool {
        GSO_OFF.load(Ordering::Relaxed)
    }

    pub(super) fn send_batch(socket: &impl SendSocket, msgs: &[Msg<'_>]) {
        let bursts = msgs.windows(2).any(|w| w[0].to == w[1].to);
        if bursts && !GSO_OFF.load(Ordering::Relaxed) {
            send_gso(socket, msgs);
        } else {
            send_plain(socket, msgs);
        }
    }

    /// Consecutive datagrams to one destination that are all as long as the batch's longest
    /// (the full fragments of a frame) go as one UDP GSO send (UDP_SEGMENT): the kernel builds
    /// and routes one buffer and cuts it into the same datagrams at the device. The shorter
    /// datagram that ends such a run joins it; any other goes on its own.
    fn send_gso(socket: &impl SendSocket, msgs: &[Msg<'_>]) {
        let seg = msgs.iter().map(|m| m.data.len()).max().unwrap_or(0);
        let Ok(seg16) = u16::try_from(seg) else {
            return send_plain(socket, msgs);
        };
        if seg == 0 || seg > MAX_GSO_BYTES / 2 {
            return send_plain(socket, msgs);
        }
        let mut groups: Vec<std::ops::Range<usize>> = Vec::with_capacity(msgs.len());
        let mut i = 0;
        while i < msgs.len() {
            let start = i;
            let mut bytes = 0;
            loop {
                bytes += msgs[i].data.len();
                let full = msgs[i].data.len() == seg;
                i += 1;
                if !full
                    || i >= msgs.len()
                    || msgs[i].to != msgs[start].to
                    || i - start >= MAX_SEGMENTS
                    || bytes + seg > MAX_GSO_BYTES
                {
                    break;
                }
            }
            groups.push(start..i);
        }
        let iovs: Vec<IoSlice<'_>> = msgs.iter().map(|m| IoSlice::new(m.data)).collect();
        let fd = socket.raw_fd();
        GSO_HEADERS.with(|headers| {
            let mut headers = headers.borrow_mut();
            let headers = headers.get_or_insert_with(|| {
                MultiHeaders::preallocate(MANY, Some(nix::cmsg_space!(u16)))
            });
            let mut rest = &groups[..];
            while !rest.is_empty() {
                let n = rest.len().min(MANY);
                let slices: Vec<&[IoSlice<'_>]> =
                    rest[..n].iter().map(|g| &iovs[g.clone()]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = rest[..n]
                    .iter()
                    .map(|g| Some(SockaddrStorage::from(msgs[g.start].to)))
                    .collect();
                let cmsgs = [ControlMessage::UdpGsoSegments(&seg16)];
                let sent = sendmmsg(fd, headers, &slices, &addrs, cmsgs, MsgFlags::empty())
                    .map_or(0, Iterator::count);
                if sent < n {
                    // The kernel stopped at this group: send its datagrams one by one, and if
                    // that works where GSO did not, stop using GSO.
                    let failed = &msgs[rest[sent].clone()];
                    let mut refused = 0;
                    for m in failed {
                        if socket.send_one(m.data, m.to).is_err() {
                            m.refused.fetch_add(1, Ordering::Relaxed);
                            refused += 1;
                        }
                    }
                    if failed.len() > 1 && refused == 0 {
                        GSO_OFF.store(true, Ordering::Relaxed);
                    }
                    rest = &rest[sent + 1..];
                } else {
                    rest = &rest[n..];
                }
            }
        });
    }

    fn send_plain(socket: &impl SendSocket, msgs: &[Msg<'_>]) {
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
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
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
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
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
        assert!(!linux::gso_off(), "GSO was refused by this kernel");
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
