//! The UDP receive path of one stream: a thread blocked on the stream's RTP socket that hands
//! every wake-up's worth of datagrams ([`Datagrams`], in src/net/udp_in.rs) on at once, and the
//! filter that keeps datagrams from anyone but the server out.
//!
//! Specifications: RFC 3550 §11 (RTP and RTCP over UDP on a port pair); RFC 2326 §12.39
//! (client_port, multicast port, source).

use std::net::{IpAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::udp_in::Datagrams;

use super::{Batches, ClientError, EventFn, Packet, SharedStats, deliver};

/// Which address a stream's datagrams (RTP and RTCP, unicast or multicast) may come from: the
/// server's, given by the RTSP connection or the `source` of the SETUP answer's Transport (for
/// multicast too: rtspsrc admits every sender to the group, where anyone on the network may
/// send). Datagrams from elsewhere are dropped and counted by the caller; each other address is
/// logged once (the first [`SourceFilter::LOGGED`] of them: spoofed addresses are unbounded).
#[derive(Debug)]
pub(super) struct SourceFilter {
    stream: usize,
    /// None: any sender.
    server: Option<IpAddr>,
    name: String,
    logged: Mutex<Vec<IpAddr>>,
}

impl SourceFilter {
    /// Other addresses logged at most.
    const LOGGED: usize = 16;

    pub(super) fn new(name: &str, stream: usize, server: Option<IpAddr>) -> Arc<Self> {
        Arc::new(SourceFilter {
            stream,
            server: server.map(|ip| ip.to_canonical()),
            name: name.to_owned(),
            logged: Mutex::default(),
        })
    }

    /// Whether a datagram from `from` belongs to the stream.
    pub(super) fn admits(&self, from: Option<IpAddr>) -> bool {
        let Some(server) = self.server else {
            return true;
        };
        let from = from.map(|ip| ip.to_canonical());
        if from == Some(server) {
            return true;
        }
        let mut logged = self.logged.lock().unwrap();
        let key = from.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if logged.len() < Self::LOGGED && !logged.contains(&key) {
            logged.push(key);
            log::debug!(
                id = self.name.as_str();
                "stream {}: dropping datagrams from {}: not the server ({server}){}",
                self.stream,
                from.map_or("an unknown address".into(), |ip| ip.to_string()),
                if logged.len() == Self::LOGGED { "; further addresses are not logged" } else { "" }
            );
        }
        false
    }
}

/// Counts a datagram of `stream` that [`SourceFilter`] dropped.
pub(super) fn count_foreign(stats: &SharedStats, stream: usize) {
    if let Some(slot) = stats.get(stream) {
        slot.lock().unwrap().1.foreign_packets += 1;
    }
}

/// A thread blocked on one stream's RTP socket. It is woken once per burst of datagrams rather
/// than per datagram, and jitter-buffers and pushes them itself (through `events`): an async
/// task would pay an epoll round trip and a failed read besides, and a hand-off to another
/// thread one more wake-up. Dropping it shuts the socket down, which wakes the thread at once on
/// Linux (elsewhere within the read timeout), and joins it.
pub(super) struct UdpReceiver {
    stop: Arc<AtomicBool>,
    socket: UdpSocket,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpReceiver {
    /// How often the thread looks at its stop flag when nothing wakes it: a fallback only, as
    /// every wake-up of an idle thread costs about as much as a datagram.
    const POLL: Duration = Duration::from_secs(1);

    pub(super) fn spawn(
        stream: usize,
        socket: UdpSocket,
        filter: Arc<SourceFilter>,
        events: EventFn,
        stats: SharedStats,
    ) -> Result<UdpReceiver, ClientError> {
        let io = |e: std::io::Error| ClientError::io("starting a UDP receiver", &e);
        socket
            .set_nonblocking(false)
            .and_then(|()| socket.set_read_timeout(Some(Self::POLL)))
            .map_err(io)?;
        let handle = socket.try_clone().map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("rtsp-udp-{stream}"))
            .spawn(move || {
                let mut datagrams = Datagrams::default();
                let mut batches = Batches {
                    exclusive: true,
                    ..Batches::default()
                };
                while !stopped.load(Ordering::Acquire) {
                    match datagrams.recv(&socket) {
                        Ok(n) if !stopped.load(Ordering::Acquire) => {
                            batches.expected = n;
                            let arrival = Instant::now();
                            // One allocation for them all, which the packets share.
                            let mut chunk = datagrams.concat();
                            for (d, &from) in datagrams.iter().zip(datagrams.sources()) {
                                let data = chunk.split_to(d.len());
                                if !filter.admits(from) {
                                    count_foreign(&stats, stream);
                                    continue;
                                }
                                let packet = Packet {
                                    stream,
                                    is_rtcp: false,
                                    data,
                                    arrival,
                                };
                                deliver(&events, &stats, packet, &mut batches);
                            }
                            // One jitter buffer pass and one push of a buffer list for them all.
                            batches.flush(&events);
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock
                                    | std::io::ErrorKind::TimedOut
                                    | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) if stopped.load(Ordering::Acquire) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
            .map_err(io)?;
        Ok(UdpReceiver {
            stop,
            socket: handle,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Linux wakes a reader of a shut-down socket even if it is not connected (the call
        // itself then reports ENOTCONN).
        let _ = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_address_is_admitted_unless_multicast() {
        let server: IpAddr = "192.0.2.1".parse().unwrap();
        let filter = SourceFilter::new("test", 0, Some(server));
        assert!(filter.admits(Some(server)));
        // The same address as an IPv4-mapped IPv6 one.
        assert!(filter.admits(Some("::ffff:192.0.2.1".parse().unwrap())));
        for other in ["127.0.0.2", "192.0.2.2", "::1"] {
            assert!(!filter.admits(Some(other.parse().unwrap())), "{other}");
        }
        assert!(!filter.admits(None));
        // Each address is logged once, and only so many.
        for i in 0..100u8 {
            assert!(!filter.admits(Some(IpAddr::from([10, 0, 0, i]))));
            assert!(!filter.admits(Some(IpAddr::from([10, 0, 0, i]))));
        }
        assert_eq!(filter.logged.lock().unwrap().len(), SourceFilter::LOGGED);
        let any = SourceFilter::new("test", 0, None);
        assert!(any.admits(Some("127.0.0.2".parse().unwrap())) && any.admits(None));
    }
}
