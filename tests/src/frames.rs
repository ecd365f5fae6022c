//! Crafting frames for BPF_PROG_TEST_RUN: Ethernet with VLAN tags, IPv4 with
//! options and fragments, IPv6 with extension headers, TCP, UDP, SCTP, ICMP,
//! ICMPv6 and ARP.
//!
//! Every length field is right unless a test asks for it to be wrong (an
//! IHL override, a truncated `Vec`). L4 checksums are left zero: neither XDP
//! nor tc verifies them. The IPv4 header checksum is computed, so a frame
//! that leaves a test namespace is one the stack would accept.
//!
//! Builders return plain `Vec<u8>`s; a malformed frame is a well-formed one
//! cut short (`truncate`) or with a field overridden.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 ethertype.
pub const ETH_P_IP: u16 = 0x0800;
/// ARP ethertype.
pub const ETH_P_ARP: u16 = 0x0806;
/// IPv6 ethertype.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// 802.1Q VLAN tag (customer tag).
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad VLAN tag (service tag, the outer tag of Q-in-Q).
pub const ETH_P_8021AD: u16 = 0x88A8;
/// LLDP ethertype.
pub const ETH_P_LLDP: u16 = 0x88CC;

/// ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// "No next header" (IPv6).
pub const IPPROTO_NONE: u8 = 59;
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;
/// IPv6 hop-by-hop options.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// Authentication header.
pub const IPPROTO_AH: u8 = 51;
/// IPv6 destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// ICMP echo reply.
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP echo request.
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMPv6 echo request.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 echo reply.
pub const ICMPV6_ECHO_REPLY: u8 = 129;
/// ICMPv6 neighbour solicitation.
pub const ICMPV6_NEIGHBOUR_SOLICITATION: u8 = 135;

/// Destination MAC of crafted frames (locally administered).
pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Source MAC of crafted frames (locally administered).
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// An Ethernet frame: [`DST_MAC`], [`SRC_MAC`], `ethertype`, `payload`.
pub fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    vlan_ethernet(&[], ethertype, payload)
}

/// An Ethernet frame with VLAN tags, outermost first: each tag is its TPID
/// ([`ETH_P_8021Q`] or [`ETH_P_8021AD`]) and VLAN id. `ethertype` is the
/// innermost one, after the last tag.
pub fn vlan_ethernet(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HLEN + 4 * tags.len() + payload.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    for (tpid, vid) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        // PCP 0, DEI 0, 12-bit VLAN id.
        frame.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 header description; [`Ipv4::packet`] lays it out before a payload.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol field.
    pub protocol: u8,
    /// Options, padded with zeros (end of options) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// Writes this IHL instead of the true header length in 32-bit words
    /// (only the low four bits fit). For malformed headers.
    pub ihl: Option<u8>,
    /// Fragment offset in 8-byte units (13 bits).
    pub fragment_offset: u16,
    /// The more-fragments flag.
    pub more_fragments: bool,
    /// Time to live.
    pub ttl: u8,
}

impl Ipv4 {
    /// A plain 20-byte header from `src` to `dst` carrying `protocol`.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Self {
        Self {
            src,
            dst,
            protocol,
            options: Vec::new(),
            ihl: None,
            fragment_offset: 0,
            more_fragments: false,
            ttl: 64,
        }
    }

    /// With `options` (padded to a multiple of 4 bytes).
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }

    /// With an IHL field of `ihl` whatever the header's real length.
    pub fn ihl(mut self, ihl: u8) -> Self {
        self.ihl = Some(ihl);
        self
    }

    /// A fragment at `offset` (8-byte units), with more-fragments `more`.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        self.fragment_offset = offset;
        self.more_fragments = more;
        self
    }

    /// The header and `payload`. Total length counts the bytes produced.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut options = self.options.clone();
        options.resize(options.len().div_ceil(4) * 4, 0);
        let header_len = 20 + options.len();
        let ihl = self.ihl.unwrap_or((header_len / 4) as u8) & 0x0f;
        let total_len = (header_len + payload.len()) as u16;
        let flags_fragment =
            (u16::from(self.more_fragments) << 13) | (self.fragment_offset & 0x1fff);
        let mut packet = Vec::with_capacity(header_len + payload.len());
        packet.push(0x40 | ihl);
        packet.push(0); // DSCP/ECN
        packet.extend_from_slice(&total_len.to_be_bytes());
        packet.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
        packet.extend_from_slice(&flags_fragment.to_be_bytes());
        packet.push(self.ttl);
        packet.push(self.protocol);
        packet.extend_from_slice(&[0, 0]); // checksum, filled below
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(&options);
        let checksum = internet_checksum(&packet[..header_len]);
        packet[10..12].copy_from_slice(&checksum.to_be_bytes());
        packet.extend_from_slice(payload);
        packet
    }

    /// An Ethernet frame carrying this header and `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        ethernet(ETH_P_IP, &self.packet(payload))
    }
}

