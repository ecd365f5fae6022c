//! Stable verdict reasons. A code is numbered once and never reused: the
//! counters map is indexed by it, the CLI prints it, dashboards key on it.
//! Add new codes at the end of a range; retire a code by leaving a gap.

/// A verdict reason code (index into [`crate::maps::REASON_COUNTERS`]).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason(pub u32);

impl Reason {
    // 1..=31: the XDP prefilter.
    /// IPv4/IPv6 packet that matched no prefilter rule.
    pub const PREFILTER_PASS_NO_MATCH: Reason = Reason(1);
    /// Not IPv4/IPv6 (ARP, LLDP, ...): the prefilter has no rules for it.
    pub const PREFILTER_PASS_NOT_IP: Reason = Reason(2);
    /// A CIDR rule with action `allow` was the most specific match.
    pub const PREFILTER_PASS_CIDR_ALLOW: Reason = Reason(3);
    /// A protocol rule with action `allow` matched.
    pub const PREFILTER_PASS_PROTO_ALLOW: Reason = Reason(4);
    /// A protocol rule (e.g. ICMP echo) dropped the packet.
    pub const PREFILTER_DROP_PROTO: Reason = Reason(10);
    /// The source address fell in a denied CIDR.
    pub const PREFILTER_DROP_CIDR: Reason = Reason(11);
    /// Truncated or malformed headers (short Ethernet, IHL < 5, IP header
    /// past the end of the frame). The stack would discard them anyway.
    pub const PREFILTER_DROP_MALFORMED: Reason = Reason(12);
    /// An IPv6 extension header chain longer than the datapath walks
    /// (`MAX_IPV6_EXT_HEADERS`). Dropped: passing it would let a packet hide
    /// its L4 header from port and ICMP-type rules (Cilium drops these too,
    /// DROP_INVALID_EXTHDR).
    pub const PREFILTER_DROP_IPV6_EXT_CHAIN: Reason = Reason(13);

    // 32..=63: the tc programs on pod veths.
    /// `from_pod` saw a packet and passed it.
    pub const FROM_POD_PASS: Reason = Reason(32);
    /// `to_pod` saw a packet and passed it.
    pub const TO_POD_PASS: Reason = Reason(33);
    /// `from_pod` saw a non-IP frame (ARP, ...) and passed it.
    pub const FROM_POD_PASS_NOT_IP: Reason = Reason(34);
    /// `to_pod` saw a non-IP frame and passed it.
    pub const TO_POD_PASS_NOT_IP: Reason = Reason(35);
    /// `from_pod` saw malformed headers, or an IPv6 extension chain longer
    /// than the parser walks; passed for now (no policy yet), the stack
    /// discards what it cannot parse.
    pub const FROM_POD_MALFORMED: Reason = Reason(36);
    /// `to_pod` saw malformed headers; passed for now.
    pub const TO_POD_MALFORMED: Reason = Reason(37);

    /// `from_pod` saw an IP packet whose source is no endpoint's address
    /// (spoofed, or the endpoint entry is missing); passed for now.
    pub const FROM_POD_UNKNOWN_SOURCE: Reason = Reason(38);

    /// Every code in use, with its stable name, for the CLI and metrics.
    pub const ALL: [(Reason, &'static str); 15] = [
        (Self::PREFILTER_PASS_NO_MATCH, "prefilter-pass-no-match"),
        (Self::PREFILTER_PASS_NOT_IP, "prefilter-pass-not-ip"),
        (Self::PREFILTER_PASS_CIDR_ALLOW, "prefilter-pass-cidr-allow"),
        (
            Self::PREFILTER_PASS_PROTO_ALLOW,
            "prefilter-pass-proto-allow",
        ),
        (Self::PREFILTER_DROP_PROTO, "prefilter-drop-proto"),
        (Self::PREFILTER_DROP_CIDR, "prefilter-drop-cidr"),
        (Self::PREFILTER_DROP_MALFORMED, "prefilter-drop-malformed"),
        (
            Self::PREFILTER_DROP_IPV6_EXT_CHAIN,
            "prefilter-drop-ipv6-ext-chain",
        ),
        (Self::FROM_POD_PASS, "from-pod-pass"),
        (Self::TO_POD_PASS, "to-pod-pass"),
        (Self::FROM_POD_PASS_NOT_IP, "from-pod-pass-not-ip"),
        (Self::TO_POD_PASS_NOT_IP, "to-pod-pass-not-ip"),
        (Self::FROM_POD_MALFORMED, "from-pod-malformed"),
        (Self::TO_POD_MALFORMED, "to-pod-malformed"),
        (Self::FROM_POD_UNKNOWN_SOURCE, "from-pod-unknown-source"),
    ];

    /// The stable name of a code, `None` for codes not (or no longer) in use.
    pub fn name(self) -> Option<&'static str> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].0 .0 == self.0 {
                return Some(Self::ALL[i].1);
            }
            i += 1;
        }
        None
    }

    /// Whether this verdict drops the packet.
    pub fn is_drop(self) -> bool {
        (10..=31).contains(&self.0)
    }
}
