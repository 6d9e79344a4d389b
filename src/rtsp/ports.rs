//! UDP port pairs for RTP and RTCP (RFC 3550 11: RTP on an even port, RTCP on the next one).
//!
//! Specifications: RFC 3550 §11 (RTP on an even port, RTCP on the next); RFC 2326 §12.39
//! (client_port, server_port).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Parses a `port-range` property (`MIN-MAX`, inclusive, at least two ports); empty means any.
pub fn parse_port_range(r: &str) -> Result<Option<(u16, u16)>, String> {
    if r.is_empty() {
        return Ok(None);
    }
    let (a, b) = r
        .split_once('-')
        .ok_or_else(|| format!("port-range '{r}' is not MIN-MAX"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u16>()
            .map_err(|_| format!("port-range '{r}' is not MIN-MAX"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if b <= a {
        return Err(format!("port-range '{r}' needs at least two ports"));
    }
    Ok(Some((a, b)))
}

/// Binds a non-blocking RTP socket on an even port and an RTCP socket on the next one, on
/// `address`. With `range` (inclusive), ports are taken from it; otherwise the system picks.
pub fn bind_port_pair(
    address: IpAddr,
    range: Option<(u16, u16)>,
) -> io::Result<(UdpSocket, UdpSocket)> {
    let finish = |rtp: UdpSocket, rtcp: UdpSocket| -> io::Result<(UdpSocket, UdpSocket)> {
        for s in [&rtp, &rtcp] {
            s.set_nonblocking(true)?;
        }
        let sock = socket2::SockRef::from(&rtp);
        let _ = sock.set_send_buffer_size(1 << 20);
        let _ = sock.set_recv_buffer_size(1 << 20);
        Ok((rtp, rtcp))
    };
    if let Some((min, max)) = range {
        let first = min + (min % 2);
        let mut last_err = None;
        for port in (first..max).step_by(2) {
            match UdpSocket::bind(SocketAddr::new(address, port))
                .and_then(|rtp| Ok((rtp, UdpSocket::bind(SocketAddr::new(address, port + 1))?)))
            {
                Ok((rtp, rtcp)) => return finish(rtp, rtcp),
                Err(e) => last_err = Some(e),
            }
        }
        // The error names the range (the operator's setting), whatever the last bind said.
        let kind = last_err
            .as_ref()
            .map_or(io::ErrorKind::AddrInUse, io::Error::kind);
        let detail = last_err.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(io::Error::new(
            kind,
            format!("no free even/odd UDP port pair in port-range {min}-{max}{detail}"),
        ));
    }
    let mut last_err = None;
    for _ in 0..64 {
        let rtp = UdpSocket::bind(SocketAddr::new(address, 0))?;
        let port = rtp.local_addr()?.port();
        if !port.is_multiple_of(2) || port == u16::MAX {
            continue;
        }
        match UdpSocket::bind(SocketAddr::new(address, port + 1)) {
            Ok(rtcp) => return finish(rtp, rtcp),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no free even/odd UDP port pair")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range(""), Ok(None));
        assert_eq!(parse_port_range("3000-3005"), Ok(Some((3000, 3005))));
        assert_eq!(parse_port_range(" 3000 - 3001"), Ok(Some((3000, 3001))));
        for bad in ["3000", "3000-3000", "3005-3000", "a-b", "3000-70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
    use std::net::Ipv4Addr;

    #[test]
    fn pairs_are_even_and_consecutive() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (rtp, rtcp) = bind_port_pair(lo, None).unwrap();
        let p = rtp.local_addr().unwrap().port();
        assert_eq!(p % 2, 0);
        assert_eq!(rtcp.local_addr().unwrap().port(), p + 1);
    }

    #[test]
    fn a_range_is_honoured_and_exhaustion_is_an_error() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // Find a free even pair to build a two-port range around.
        let (probe, _) = bind_port_pair(lo, None).unwrap();
        let p = probe.local_addr().unwrap().port();
        drop(probe);
        let (rtp, _rtcp) = bind_port_pair(lo, Some((p, p + 1))).unwrap();
        assert_eq!(rtp.local_addr().unwrap().port(), p);
        assert!(bind_port_pair(lo, Some((p, p + 1))).is_err());
    }
}