/// The one's-complement sum of 16-bit words (RFC 1071).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One IPv6 extension header. Its next-header field is filled in by
/// [`Ipv6::packet`] from what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-hop options: this many bytes of PadN options (the header is
    /// padded to a multiple of 8 bytes).
    HopByHop(usize),
    /// Routing header of type 0 with no segments left, this many 8-byte
    /// units beyond the first 8 bytes. With segments left 0 a receiver
    /// skips it whatever its type (RFC 8200 4.4); Linux does for type 0,
    /// while it drops type 4 (SRv6) unless seg6 is enabled.
    Routing(u8),
    /// Destination options, as [`ExtHeader::HopByHop`].
    DestOpts(usize),
    /// Fragment header: offset in 8-byte units, more-fragments flag.
    Fragment {
        /// Offset in 8-byte units (13 bits).
        offset: u16,
        /// The M flag.
        more: bool,
    },
    /// Authentication header with an ICV of this many 32-bit words.
    Ah(u8),
}

impl ExtHeader {
    /// The protocol number that names this header.
    pub fn protocol(&self) -> u8 {
        match self {
            ExtHeader::HopByHop(_) => IPPROTO_HOPOPTS,
            ExtHeader::Routing(_) => IPPROTO_ROUTING,
            ExtHeader::DestOpts(_) => IPPROTO_DSTOPTS,
            ExtHeader::Fragment { .. } => IPPROTO_FRAGMENT,
            ExtHeader::Ah(_) => IPPROTO_AH,
        }
    }

    /// The header's bytes, with `next` as its next-header field.
    pub fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            ExtHeader::HopByHop(options) | ExtHeader::DestOpts(options) => {
                // Two bytes of next header and length, then options filling
                // the rest of a multiple of 8 bytes.
                let len = (2 + options).div_ceil(8).max(1) * 8;
                let mut bytes = vec![next, (len / 8 - 1) as u8];
                pad_options(&mut bytes, len - 2);
                bytes
            }
            ExtHeader::Routing(units) => {
                let len = 8 * (usize::from(*units) + 1);
                let mut bytes = vec![next, *units, 0, 0];
                bytes.resize(len, 0);
                bytes
            }
            ExtHeader::Fragment { offset, more } => {
                let field = ((offset & 0x1fff) << 3) | u16::from(*more);
                let mut bytes = vec![next, 0];
                bytes.extend_from_slice(&field.to_be_bytes());
                bytes.extend_from_slice(&0xabcd_0123u32.to_be_bytes()); // identification
                bytes
            }
            ExtHeader::Ah(icv_words) => {
                // Payload length is the header's length in 32-bit words
                // minus 2 (RFC 4302): 3 fixed words (next, len, reserved;
                // SPI; sequence) plus the ICV.
                let words = 3 + usize::from(*icv_words);
                let mut bytes = vec![next, (words - 2) as u8, 0, 0];
                bytes.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
                bytes.extend_from_slice(&1u32.to_be_bytes()); // sequence
                bytes.resize(words * 4, 0);
                bytes
            }
        }
    }
}

/// Appends `len` bytes of options: Pad1 for one byte, PadN otherwise.
fn pad_options(bytes: &mut Vec<u8>, len: usize) {
    match len {
        0 => {}
        1 => bytes.push(0),
        _ => {
            bytes.push(1);
            bytes.push((len - 2) as u8);
            bytes.resize(bytes.len() + len - 2, 0);
        }
    }
}

/// An IPv6 header description; [`Ipv6::packet`] lays it out, with its
/// extension headers, before a payload.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The protocol after the last extension header.
    pub protocol: u8,
    /// Extension headers in order.
    pub ext: Vec<ExtHeader>,
    /// Hop limit.
    pub hop_limit: u8,
}

