//! Header parsing shared by every program. Every read goes through
//! [`ptr_at`], which the verifier can prove in bounds; nothing here panics or
//! indexes.

use cni_ebpf_common::prefilter::{FAMILY_IPV4, FAMILY_IPV6};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;
/// Q-in-Q is two tags; a third is not a real-world frame.
const MAX_VLAN_TAGS: usize = 2;

const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up on finding the L4 header.
const MAX_IPV6_EXT_HEADERS: usize = 4;

/// IP protocol numbers used in parsing.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// SCTP.
pub const IPPROTO_SCTP: u8 = 132;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// What the L4 header told us, when there was one to read.
#[derive(Clone, Copy)]
pub struct L4 {
    /// TCP/UDP/SCTP destination port, or ICMP/ICMPv6 type (host order).
    pub selector: u16,
    /// TCP/UDP/SCTP source port, or the ICMP/ICMPv6 echo identifier (echo
    /// request and reply), else 0 (host order). Conntrack keys on it.
    pub sport: u16,
    /// False for protocols without ports or types, and for non-first
    /// fragments, whose L4 header is in another packet.
    pub has_selector: bool,
}

/// A parsed IP packet. The addresses come first and the struct is 8-byte
/// aligned, so they are built and copied a word at a time: held as bytes,
/// each address byte took a register or stack slot of its own on the way
/// to the conntrack and endpoint keys, a cost every packet paid.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct IpPacket {
    /// Source address; IPv4 uses the first four bytes, the rest are zero
    /// (keys are built from it whole).
    pub src: [u8; 16],
    /// Destination address; as `src`.
    pub dst: [u8; 16],
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// L4 protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Port or type, when readable.
    pub l4: L4,
    /// Offset of the L4 header from the frame's start.
    pub l4_offset: u16,
}

/// Outcome of parsing a frame. Every frame gets one of these: there is no
/// error path a packet can fall through.
pub enum Parsed {
    /// An IPv4 or IPv6 packet.
    Ip(IpPacket),
    /// A well-formed frame carrying something other than IP (ARP, LLDP...).
    NotIp,
    /// Too short for its headers or with impossible header fields.
    Malformed,
    /// IPv6 whose extension header chain goes on past
    /// `MAX_IPV6_EXT_HEADERS`: its L4 header was not reached.
    ExtChainTooLong,
}

/// A bounds-checked pointer to a `T` at `offset` in `[start, end)`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    let len = core::mem::size_of::<T>();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a `T` at `offset`, unaligned (packet data has no alignment).
#[inline(always)]
pub fn read<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    let p = ptr_at::<T>(start, end, offset)?;
    // SAFETY: ptr_at proved [p, p + size_of::<T>()) lies inside the packet.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// The four bytes of `bytes` at `at` as a word, in packet (network) order.
#[inline(always)]
fn word_at<const N: usize>(bytes: &[u8; N], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// An address from its words, in packet order (IPv4: one word, then zeros).
#[inline(always)]
fn address(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, and every bit pattern is a valid byte array.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// An address as its four words, in packet order: the inverse of
/// [`address`]. Keys and helper arguments are built from these.
#[inline(always)]
pub fn words(addr: &[u8; 16]) -> [u32; 4] {
    // SAFETY: same size, and every bit pattern is a valid array of words.
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*addr) }
}

#[inline(always)]
fn read_be16(start: usize, end: usize, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(start, end, offset).map(u16::from_be_bytes)
}

