//! UDP receive in as few system calls as possible: every datagram queued on a socket when its
//! reader wakes up, taken with one `recvmmsg` (Linux; elsewhere one `recv_from`).
//!
//! Specifications: RFC 3550 §11 (RTP and RTCP over UDP, one packet per datagram, unchanged);
//! RFC 768 (UDP). `recvmmsg` is Linux's, not a protocol's: the datagrams are the same.
//!
//! The crate's one UDP receive helper: rtspsrc2's reader threads (one per stream) and
//! rtspserversrc's (one per publisher's RTP socket) block in [`Datagrams::recv`] and hand each
//! wake-up's worth of datagrams on at once. An async task reading the same socket pays, per
//! datagram, an epoll round trip, a wake-up of a runtime worker and a read that finds the queue
//! empty.

use std::net::{IpAddr, UdpSocket};

use bytes::{Bytes, BytesMut};

/// Datagrams read from a socket in one go: all that are queued when the reader wakes up, up to
/// [`Datagrams::SLOTS`]. On Linux that is a single `recvmmsg` (`MSG_WAITFORONE`: block for the
/// first datagram, take what else is queued without blocking), where reading them one by one
/// costs a system call per datagram, one more to find the queue empty, and two to switch the
/// socket between blocking and not.
pub struct Datagrams {
    /// `SLOTS` slots of `SLOT` bytes. Pages are only touched as datagrams are written, so the
    /// memory used is about what the largest datagrams need, not this size.
    buf: Vec<u8>,
    lens: [usize; Self::SLOTS],
    /// Who sent each datagram.
    sources: [Option<IpAddr>; Self::SLOTS],
    count: usize,
    #[cfg(target_os = "linux")]
    headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
}

impl Default for Datagrams {
    fn default() -> Self {
        Datagrams {
            buf: vec![0; Self::SLOTS * Self::SLOT],
            lens: [0; Self::SLOTS],
            sources: [None; Self::SLOTS],
            count: 0,
            #[cfg(target_os = "linux")]
            headers: nix::sys::socket::MultiHeaders::preallocate(Self::SLOTS, None),
        }
    }
}

impl Datagrams {
    /// Datagrams per read at most: a video frame's burst at several Mbit/s.
    pub const SLOTS: usize = 32;
    /// More than the largest UDP payload, so that no datagram is ever truncated.
    const SLOT: usize = 65536;

    /// Blocks (within the socket's read timeout) until a datagram arrives, then reads it with
    /// every other one already queued. Returns how many were read.
    pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        self.count = 0;
        self.read(socket, false)?;
        Ok(self.count)
    }

    /// The datagrams queued now, without waiting (0: none). Linux only; elsewhere none.
    pub fn recv_queued(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        self.count = 0;
        #[cfg(target_os = "linux")]
        match self.read(socket, true) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => other?,
        }
        #[cfg(not(target_os = "linux"))]
        let _ = socket;
        Ok(self.count)
    }

    #[cfg(target_os = "linux")]
    fn read(&mut self, socket: &UdpSocket, nowait: bool) -> std::io::Result<()> {
        use nix::sys::socket::{MsgFlags, recvmmsg};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;

        let mut slots = self.buf.chunks_mut(Self::SLOT);
        // `buf` has exactly SLOTS slots.
        let mut iovs: [[IoSliceMut<'_>; 1]; Self::SLOTS] =
            std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
        let received = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            iovs.iter_mut(),
            if nowait {
                MsgFlags::MSG_DONTWAIT
            } else {
                MsgFlags::MSG_WAITFORONE
            },
            None,
        )?;
        for ((len, source), msg) in self.lens.iter_mut().zip(&mut self.sources).zip(received) {
            *len = msg.bytes;
            *source = msg.address.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|a| IpAddr::V4(a.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
            });
            self.count += 1;
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn read(&mut self, socket: &UdpSocket, _nowait: bool) -> std::io::Result<()> {
        let (n, from) = socket.recv_from(&mut self.buf[..Self::SLOT])?;
        self.lens[0] = n;
        self.sources[0] = Some(from.ip());
        self.count = 1;
        Ok(())
    }

    /// The datagrams of the last [`Datagrams::recv`] one after the other, in one allocation.
    pub fn concat(&self) -> Bytes {
        let mut all = BytesMut::with_capacity(self.lens[..self.count].iter().sum());
        for d in self.iter() {
            all.extend_from_slice(d);
        }
        all.freeze()
    }

    /// The datagrams of the last [`Datagrams::recv`], in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.buf
            .chunks(Self::SLOT)
            .zip(&self.lens[..self.count])
            .map(|(slot, &len)| &slot[..len])
    }

    /// The senders of the datagrams of the last [`Datagrams::recv`], in the order of
    /// [`Datagrams::iter`] (None: not known).
    pub fn sources(&self) -> &[Option<IpAddr>] {
        &self.sources[..self.count]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    #[test]
    fn reads_every_queued_datagram_in_order_and_whole() {
        let (rx, tx) = pair();
        // Of every size up to the largest a UDP/IPv4 datagram can carry.
        let sizes = [1usize, 1400, 9000, 65507, 0, 3];
        for (i, &n) in sizes.iter().enumerate() {
            tx.send(&vec![i as u8; n]).unwrap();
        }
        let mut d = Datagrams::default();
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            assert!(d.recv(&rx).unwrap() > 0);
            let before = got.len();
            let sender = tx.local_addr().unwrap().ip();
            assert!(d.sources().iter().all(|s| *s == Some(sender)));
            got.extend(d.iter().map(<[u8]>::to_vec));
            assert_eq!(d.concat(), got[before..].concat());
        }
        assert_eq!(got.len(), sizes.len());
        for (i, (g, &n)) in got.iter().zip(&sizes).enumerate() {
            assert_eq!(g.len(), n, "datagram {i}");
            assert!(g.iter().all(|&b| b == i as u8), "datagram {i}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn one_read_takes_what_is_queued_up_to_the_slots() {
        let (rx, tx) = pair();
        let n = Datagrams::SLOTS + 5;
        for i in 0..n {
            tx.send(&(i as u32).to_be_bytes()).unwrap();
        }
        let mut d = Datagrams::default();
        assert_eq!(d.recv(&rx).unwrap(), Datagrams::SLOTS);
        assert_eq!(d.recv(&rx).unwrap(), 5);
        let last: Vec<u32> = d
            .iter()
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(
            last,
            (Datagrams::SLOTS as u32..n as u32).collect::<Vec<_>>()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn recv_queued_takes_what_is_there_without_waiting() {
        let (rx, tx) = pair();
        let mut d = Datagrams::default();
        let start = std::time::Instant::now();
        assert_eq!(d.recv_queued(&rx).unwrap(), 0);
        // Not the 5 s read timeout.
        assert!(start.elapsed() < Duration::from_secs(1));
        for i in 0..3u8 {
            tx.send(&[i]).unwrap();
        }
        assert_eq!(d.recv_queued(&rx).unwrap(), 3);
        assert_eq!(d.iter().collect::<Vec<_>>(), [[0u8], [1], [2]]);
        assert_eq!(d.recv_queued(&rx).unwrap(), 0);
    }

    #[test]
    fn an_empty_socket_times_out_instead_of_blocking() {
        let (rx, _tx) = pair();
        rx.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let e = Datagrams::default().recv(&rx).unwrap_err();
        assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
    }
}