impl Ipv6 {
    /// A header from `src` to `dst` carrying `protocol`, no extensions.
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8) -> Self {
        Self {
            src,
            dst,
            protocol,
            ext: Vec::new(),
            hop_limit: 64,
        }
    }

    /// With these extension headers, in order.
    pub fn ext(mut self, ext: &[ExtHeader]) -> Self {
        self.ext = ext.to_vec();
        self
    }

    /// The fixed header, the extension headers (chained by their
    /// next-header fields) and `payload`. Payload length counts everything
    /// after the fixed header.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            let next = self
                .ext
                .get(i + 1)
                .map_or(self.protocol, ExtHeader::protocol);
            chain.extend_from_slice(&ext.bytes(next));
        }
        let first = self.ext.first().map_or(self.protocol, ExtHeader::protocol);
        let payload_len = (chain.len() + payload.len()) as u16;
        let mut packet = Vec::with_capacity(40 + chain.len() + payload.len());
        packet.extend_from_slice(&0x6000_0000u32.to_be_bytes()); // version, class, flow
        packet.extend_from_slice(&payload_len.to_be_bytes());
        packet.push(first);
        packet.push(self.hop_limit);
        packet.extend_from_slice(&self.src.octets());
        packet.extend_from_slice(&self.dst.octets());
        packet.extend_from_slice(&chain);
        packet.extend_from_slice(payload);
        packet
    }

    /// An Ethernet frame carrying this header and `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        ethernet(ETH_P_IPV6, &self.packet(payload))
    }
}

/// A 20-byte TCP header (SYN) from `sport` to `dport`.
pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut header = Vec::with_capacity(20);
    header.extend_from_slice(&sport.to_be_bytes());
    header.extend_from_slice(&dport.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes()); // sequence
    header.extend_from_slice(&0u32.to_be_bytes()); // acknowledgement
    header.push(5 << 4); // data offset
    header.push(0x02); // SYN
    header.extend_from_slice(&64240u16.to_be_bytes()); // window
    header.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    header
}

/// A UDP datagram from `sport` to `dport` with `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&sport.to_be_bytes());
    datagram.extend_from_slice(&dport.to_be_bytes());
    datagram.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend_from_slice(&[0, 0]); // checksum
    datagram.extend_from_slice(payload);
    datagram
}

/// A 12-byte SCTP common header from `sport` to `dport` (no chunks).
pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut header = Vec::with_capacity(12);
    header.extend_from_slice(&sport.to_be_bytes());
    header.extend_from_slice(&dport.to_be_bytes());
    header.extend_from_slice(&0x5eed_0001u32.to_be_bytes()); // verification tag
    header.extend_from_slice(&[0, 0, 0, 0]); // checksum
    header
}

/// An ICMP message: type, code, zero checksum, then `rest` (identifier and
/// sequence for echo, and any data).
pub fn icmp(icmp_type: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, code, 0, 0];
    message.extend_from_slice(rest);
    message
}

/// An ICMP echo of `icmp_type` ([`ICMP_ECHO_REQUEST`], [`ICMP_ECHO_REPLY`])
/// with identifier, sequence 1 and 8 bytes of data.
pub fn icmp_echo(icmp_type: u8) -> Vec<u8> {
    icmp(
        icmp_type,
        0,
        &[0x12, 0x34, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8],
    )
}

/// An ICMPv6 message (same layout as ICMP).
pub fn icmpv6(icmp_type: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    icmp(icmp_type, code, rest)
}

/// An ICMPv6 echo of `icmp_type` ([`ICMPV6_ECHO_REQUEST`], ...).
pub fn icmpv6_echo(icmp_type: u8) -> Vec<u8> {
    icmp_echo(icmp_type)
}

/// An ICMPv6 neighbour solicitation for `target`.
pub fn neighbour_solicitation(target: Ipv6Addr) -> Vec<u8> {
    let mut rest = vec![0, 0, 0, 0]; // reserved
    rest.extend_from_slice(&target.octets());
    icmpv6(ICMPV6_NEIGHBOUR_SOLICITATION, 0, &rest)
}