/// Parses the frame in `[start, end)` from its Ethernet header. (Inlined:
/// a subprogram returning this enum would put its Rust layout in the BTF,
/// which the kernel refuses.)
#[inline(always)]
pub fn parse_frame(start: usize, end: usize) -> Parsed {
    let Some(mut ethertype) = read_be16(start, end, 12) else {
        return Parsed::Malformed;
    };
    let mut offset = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        // The tag's inner ethertype sits in its last two bytes.
        let Some(inner) = read_be16(start, end, offset + 2) else {
            return Parsed::Malformed;
        };
        ethertype = inner;
        offset += VLAN_HLEN;
        tags += 1;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(start, end, offset),
        ETH_P_IPV6 => parse_ipv6(start, end, offset),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(start: usize, end: usize, l3: usize) -> Parsed {
    let Some(header) = read::<[u8; 20]>(start, end, l3) else {
        return Parsed::Malformed;
    };
    let version = header[0] >> 4;
    let ihl = (header[0] & 0x0f) as usize;
    if version != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let header_len = ihl * 4;
    // Options are legal; the whole header must still be in the frame.
    if start + l3 + header_len > end {
        return Parsed::Malformed;
    }
    let fragment_offset = u16::from_be_bytes([header[6] & 0x1f, header[7]]);
    let protocol = header[9];
    let src = address([word_at(&header, 12), 0, 0, 0]);
    let dst = address([word_at(&header, 16), 0, 0, 0]);
    let l4 = if fragment_offset != 0 {
        // A later fragment: its first bytes are payload, not ports.
        Some(L4 {
            selector: 0,
            sport: 0,
            has_selector: false,
        })
    } else {
        read_l4(start, end, l3 + header_len, protocol, IPPROTO_ICMP)
    };
    match l4 {
        Some(l4) => Parsed::Ip(IpPacket {
            family: FAMILY_IPV4,
            protocol,
            src,
            dst,
            l4,
            l4_offset: (l3 + header_len) as u16,
        }),
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_ipv6(start: usize, end: usize, l3: usize) -> Parsed {
    let Some(header) = read::<[u8; IPV6_HLEN]>(start, end, l3) else {
        return Parsed::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let src = address([
        word_at(&header, 8),
        word_at(&header, 12),
        word_at(&header, 16),
        word_at(&header, 20),
    ]);
    let dst = address([
        word_at(&header, 24),
        word_at(&header, 28),
        word_at(&header, 32),
        word_at(&header, 36),
    ]);
    let mut next = header[6];
    let mut offset = l3 + IPV6_HLEN;
    let mut later_fragment = false;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = read::<[u8; 2]>(start, end, offset) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = read::<[u8; 4]>(start, end, offset) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                later_fragment = u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0;
                offset += 8;
            }
            IPPROTO_AH => {
                let Some(ext) = read::<[u8; 2]>(start, end, offset) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                offset += (ext[1] as usize + 2) * 4;
            }
            _ => break,
        }
        walked += 1;
    }
    if is_ipv6_ext_header(next) {
        // Still an extension header after the last one we walk: treating
        // its number as the protocol would let the packet slip past port
        // rules (the kernel walks on and delivers it).
        return Parsed::ExtChainTooLong;
    }
    let l4 = if later_fragment {
        Some(L4 {
            selector: 0,
            sport: 0,
            has_selector: false,
        })
    } else {
        read_l4(start, end, offset, next, IPPROTO_ICMPV6)
    };
    match l4 {
        Some(l4) => Parsed::Ip(IpPacket {
            family: FAMILY_IPV6,
            protocol: next,
            src,
            dst,
            l4,
            l4_offset: offset as u16,
        }),
        None => Parsed::Malformed,
    }
}

/// Whether `packet` is an ICMP error that quotes the packet it answers:
/// destination unreachable (fragmentation needed among them), time
/// exceeded, parameter problem; for ICMPv6 also packet too big.
#[inline(always)]
pub fn is_icmp_error(packet: &IpPacket) -> bool {
    if !packet.l4.has_selector {
        return false;
    }
    match packet.protocol {
        IPPROTO_ICMP => matches!(packet.l4.selector, 3 | 11 | 12),
        IPPROTO_ICMPV6 => matches!(packet.l4.selector, 1..=4),
        _ => false,
    }
}

/// Whether `next` names an IPv6 extension header the parser walks.
#[inline(always)]
fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT | IPPROTO_AH
    )
}

/// Reads the destination port or ICMP type. `None` when the header the
/// protocol promises is cut short.
#[inline(always)]
fn read_l4(start: usize, end: usize, offset: usize, protocol: u8, icmp: u8) -> Option<L4> {
    if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP {
        // Source and destination port are the first four bytes of all three.
        let ports = read::<[u8; 4]>(start, end, offset)?;
        return Some(L4 {
            selector: u16::from_be_bytes([ports[2], ports[3]]),
            sport: u16::from_be_bytes([ports[0], ports[1]]),
            has_selector: true,
        });
    }
    if protocol == icmp {
        // Type, code and checksum: the fixed 4 bytes of every ICMP header.
        // (A one-byte read lets LLVM emit `ptr >= end`, from which the
        // verifier derives no readable range.)
        let header = read::<[u8; 4]>(start, end, offset)?;
        let icmp_type = header[0];
        let is_echo = if protocol == IPPROTO_ICMP {
            icmp_type == ICMP_ECHO_REQUEST || icmp_type == ICMP_ECHO_REPLY
        } else {
            icmp_type == ICMPV6_ECHO_REQUEST || icmp_type == ICMPV6_ECHO_REPLY
        };
        let mut sport = 0;
        if is_echo {
            // Echo messages carry an identifier and sequence number: 8 bytes.
            let echo = read::<[u8; 8]>(start, end, offset)?;
            sport = u16::from_be_bytes([echo[4], echo[5]]);
        }
        return Some(L4 {
            selector: icmp_type as u16,
            sport,
            has_selector: true,
        });
    }
    Some(L4 {
        selector: 0,
        sport: 0,
        has_selector: false,
    })
}