/// A broadcast ARP request (Ethernet/IPv4) asking who has `target`.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    arp.extend_from_slice(&ETH_P_IP.to_be_bytes());
    arp.push(6);
    arp.push(4);
    arp.extend_from_slice(&1u16.to_be_bytes()); // request
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    let mut frame = Vec::with_capacity(ETH_HLEN + arp.len());
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    frame.extend_from_slice(&arp);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    #[test]
    fn ipv4_tcp_frame_has_true_lengths_and_checksum() {
        let frame = Ipv4::new(A4, B4, IPPROTO_TCP).frame(&tcp(40000, 22));
        assert_eq!(frame.len(), 14 + 20 + 20);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(frame[14], 0x45);
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 40);
        assert_eq!(frame[23], IPPROTO_TCP);
        // A header with a right checksum sums to zero.
        assert_eq!(internet_checksum(&frame[14..34]), 0);
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 22);
    }

    #[test]
    fn ipv4_options_set_ihl_and_overrides_win() {
        let packet = Ipv4::new(A4, B4, IPPROTO_UDP)
            .options(&[1, 1, 1])
            .packet(&udp(1, 53, b"x"));
        assert_eq!(packet[0], 0x46);
        assert_eq!(packet.len(), 24 + 9);
        assert_eq!(u16::from_be_bytes([packet[24 + 2], packet[24 + 3]]), 53);
        let packet = Ipv4::new(A4, B4, IPPROTO_UDP).ihl(4).packet(&[]);
        assert_eq!(packet[0], 0x44);
        assert_eq!(packet.len(), 20);
    }

    #[test]
    fn ipv4_fragment_fields() {
        let packet = Ipv4::new(A4, B4, IPPROTO_TCP)
            .fragment(185, true)
            .packet(&[0; 8]);
        assert_eq!(u16::from_be_bytes([packet[6], packet[7]]), 0x2000 | 185);
    }

    #[test]
    fn vlan_tags_sit_between_macs_and_ethertype() {
        let frame = vlan_ethernet(
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)],
            ETH_P_IP,
            &[0x45],
        );
        assert_eq!(frame.len(), 14 + 8 + 1);
        assert_eq!(&frame[12..14], &[0x88, 0xa8]);
        assert_eq!(u16::from_be_bytes([frame[14], frame[15]]), 100);
        assert_eq!(&frame[16..18], &[0x81, 0x00]);
        assert_eq!(u16::from_be_bytes([frame[18], frame[19]]), 200);
        assert_eq!(&frame[20..22], &[0x08, 0x00]);
    }

    #[test]
    fn ipv6_extension_headers_chain_and_count_in_payload_length() {
        let ext = [
            ExtHeader::HopByHop(4),
            ExtHeader::DestOpts(12),
            ExtHeader::Routing(1),
            ExtHeader::Fragment {
                offset: 0,
                more: true,
            },
            ExtHeader::Ah(3),
        ];
        let payload = icmpv6_echo(ICMPV6_ECHO_REQUEST);
        let packet = Ipv6::new(A6, B6, IPPROTO_ICMPV6).ext(&ext).packet(&payload);
        let sizes = [8, 16, 16, 8, 24];
        let chain: usize = sizes.iter().sum();
        assert_eq!(packet.len(), 40 + chain + payload.len());
        assert_eq!(
            usize::from(u16::from_be_bytes([packet[4], packet[5]])),
            chain + payload.len()
        );
        assert_eq!(packet[6], IPPROTO_HOPOPTS);
        // Walk the chain the way a parser does.
        let mut next = packet[6];
        let mut offset = 40;
        for (ext, size) in ext.iter().zip(sizes) {
            assert_eq!(next, ext.protocol());
            let len = match next {
                IPPROTO_FRAGMENT => 8,
                IPPROTO_AH => (usize::from(packet[offset + 1]) + 2) * 4,
                _ => (usize::from(packet[offset + 1]) + 1) * 8,
            };
            assert_eq!(len, size);
            next = packet[offset];
            offset += len;
        }
        assert_eq!(next, IPPROTO_ICMPV6);
        assert_eq!(packet[offset], ICMPV6_ECHO_REQUEST);
    }

    #[test]
    fn arp_request_is_42_bytes_broadcast() {
        let frame = arp_request(A4, B4);
        assert_eq!(frame.len(), 42);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
    }
}
